"""The scripted fault server (``tests/fault_server.py``) in a process of its own.

In the load client's process its thread would compete with the client for the GIL and inflate
the latencies the client measures. Driven over stdin, one command per line, one answer line each:

* ``default NAME``: clear the captured requests, then answer every request with the behaviour
  ``NAME`` (a no-argument factory of ``fault_server``, e.g. ``hang_before_headers``); ``ok``;
* ``count``: how many requests were received since the last ``default``;
* ``connections``: how many connections the server has accepted so far.

Besides the factories of ``fault_server``, ``NAME`` may be one of ``NAMED``: ``fast`` (a valid
intent at once), ``status_500``, or ``mixed`` (cycling fast x3 / hang before headers / 500 /
hang after headers: the soak's misbehaving provider).

It prints its URL first and stops at end of input.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from _common import REPO, fault_server_module

GOOD = {"category": "shoes", "color": "red", "max_price": 100}
MIXED_CYCLE = ["fast", "fast", "fast", "hang_before_headers", "status_500", "hang_after_headers"]


def behaviour(fs: ModuleType, name: str) -> Any:
    if name == "fast":
        return fs.reply(GOOD)
    if name == "status_500":
        return fs.status(500)
    return getattr(fs, name)()


def main() -> None:
    fs = fault_server_module()
    with fs.FaultServer() as server:
        print(server.url, flush=True)
        for line in sys.stdin:
            command, *args = line.split()
            if command == "default":
                server.reset()
                if args[0] == "mixed":
                    # A script long enough for any soak; its end falls back to fast answers.
                    cycle = [behaviour(fs, name) for name in MIXED_CYCLE]
                    server.script(*(cycle * 200_000))
                    server.default = behaviour(fs, "fast")
                else:
                    server.default = behaviour(fs, args[0])
                print("ok", flush=True)
            elif command == "connections":
                print(server.connections, flush=True)
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

    def connections(self) -> int:
        return int(self._ask("connections"))


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
