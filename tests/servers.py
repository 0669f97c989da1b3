"""Real loopback servers for tests: uvicorn in a thread or in a subprocess."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

TESTS_DIR = Path(__file__).resolve().parent

# The middleware's own measure of what it added must stay within budget + 5 ms (ASGI) or
# + 10 ms (sync adapters, which wait on the background loop), plus what the machine's
# scheduler delayed everything by meanwhile (measured, see `SchedulerDelay`).
OWN_SLACK_MS = {"asgi": 5, "django-async": 5, "wsgi": 10, "flask": 10, "django-sync": 10}
ADAPTERS = list(OWN_SLACK_MS)
GUARANTEE_BUDGET_MS = 300

# serve(provider_url=None, **config_overrides) -> context manager yielding the base URL
Serve = Callable[..., contextlib.AbstractContextManager[str]]


class SchedulerDelay:
    """While the block runs, a thread of this process sleeps 1 ms at a time and records how
    late it wakes up: the stall a busy machine (or the GIL) inflicted on every thread here,
    servers included. ``ms`` is the worst lateness seen; a timing assertion adds it to its
    nominal slack instead of hoping the machine was quiet."""

    def __init__(self) -> None:
        self.ms = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            time.sleep(0.001)
            self.ms = max(self.ms, (time.monotonic() - started - 0.001) * 1000)

    def __enter__(self) -> SchedulerDelay:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def own_slack_ms(adapter: str, delay: SchedulerDelay) -> float:
    return OWN_SLACK_MS.get(adapter, 10) + delay.ms


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def serve_asgi_thread(app: Any, *, lifespan: str = "on") -> Iterator[str]:
    """uvicorn in a background thread of this process on a real loopback socket."""
    import uvicorn

    sock = _bound_socket()
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan=lifespan, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def serve_subprocess(argv: list[str], env: dict[str, str], *, fd_flag: str) -> Iterator[str]:
    """Start a server in a subprocess on an already-bound loopback socket passed as an fd."""
    sock = _bound_socket()
    sock.listen(128)
    sock.set_inheritable(True)
    full_env = {**os.environ, **env}
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS_DIR), *filter(None, [full_env.get("PYTHONPATH")])]
    )
    proc = subprocess.Popen(
        [*argv, fd_flag.format(fd=sock.fileno())],
        cwd=TESTS_DIR,
        env=full_env,
        pass_fds=[sock.fileno()],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        _wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        sock.close()


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        try:
            httpx.get(url + "/plain", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("server did not become ready in 30 s")


def uvicorn_subprocess(factory: str, env: dict[str, str]) -> contextlib.AbstractContextManager[str]:
    argv = [sys.executable, "-m", "uvicorn", factory, "--factory", "--log-level", "warning",
            "--no-access-log"]  # fmt: skip
    return serve_subprocess(argv, env, fd_flag="--fd={fd}")


@contextlib.contextmanager
def serve_wsgi_thread(app: Any) -> Iterator[str]:
    """werkzeug's threaded server (chunked request bodies supported) on a loopback port."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)  # fmt: skip
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def gunicorn_subprocess(
    app: str, env: dict[str, str], *, workers: int = 2, preload: bool = False
) -> contextlib.AbstractContextManager[str]:
    argv = [sys.executable, "-m", "gunicorn", app, "--workers", str(workers),
            "--worker-class", "sync", "--log-level", "warning",
            "--graceful-timeout", "2"]  # fmt: skip
    if preload:
        argv.append("--preload")
    if int(importlib.metadata.version("gunicorn").split(".")[0]) >= 27:
        argv.append("--no-control-socket")  # one shared ~/.gunicorn socket otherwise
    return serve_subprocess(argv, env, fd_flag="--bind=fd://{fd}")
