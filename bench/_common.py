"""Shared benchmark helpers: quiet logging, loopback servers, a raw HTTP/1.1 load client,
robust statistics and markdown tables.

Nothing here imports ``tests/`` at module level; :func:`fault_server_module` adds ``tests/`` to
``sys.path`` explicitly when a benchmark wants the scripted fake LLM server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "bench"
TESTS_DIR = REPO / "tests"
HOST = "127.0.0.1"

# -- logging ----------------------------------------------------------------------------------

#: What the benchmarks print about logging (the middleware logs one event per matched request).
LOGGING_NOTE = (
    "structlog: info/warning events dropped (filtering bound logger at ERROR, no renderer); "
    "errors counted, not printed"
)

DROPPED_ERRORS: Counter[str] = Counter()


def _count_and_drop(_logger: Any, _method: str, event_dict: Any) -> Any:
    DROPPED_ERRORS[str(event_dict.get("event"))] += 1
    raise structlog.DropEvent


#: ``LLM_BENCH_LOGGING=default`` (``--logging default``; inherited by server subprocesses):
#: structlog's own defaults (console renderer, every processor) writing to /dev/null.
DEFAULT_LOGGING = os.environ.get("LLM_BENCH_LOGGING") == "default"
if DEFAULT_LOGGING:
    LOGGING_NOTE = (
        "structlog: its default configuration (console renderer), written to /dev/null "
        "(a terminal costs more); llm_middleware defaults (log_cached_sample)"
    )


def quiet_structlog() -> None:
    """Drop the per-request events so the benchmark does not measure the terminal.

    The middleware still builds each event's keyword arguments (that is its own cost); only the
    rendering and writing are skipped. Error events (internal errors) are counted in
    ``DROPPED_ERRORS`` so a benchmark can report them. With ``LLM_BENCH_LOGGING=default``:
    structlog's defaults, rendered, to /dev/null."""
    if DEFAULT_LOGGING:
        structlog.reset_defaults()
        devnull = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(devnull))
        return
    structlog.configure(
        processors=[_count_and_drop],
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=True,
    )


# -- environment ------------------------------------------------------------------------------


def compiler_processes() -> int:
    """How many C/C++ compiler processes run right now (a background build skews numbers)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm in ("cc1", "cc1plus", "cc", "gcc", "g++", "c++", "clang", "ld", "ninja", "make"):
            count += 1
    return count


def environment_line() -> str:
    load = os.getloadavg()
    return (
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load avg {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, "
        f"compiler processes running: {compiler_processes()}"
    )


def source_line() -> str:
    """Which code is measured: the commit, and whether ``src/`` differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True, text=True
        ).stdout.split("\n")
    except OSError:
        return "source: unknown (no git)"
    changed = [line[3:] for line in dirty if line.strip()]
    extra = f" + uncommitted changes in {', '.join(changed)}" if changed else " (src/ clean)"
    return f"source: {head or 'unknown'}{extra}"


def fault_server_module() -> ModuleType:
    """``tests/fault_server.py`` (the scripted fake LLM server), imported by explicit path."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    return importlib.import_module("fault_server")


# -- statistics -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- markdown table ---------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a results table; ``passed`` is None for informational rows."""

    cells: list[str]
    passed: bool | None = None


def verdict(passed: bool | None) -> str:
    return "—" if passed is None else ("PASS" if passed else "FAIL")


