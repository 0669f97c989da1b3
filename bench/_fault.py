"""The scripted fault server (``tests/fault_server.py``) in a process of its own.

In the load client's process its thread would compete with the client for the GIL and inflate
the latencies the client measures. Driven over stdin, one command per line, one answer line each:

* ``default NAME``: clear the captured requests, then answer every request with the behaviour
  ``NAME`` (a no-argument factory of ``fault_server``, e.g. ``hang_before_headers``); ``ok``;
* ``count``: how many requests were received since the last ``default``.

It prints its URL first and stops at end of input.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from _common import REPO, fault_server_module


def main() -> None:
    fs = fault_server_module()
    with fs.FaultServer() as server:
        print(server.url, flush=True)
        for line in sys.stdin:
            command, *args = line.split()
            if command == "default":
                server.reset()
                server.default = getattr(fs, args[0])()
                print("ok", flush=True)
            elif command == "count":
                print(len(server.requests), flush=True)
            else:
                print(f"error unknown command {command!r}", flush=True)


@dataclass
class FaultProcess:
    """The parent's handle on a running fault server subprocess."""

    url: str
    proc: subprocess.Popen[str]

    def _ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer or answer.startswith("error"):
            raise RuntimeError(f"fault server: {line!r} -> {answer!r}")
        return answer

    def set_default(self, behaviour: str) -> None:
        self._ask(f"default {behaviour}")

    def count(self) -> int:
        return int(self._ask("count"))


@contextlib.contextmanager
def fault_process() -> Iterator[FaultProcess]:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "_fault.py")],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"fault server did not start: {url!r}")
        yield FaultProcess(url, proc)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # end of input: the server stops
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    main()