def print_table(headers: Sequence[str], rows: Sequence[Row]) -> None:
    lines = [[*r.cells, verdict(r.passed)] for r in rows]
    all_rows = [list(headers), *lines]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(headers))]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(fmt(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print(fmt(line))


# -- loopback servers -------------------------------------------------------------------------


def _cpu_plan() -> tuple[int, int] | None:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


#: ``(server CPU, client CPU)`` once :func:`enable_pinning` was called, else None. Pinned, the
#: scheduler never puts server and client on the same core; but on a machine shared with other
#: busy processes it cannot move the server away from them either, so it is opt-in.
PINNING: tuple[int, int] | None = None


def enable_pinning() -> None:
    global PINNING
    PINNING = _cpu_plan()


@contextlib.contextmanager
def pin_client() -> Iterator[None]:
    """Pin the calling thread (the load client's event loop) to the client CPU meanwhile."""
    if PINNING is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {PINNING[1]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpu_line() -> str:
    if PINNING is None:
        return "CPU pinning: off (--pin-cpus to pin servers and load client to separate CPUs)"
    return f"CPU pinning: servers on CPU {PINNING[0]}, load client on CPU {PINNING[1]}"


class CpuMeter:
    """Machine-wide busy CPU time vs this process and its (waited-for) children: how much the
    other processes on a shared machine took while the benchmark ran."""

    def __init__(self) -> None:
        self._machine = self._busy_machine()
        self._ours = self._busy_ours()
        self._wall = time.monotonic()

    @staticmethod
    def _busy_machine() -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _busy_ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def line(self) -> str:
        wall = time.monotonic() - self._wall
        machine = self._busy_machine() - self._machine
        ours = self._busy_ours() - self._ours
        cpus = os.cpu_count() or 1
        others = max(0.0, machine - ours)
        return (
            f"CPU during the run: machine {machine / wall / cpus:.0%} busy of {cpus} CPUs; "
            f"this benchmark {ours / wall:.2f} CPUs, other processes {others / wall:.2f} CPUs "
            "(other load makes the numbers noisier)"
        )


def bound_socket(backlog: int = 1024) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(backlog)
    return sock


@dataclass(frozen=True)
class Server:
    port: int
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the server process and its live descendants
        (gunicorn's workers; Linux ``/proc``)."""
        return sum(_process_cpu(pid) for pid in _process_tree(self.pid))


def _process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # exited meanwhile
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _process_tree(root: int) -> list[int]:
    """``root`` and its live descendants (via ``/proc/PID/task/TID/children``)."""
    pids, queue = [], [root]
    while queue:
        pid = queue.pop()
        pids.append(pid)
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError):
                queue += [int(c) for c in (task / "children").read_text().split()]
    return pids


def _fd_flag(fd: int) -> list[str]:
    return ["--fd", str(fd)]


@contextlib.contextmanager
def server_subprocess(
    argv: Sequence[str],
    env: dict[str, str],
    *,
    ready_path: str,
    fd_args: Callable[[int], list[str]] = _fd_flag,
) -> Iterator[Server]:
    """Run ``argv + fd_args(N)`` on an already-listening loopback socket (fd N); yield it.

    The server (and whatever it forks) is pinned to the server CPU if :data:`PINNING` is set.
    Its output goes to a temporary file (shown if it dies), never to an unread pipe."""
    sock = bound_socket()
    sock.set_inheritable(True)
    port: int = sock.getsockname()[1]
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    pinning = PINNING

    def pin() -> None:  # in the child, before exec: its forks inherit it
        if pinning is not None:
            os.sched_setaffinity(0, {pinning[0]})

    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [*argv, *fd_args(sock.fileno())],
            cwd=REPO,
            env=full_env,
            pass_fds=[sock.fileno()],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=pin if pinning is not None else None,
        )
        try:
            _wait_ready(port, ready_path, proc, log)
            yield Server(port, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            sock.close()


def _wait_ready(port: int, path: str, proc: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            out = log.read().decode(errors="replace")
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        try:
            status, _, _ = get(port, path)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not become ready in 30 s")


def uvicorn_server(factory: str, env: dict[str, str]) -> contextlib.AbstractContextManager[Server]:
    """uvicorn (single worker, h11 unless httptools is installed) serving ``_apps.<factory>()``."""
    argv = [sys.executable, str(BENCH_DIR / "_apps.py"), "uvicorn", factory]
    return server_subprocess(argv, env, ready_path="/plain")


GUNICORN_MAJOR = int(importlib.metadata.version("gunicorn").split(".")[0])


def gunicorn_server(
    factory: str,
    env: dict[str, str],
    *,
    worker_class: str = "sync",
    workers: int = 1,
    threads: int = 1,
) -> contextlib.AbstractContextManager[Server]:
    """gunicorn serving ``_apps.<factory>()`` (loaded in the worker, no ``--preload``)."""
    argv = [
        sys.executable, "-m", "gunicorn", f"_apps:{factory}()",
        "--worker-class", worker_class, "--workers", str(workers), "--threads", str(threads),
        "--log-level", "warning", "--graceful-timeout", "2", "--keep-alive", "5",
    ]  # fmt: skip
    if Path("/dev/shm").is_dir():  # the worker heartbeat file: in memory, never on a disk
        argv += ["--worker-tmp-dir", "/dev/shm"]
    if GUNICORN_MAJOR >= 27:
        argv.append("--no-control-socket")  # else all share one socket under ~/.gunicorn
    path = os.pathsep.join([str(BENCH_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])
    return server_subprocess(
        argv,
        {**env, "PYTHONPATH": path},
        ready_path="/plain",
        fd_args=lambda fd: ["--bind", f"fd://{fd}"],
    )


# -- raw HTTP/1.1 keep-alive load client -----------------------------------------------------


class HttpError(Exception):
    pass


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    latency_s: float
    index: int


class Connection:
    """One keep-alive HTTP/1.1 connection; cheaper per request than any full client."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, target: str) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(f"GET {target} HTTP/1.1\r\nhost: bench\r\n\r\n".encode("latin-1"))
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length")
        if length is None:
            raise HttpError("response without content-length")
        body = await self.reader.readexactly(int(length))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, body

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def fetch(port: int, target: str) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (warm-ups, checks), capped at 5 s."""
    conn = Connection(port)
    try:
        async with asyncio.timeout(5):
            return await conn.request(target)
    finally:
        await conn.close()


def get(port: int, target: str) -> tuple[int, dict[str, str], bytes]:
    """:func:`fetch` from synchronous code (outside any running event loop)."""
    return asyncio.run(fetch(port, target))


@dataclass
class LoadResult:
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    responses: list[Response] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def closed_loop(
    port: int,
    target: Callable[[int], str],
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    keep: bool = False,
    stagger_s: float = 0.0,
    request_timeout_s: float = 5.0,
) -> LoadResult:
    """``concurrency`` keep-alive clients send requests back to back until ``max_requests`` were
    started or ``max_seconds`` passed (whichever first); each request is capped at
    ``request_timeout_s``. ``stagger_s`` spreads the clients' first requests evenly over that
    window. ``keep`` records every response (status, headers, latency)."""
    result = LoadResult()
    issued = 0
    clock = time.perf_counter
    start = clock()
    end = start + max_seconds

    async def worker(k: int) -> None:
        nonlocal issued
        conn = Connection(port)
        if stagger_s > 0:
            await asyncio.sleep(stagger_s * k / concurrency)
        try:
            while issued < max_requests and clock() < end:
                index = issued
                issued += 1
                t0 = clock()
                try:
                    async with asyncio.timeout(request_timeout_s):
                        status, headers, _ = await conn.request(target(index))
                except TimeoutError:
                    result.errors["client_timeout"] += 1
                    await conn.close()
                    continue
                except (OSError, asyncio.IncompleteReadError, HttpError, ValueError) as exc:
                    result.errors[type(exc).__name__] += 1
                    await conn.close()
                    continue
                latency = clock() - t0
                if status != 200:
                    result.errors[f"http_{status}"] += 1
                    continue
                result.completed += 1
                if keep:
                    result.responses.append(Response(status, headers, latency, index))
        finally:
            await conn.close()

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    result.elapsed_s = clock() - start
    return result


def blocking_closed_loop(
    port: int,
    target: Callable[[int], str],
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    request_timeout_s: float = 5.0,
) -> LoadResult:
    """:func:`closed_loop` with ``concurrency`` threads on blocking sockets (no latencies kept).

    For servers that close the connection after every response (gunicorn sync workers): there
    asyncio's per-connection setup costs the client more than the server spends on the request,
    and the client, not the server, would be measured. Blocking ``connect``/``send``/``recv``
    release the GIL, so the threads cost little besides."""
    clock = time.perf_counter
    start = clock()
    end = start + max_seconds
    tickets = iter(range(max_requests))  # next() on a range iterator is atomic under the GIL
    results = [LoadResult() for _ in range(concurrency)]

    def worker(result: LoadResult) -> None:
        sock: socket.socket | None = None
        try:
            for index in tickets:
                if clock() >= end:
                    break
                try:
                    if sock is None:
                        sock = socket.create_connection((HOST, port), timeout=request_timeout_s)
                    sock.sendall(f"GET {target(index)} HTTP/1.1\r\nhost: bench\r\n\r\n".encode())
                    status, close = _blocking_response(sock)
                except TimeoutError:
                    result.errors["client_timeout"] += 1
                    status, close = 0, True
                except (OSError, HttpError, ValueError) as exc:
                    result.errors[type(exc).__name__] += 1
                    status, close = 0, True
                if close and sock is not None:
                    sock.close()
                    sock = None
                if status == 200:
                    result.completed += 1
                elif status:
                    result.errors[f"http_{status}"] += 1
        finally:
            if sock is not None:
                sock.close()

    threads = [threading.Thread(target=worker, args=(r,), daemon=True) for r in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = LoadResult(elapsed_s=clock() - start)
    for r in results:
        total.completed += r.completed
        total.errors.update(r.errors)
    return total


def _blocking_response(sock: socket.socket) -> tuple[int, bool]:
    """Read one response with a Content-Length; returns (status, server closes)."""
    data = b""
    while (split := data.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise HttpError("connection closed before the response head")
        data += chunk
    lines = data[:split].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is None:
        raise HttpError("response without content-length")
    remaining = int(length) - (len(data) - split - 4)
    while remaining > 0:
        chunk = sock.recv(max(remaining, 65536))
        if not chunk:
            raise HttpError("connection closed in the body")
        remaining -= len(chunk)
    return status, headers.get("connection", "").lower() == "close"
