"""Overhead of the middleware: the same app bare vs wrapped, measured in ONE run.

Cases (DESIGN.md, "Performance"):

* unmatched path (a rule exists for ``/search``; requests hit ``/plain``): wrapped req/s must be
  >= 0.97x bare;
* matched path, cache hit (``/search?q=...`` after one warming request): <= 100 us added at p50.

Apps (``_apps.py``): ASGI (Starlette + ``LLMMiddleware``), plain WSGI (``LLMWSGIMiddleware``),
Flask (the extension) and Django (sync, ``WSGIHandler``; bare = the same settings with an empty
``MIDDLEWARE``, wrapped = only ``llm_middleware.django.LLMMiddleware`` in it).

Two layers, each with the variants interleaved over several rounds (rotating order: ABBA for
two), each round paired, reporting the median over rounds:

* in-process: the app's callable driven directly in a tight loop (ASGI: synthetic
  scope/receive/send; WSGI: a prepared environ, the result iterated and closed); it isolates the
  middleware from socket noise and is the precise number for the targets. Per-request times are
  taken, and ratios use each round's p50 (robust to preemption by other processes; the mean is
  shown too). A no-op middleware of the same kind is measured alongside, as the floor any
  wrapper pays. Each round runs about ``inproc_round_s`` per variant (capped in requests), so a
  slow framework gets fewer requests per round, not a longer run;
* sockets: two servers on loopback (subprocesses, one bare, one wrapped, same app code) loaded
  by a raw HTTP/1.1 client; the realistic number. ASGI: uvicorn, one worker, keep-alive. WSGI:
  gunicorn, ONE sync worker (no keep-alive: a connection per request, as sync workers serve).
  The servers' CPU use (all their processes) is shown: below ~85 % the server was not the
  bottleneck (other load, or the client) and the row is not judged. Over sockets only the
  unmatched path is measured for WSGI (the cache-hit target is judged in-process).

Usage: ``python bench/overhead.py [--quick] [--only asgi,wsgi,flask,django] [--layers
inprocess,sockets,cpu,floor] [--profile] [--pin-cpus]``. ``floor``: the middleware call alone on
an unmatched path, CPU ns over a no-op middleware of the same kind around an app that does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import gc
import io
import os
import pstats
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import _apps
import _common
from _common import (
    DROPPED_ERRORS,
    LOGGING_NOTE,
    CpuMeter,
    LoadResult,
    Row,
    Server,
    blocking_closed_loop,
    closed_loop,
    cpu_line,
    enable_pinning,
    environment_line,
    fault_server_module,
    get,
    gunicorn_server,
    median,
    percentile,
    pin_client,
    print_table,
    quiet_structlog,
    source_line,
    uvicorn_server,
)

UNMATCHED_MIN_RATIO = 0.97
#: The unmatched path against a no-op middleware of the same kind (issue 14).
UNMATCHED_VS_NOOP_MIN_RATIO = 0.99
CACHE_HIT_MAX_ADDED_US = 100.0
QUERY = "red shoes under 50 euros"
QS = "q=" + quote(QUERY)
VARIANTS = ("bare", "wrapped")


@dataclass(frozen=True)
class Settings:
    inproc_rounds: int
    inproc_round_s: float  # per variant and round (about; from the warm-up's per-request time)
    inproc_requests: int  # per variant and round (cap)
    socket_rounds: int
    socket_requests: int  # per variant and round (cap)
    socket_seconds: float  # per variant and round (cap)
    socket_concurrency: int


QUICK = Settings(
    inproc_rounds=6,
    inproc_round_s=0.03,
    inproc_requests=3_000,
    socket_rounds=3,
    socket_requests=4_000,
    socket_seconds=0.5,
    socket_concurrency=16,
)
DEFAULT = Settings(
    inproc_rounds=15,
    inproc_round_s=0.12,
    inproc_requests=10_000,
    socket_rounds=12,
    socket_requests=12_000,
    socket_seconds=0.8,
    socket_concurrency=16,
)
#: Requests per variant and round are never fewer than this, however slow the app.
MIN_INPROC_REQUESTS = 500


@dataclass(frozen=True)
class Case:
    """One thing to compare bare vs wrapped: a request target and how to judge it."""

    name: str
    path: str
    query: str
    kind: str  # "ratio": wrapped req/s / bare req/s; "added": added us per request at p50

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


UNMATCHED = Case("unmatched path", "/plain", QS, "ratio")
CACHE_HIT = Case("cache hit", "/search", QS, "added")
CASES = (UNMATCHED, CACHE_HIT)

HEADERS = ("variant", "layer", "bare", "wrapped", "ratio / added", "target", "verdict")

#: One request through an app: ``await call(case)`` -> (status, response headers).
Call = Callable[[Case], Awaitable[tuple[int, dict[str, str]]]]
#: A tight loop of ``n`` requests; returns each request's duration in ns.
Driver = Callable[[int], Awaitable[list[int]]]


# -- in-process: ASGI -----------------------------------------------------------------------------


def asgi_scope(path: str, query: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1"),
        "root_path": "",
        "query_string": query.encode("latin-1"),
        "headers": [(b"host", b"bench"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 50_000),
        "server": ("127.0.0.1", 8_000),
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: dict[str, Any]) -> None:
    return None


def asgi_caller(
    app: Any, receive: Callable[[], Callable[[], Awaitable[dict[str, Any]]]] = lambda: _receive
) -> Call:
    """One request through an ASGI app; ``receive()`` gives each request its receive."""

    async def call(case: Case) -> tuple[int, dict[str, str]]:
        start: dict[str, Any] = {}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)

        await app(asgi_scope(case.path, case.query), receive(), send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start.get("headers", [])}
        return start.get("status", 0), headers

    return call


def asgi_driver(app: Any, case: Case) -> Driver:
    template = asgi_scope(case.path, case.query)

    async def run(n: int) -> list[int]:
        clock = time.perf_counter_ns
        times = [0] * n
        for i in range(n):
            scope = dict(template)  # apps add keys to the scope
            t0 = clock()
            await app(scope, _receive, _discard)
            times[i] = clock() - t0
        return times

    return run


class NoopMiddleware:
    """The cheapest possible pure ASGI middleware: the floor any wrapper pays in-process."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _once_receive() -> Callable[[], Awaitable[dict[str, Any]]]:
    """A request's ``receive``: the (empty) body, then nothing until the app stops listening, as
    a server does while the client waits (Django's handler listens for a disconnect meanwhile
    and cancels that once it answered)."""
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def django_asgi_caller(app: Any) -> Call:
    return asgi_caller(app, _once_receive)


def django_asgi_driver(handler: Any, case: Case) -> Driver:
    """Django's async middleware chain and view, as its ASGI handler runs them
    (``get_response_async``) on a request built beforehand. Not the handler's own ``__call__``:
    that starts a thread per request (``ThreadSensitiveContext`` + ``sync_to_async(
    response.close)``), about 1 ms whose spread on a loaded machine (wall-time rounds from 0.77x
    to 1.34x between two identical no-op runs) hides all a middleware costs. The full handler
    is what ``django_asgi_caller`` checks the answers through."""
    template = asgi_scope(case.path, case.query)

    async def run(n: int) -> list[int]:
        clock = time.perf_counter_ns
        times = [0] * n
        get_response = handler.get_response_async
        for i in range(n):
            request = handler.request_class(dict(template), io.BytesIO(b""))
            t0 = clock()
            response = await get_response(request)
            times[i] = clock() - t0
            response.close()
        return times

    return run


# -- in-process: WSGI (plain, Flask, Django) -------------------------------------------------------


def wsgi_environ(path: str, query: str) -> dict[str, Any]:
    """What a WSGI server hands over for ``GET path?query`` (no body)."""
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "HTTP_HOST": "bench",
        "HTTP_USER_AGENT": "bench",
        "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),  # shared by the copies: empty, reads give b""
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def _write(data: bytes) -> None:
    return None


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return _write


def _close(result: Any) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def wsgi_caller(app: Any) -> Call:
    async def call(case: Case) -> tuple[int, dict[str, str]]:
        start: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            start[:] = [status, headers]
            return _write

        result = app(wsgi_environ(case.path, case.query), start_response)
        try:
            for _ in result:
                pass
        finally:
            _close(result)
        status, headers = start
        return int(status.split(" ", 1)[0]), {k.lower(): v for k, v in headers}

    return call


def wsgi_driver(app: Any, case: Case) -> Driver:
    """As a WSGI server does: call, iterate the result, close it."""
    template = wsgi_environ(case.path, case.query)

    async def run(n: int) -> list[int]:
        clock = time.perf_counter_ns
        times = [0] * n
        start_response = _start_response
        for i in range(n):
            environ = dict(template)  # apps add keys to the environ
            t0 = clock()
            result = app(environ, start_response)
            for _ in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
            times[i] = clock() - t0
        return times

    return run


# -- in-process: measurement ---------------------------------------------------------------------


@dataclass(frozen=True)
class InprocStats:
    """One variant in one round."""

    mean_us: float
    p50_us: float


def rotation(names: list[str], round_index: int) -> list[str]:
    """Round r starts with a different variant and odd rounds run backwards (for two variants
    this is ABBA), so slow drift of the machine hits every variant alike."""
    k = round_index % len(names)
    order = names[k:] + names[:k]
    return order[::-1] if round_index % 2 else order


async def measure_inprocess(
    drivers: dict[str, Driver], settings: Settings
) -> tuple[dict[str, list[InprocStats]], int]:
    """Interleave the variants' drivers (one discarded warm-up round first, which also sizes
    the rounds: about ``inproc_round_s`` for the slowest variant). Returns the stats and the
    requests per variant and round."""
    names = list(drivers)
    slowest_ns = 1.0
    for name in names:
        warm = await drivers[name](max(200, MIN_INPROC_REQUESTS))
        slowest_ns = max(slowest_ns, percentile(warm, 50))
    n = int(settings.inproc_round_s * 1e9 / slowest_ns)
    n = max(MIN_INPROC_REQUESTS, min(settings.inproc_requests, n))
    results: dict[str, list[InprocStats]] = {name: [] for name in names}
    for r in range(settings.inproc_rounds):
        for name in rotation(names, r):
            gc.collect()
            times = await drivers[name](n)
            results[name].append(InprocStats(sum(times) / n / 1e3, percentile(times, 50) / 1e3))
    return results, n


def inprocess_row(
    label: str,
    kind: str,
    bare: list[InprocStats],
    other: list[InprocStats],
    unjudged: str = "",
) -> Row:
    """Paired per round, then the median over rounds. ``kind``: ``"ratio"`` (judged against the
    unmatched target), ``"added"`` (the cache-hit target) or ``"floor"`` (not judged).

    Ratios use each round's p50 request time: a request preempted by another process or hit by
    a collection lands in the tail, not in the p50 (the mean is shown for reference).
    ``unjudged``: why a ratio row is shown but not judged."""
    bare_p50 = median([b.p50_us for b in bare])
    other_p50 = median([o.p50_us for o in other])
    added_p50 = median([o.p50_us - b.p50_us for b, o in zip(bare, other, strict=True)])
    added_mean = median([o.mean_us - b.mean_us for b, o in zip(bare, other, strict=True)])
    cells = [label, "in-process", f"p50 {bare_p50:.2f} µs", f"p50 {other_p50:.2f} µs"]
    if kind == "added":
        cells += [
            f"+{added_p50:.1f} µs at p50 (mean {added_mean:+.1f})",
            f"≤ {CACHE_HIT_MAX_ADDED_US:.0f} µs",
        ]
        return Row(cells, added_p50 <= CACHE_HIT_MAX_ADDED_US)
    ratios = [b.p50_us / o.p50_us for b, o in zip(bare, other, strict=True)]
    ratio = median(ratios)
    ratio_mean = median([b.mean_us / o.mean_us for b, o in zip(bare, other, strict=True)])
    spread = f"rounds p25–p75 {percentile(ratios, 25):.3f}–{percentile(ratios, 75):.3f}"
    cells.append(
        f"{ratio:.3f}× req/s ({added_p50:+.2f} µs; {spread}; mean {ratio_mean:.3f}×, "
        f"{added_mean:+.2f} µs)"
    )
    if kind == "floor":
        return Row([*cells, "(floor)"])
    if kind == "vs-noop":
        cells[2] = cells[2].replace("p50", "no-op p50")
        return Row(
            [*cells, f"≥ {UNMATCHED_VS_NOOP_MIN_RATIO}× no-op"],
            ratio >= UNMATCHED_VS_NOOP_MIN_RATIO,
        )
    if unjudged:
        return Row([*cells, f"≥ {UNMATCHED_MIN_RATIO}× (not judged: {unjudged})"])
    return Row([*cells, f"≥ {UNMATCHED_MIN_RATIO}×"], ratio >= UNMATCHED_MIN_RATIO)


async def check_cache(call: Call) -> None:
    """The wrapped app does what the cases claim: /plain untouched, /search cached after one."""
    status, headers = await call(UNMATCHED)
    assert status == 200, status
    if "x-llm-outcome" in headers:
        raise RuntimeError(f"the unmatched path went through the middleware: {headers}")
    # The first LLM call of a process may overrun a cold budget (imports, TLS context): warm
    # up until the answer is cached, a bounded number of times.
    seen = []
    for _ in range(20):
        _, headers = await call(CACHE_HIT)
        seen.append(headers.get("x-llm-outcome"))
        if seen[-1] == "intent=cached":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"cache warm-up failed: {seen}")


@dataclass
class Subject:
    """One framework in-process: its bare, wrapped and no-op-wrapped apps, how to drive them."""

    name: str
    apps: dict[str, Any]  # "bare", "wrapped", "noop"
    driver: Callable[[Any, Case], Driver]
    caller: Callable[[Any], Call]
    noop_label: str
    #: Set when the in-process unmatched ratio means nothing (the socket row is then the test).
    unjudged: str = ""


async def compare_inprocess(subject: Subject, settings: Settings) -> tuple[list[Row], str]:
    apps, name = subject.apps, subject.name
    wrapped_call = subject.caller(apps["wrapped"])
    await check_cache(wrapped_call)
    _, bare_headers = await subject.caller(apps["bare"])(CACHE_HIT)
    if bare_headers.get("x-llm-outcome") != "-":
        raise RuntimeError(f"{name}: the bare app is not bare: {bare_headers}")
    unmatched, n_unmatched = await measure_inprocess(
        {variant: subject.driver(app, UNMATCHED) for variant, app in apps.items()}, settings
    )
    hit, n_hit = await measure_inprocess(
        {variant: subject.driver(apps[variant], CACHE_HIT) for variant in VARIANTS}, settings
    )
    _, after = await wrapped_call(CACHE_HIT)
    if after.get("x-llm-outcome") != "intent=cached":
        raise RuntimeError(f"{name}: the cache hit case stopped hitting the cache: {after}")
    rows = [
        inprocess_row(
            f"{name} {UNMATCHED.name}",
            "ratio",
            unmatched["bare"],
            unmatched["wrapped"],
            subject.unjudged,
        ),
        inprocess_row(f"{name} {CACHE_HIT.name}", "added", hit["bare"], hit["wrapped"]),
        inprocess_row(
            f"{name} {subject.noop_label}, {UNMATCHED.path} (reference)",
            "floor",
            unmatched["bare"],
            unmatched["noop"],
        ),
        inprocess_row(
            f"{name} {UNMATCHED.name} vs the no-op middleware",
            "vs-noop",
            unmatched["noop"],
            unmatched["wrapped"],
        ),
    ]
    note = (
        f"{name} in-process: {n_unmatched:,} requests per variant and round on the unmatched "
        f"path, {n_hit:,} on the cache hit, {settings.inproc_rounds} rounds"
    )
    return rows, note


def bench_asgi_inprocess(settings: Settings, provider_url: str) -> tuple[list[Row], list[str]]:
    async def run() -> tuple[list[Row], list[str]]:
        bare = _apps.starlette_app()
        wrapped = _apps.wrap_asgi(bare, _apps.middleware_config(provider_url))
        subject = Subject(
            "ASGI Starlette",
            {"bare": bare, "wrapped": wrapped, "noop": NoopMiddleware(bare)},
            asgi_driver,
            asgi_caller,
            "no-op ASGI middleware",
        )
        try:
            rows, note = await compare_inprocess(subject, settings)
            return rows, [note]
        finally:
            await wrapped.engine.aclose()

    return asyncio.run(run())


def _close_sync_engine(engine: Any) -> None:
    from llm_middleware.bridge import BACKGROUND

    BACKGROUND.run(engine.aclose(), 5.0)


def _bench_sync_inprocess(
    subject: Subject, settings: Settings, engine: Callable[[], Any]
) -> tuple[list[Row], list[str]]:
    try:
        rows, note = asyncio.run(compare_inprocess(subject, settings))
        return rows, [note]
    finally:
        _close_sync_engine(engine())


def bench_wsgi_inprocess(settings: Settings, provider_url: str) -> tuple[list[Row], list[str]]:
    bare = _apps.wsgi_app()
    wrapped = _apps.wrap_wsgi(bare, _apps.middleware_config(provider_url))
    apps = {"bare": bare, "wrapped": wrapped, "noop": _apps.NoopWSGIMiddleware(bare)}
    subject = Subject(
        "WSGI plain",
        apps,
        wsgi_driver,
        wsgi_caller,
        "no-op WSGI middleware",
        # A few dict operations: any wrapper, even the no-op one, halves its "req/s".
        unjudged="the bare app does no work",
    )
    return _bench_sync_inprocess(subject, settings, lambda: wrapped.engine)


def bench_flask_inprocess(settings: Settings, provider_url: str) -> tuple[list[Row], list[str]]:
    wrapped = _apps.wrap_flask(_apps.flask_app(), _apps.middleware_config(provider_url))
    noop = _apps.flask_app()
    noop.wsgi_app = _apps.NoopWSGIMiddleware(noop.wsgi_app)  # where the extension wraps
    apps = {"bare": _apps.flask_app(), "wrapped": wrapped, "noop": noop}
    subject = Subject("Flask", apps, wsgi_driver, wsgi_caller, "no-op WSGI middleware")
    return _bench_sync_inprocess(
        subject, settings, lambda: wrapped.extensions["llm_middleware"].engine
    )


def bench_django_inprocess(settings: Settings, provider_url: str) -> tuple[list[Row], list[str]]:
    """Django's settings are configured once, here, for the whole process. Sync mode (WSGI
    handler), then async mode (ASGI handler, async views) with an engine of its own."""
    from llm_middleware.django import engine_from_settings

    apps = _apps.django_handlers(_apps.middleware_config(provider_url))
    subject = Subject("Django sync", apps, wsgi_driver, wsgi_caller, "no-op Django middleware")
    rows, notes = _bench_sync_inprocess(subject, settings, engine_from_settings.get)
    engine_from_settings.reset()  # the async handlers build (and close) their own engine

    async def run_async() -> tuple[list[Row], list[str]]:
        subject = Subject(
            "Django async",
            _apps.django_asgi_handlers(),
            django_asgi_driver,
            django_asgi_caller,
            "no-op async Django middleware",
        )
        try:
            rows, note = await compare_inprocess(subject, settings)
            return rows, [note]
        finally:
            await engine_from_settings.get().aclose()
            engine_from_settings.reset()

    async_rows, async_notes = asyncio.run(run_async())
    return rows + async_rows, notes + async_notes


# -- the middleware call alone: the unmatched path over a no-op middleware ------------------------

FLOOR_BATCH = 20_000


def floor_row(label: str, noop: list[float], wrapped: list[float]) -> Row:
    """CPU ns per call, paired per round: what the unmatched path adds to a no-op middleware
    of the same kind around an app that does nothing. Not judged (the target is a ratio of a
    real app's time); it resolves tens of ns where an in-process ratio's rounds spread by
    ±0.5 % of 10-100 µs."""
    added = [w - n for n, w in zip(noop, wrapped, strict=True)]
    spread = f"rounds p25–p75 {percentile(added, 25):+.0f}…{percentile(added, 75):+.0f}"
    return Row(
        [
            label,
            "call, CPU",
            f"no-op {median(noop):.0f} ns",
            f"{median(wrapped):.0f} ns",
            f"{median(added):+.0f} ns per call ({spread})",
            "(floor, not judged)",
        ]
    )


def _floor_rounds(
    batches: dict[str, Callable[[int], float]], settings: Settings
) -> dict[str, list[float]]:
    names = list(batches)
    for name in names:
        batches[name](FLOOR_BATCH // 10)
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(9, settings.inproc_rounds)):
        for name in rotation(names, r):
            gc.collect()
            results[name].append(batches[name](FLOOR_BATCH // (3 if settings is QUICK else 1)))
    return results


def _drive(coroutine: Any) -> None:
    # (not contextlib.suppress: its enter/exit would be timed with every call)
    try:  # noqa: SIM105
        coroutine.send(None)
    except StopIteration:
        pass


def _asgi_batch(middleware: Any) -> Callable[[int], float]:
    template = asgi_scope(UNMATCHED.path, UNMATCHED.query)

    def batch(n: int) -> float:
        scopes = [dict(template) for _ in range(n)]
        clock, drive = time.thread_time_ns, _drive
        t0 = clock()
        for scope in scopes:
            drive(middleware(scope, _receive, _discard))
        return (clock() - t0) / n

    return batch


def _wsgi_batch(middleware: Any) -> Callable[[int], float]:
    template = wsgi_environ(UNMATCHED.path, UNMATCHED.query)

    def batch(n: int) -> float:
        environs = [dict(template) for _ in range(n)]
        clock = time.thread_time_ns
        t0 = clock()
        for environ in environs:
            middleware(environ, _start_response)
        return (clock() - t0) / n

    return batch


def _django_batch(
    middleware: Any, make_request: Callable[[], Any], mode: str
) -> Callable[[int], float]:
    def batch(n: int) -> float:
        requests = [make_request() for _ in range(n)]
        clock, drive = time.thread_time_ns, _drive
        t0 = clock()
        if mode == "sync":
            for request in requests:
                middleware(request)
        else:
            for request in requests:
                drive(middleware(request))
        return (clock() - t0) / n

    return batch


async def _nothing_asgi(scope: Any, receive: Any, send: Any) -> None:
    return None


def _nothing_wsgi(environ: Any, start_response: Any) -> Any:
    return ()


def bench_asgi_floor(settings: Settings, provider_url: str) -> tuple[list[Row], list[str]]:
    from llm_middleware import LLMMiddleware

    wrapped = LLMMiddleware(_nothing_asgi, config=_apps.middleware_config(provider_url))
    try:
        res = _floor_rounds(
            {"noop": _asgi_batch(NoopMiddleware(_nothing_asgi)), "wrapped": _asgi_batch(wrapped)},
            settings,
        )
    finally:
        asyncio.run(wrapped.engine.aclose())
    return [floor_row("ASGI middleware call, unmatched", res["noop"], res["wrapped"])], []


def bench_wsgi_floor(settings: Settings, provider_url: str) -> tuple[list[Row], list[str]]:
    wrapped = _apps.wrap_wsgi(_nothing_wsgi, _apps.middleware_config(provider_url))
    noop = _apps.NoopWSGIMiddleware(_nothing_wsgi)
    try:
        res = _floor_rounds({"noop": _wsgi_batch(noop), "wrapped": _wsgi_batch(wrapped)}, settings)
    finally:
        _close_sync_engine(wrapped.engine)
    label = "WSGI middleware call (plain, Flask), unmatched"
    return [floor_row(label, res["noop"], res["wrapped"])], []


def bench_django_floor(settings: Settings, provider_url: str) -> tuple[list[Row], list[str]]:
    from django.conf import settings as django_settings

    if not django_settings.configured:
        _apps.setup_django(_apps.middleware_config(provider_url), [])
    from django.core.handlers.asgi import ASGIRequest
    from django.core.handlers.wsgi import WSGIRequest

    from llm_middleware.django import LLMMiddleware, engine_from_settings

    response = object()

    def sync_view(request: Any) -> Any:
        return response

    async def async_view(request: Any) -> Any:
        return response

    environ = wsgi_environ(UNMATCHED.path, UNMATCHED.query)
    scope = asgi_scope(UNMATCHED.path, UNMATCHED.query)
    rows = []
    try:
        for mode, noop, view, make in (
            ("sync", _apps.NoopDjangoMiddleware, sync_view, lambda: WSGIRequest(dict(environ))),
            (
                "async",
                _apps.NoopAsyncDjangoMiddleware,
                async_view,
                lambda: ASGIRequest(dict(scope), io.BytesIO(b"")),
            ),
        ):
            res = _floor_rounds(
                {
                    "noop": _django_batch(noop(view), make, mode),
                    "wrapped": _django_batch(LLMMiddleware(view), make, mode),
                },
                settings,
            )
            rows.append(
                floor_row(f"Django {mode} middleware call, unmatched", res["noop"], res["wrapped"])
            )
    finally:
        _close_sync_engine(engine_from_settings.get())
        engine_from_settings.reset()
    return rows, []


def profile_asgi(provider_url: str, n: int) -> None:
    """cProfile the wrapped app on both cases (top functions by own time)."""

    async def run() -> None:
        bare = _apps.starlette_app()
        wrapped = _apps.wrap_asgi(bare, _apps.middleware_config(provider_url))
        try:
            await check_cache(asgi_caller(wrapped))
            for case in CASES:
                driver = asgi_driver(wrapped, case)
                await driver(500)
                profiler = cProfile.Profile()
                profiler.enable()
                await driver(n)
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(22)
                print(f"\n### cProfile: wrapped, {case.name}, {n} requests (sorted by tottime)\n")
                print("```")
                print("\n".join(out.getvalue().strip().splitlines()[:40]))
                print("```")
        finally:
            await wrapped.engine.aclose()

    asyncio.run(run())


# -- CPU per LLM call ------------------------------------------------------------------------------

#: Sequential matched requests per variant and round (distinct texts: every wrapped one calls the
#: provider), and rounds (bare/wrapped interleaved, rotating order).
CPU_CALLS = {"quick": 100, "default": 300}
CPU_ROUNDS = {"quick": 3, "default": 7}
CPU_MAX_MS = 0.8  # issue 14


def _cpu_case(path: str, prefix: str, i: int) -> Case:
    return Case("cpu", path, "q=" + quote(f"{prefix} {i} red shoes under 50 euros"), "cpu")


def _asgi_once(app: Any) -> Callable[[Case], Awaitable[str]]:
    async def once(case: Case) -> str:
        outcome = ["?"]

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                for k, v in message.get("headers", []):
                    if k == b"x-llm-outcome":
                        outcome[0] = v.decode("latin-1")

        await app(asgi_scope(case.path, case.query), _receive, send)
        return outcome[0]

    return once


def _wsgi_once(app: Any) -> Callable[[Case], Awaitable[str]]:
    async def once(case: Case) -> str:
        outcome = ["?"]

        def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
            for k, v in headers:
                if k.lower() == "x-llm-outcome":
                    outcome[0] = v
            return _write

        result = app(wsgi_environ(case.path, case.query), start_response)
        try:
            for _ in result:
                pass
        finally:
            _close(result)
        return outcome[0]

    return once


async def measure_cpu(
    once: dict[str, Callable[[Case], Awaitable[str]]], calls: int, rounds: int
) -> tuple[list[float], list[float], Any, list[float]]:
    """Process CPU time (every thread: the caller's, the background loop's) per request over
    ``calls`` sequential matched requests with fresh texts, bare and wrapped interleaved per
    round. Returns per-round (bare ms, wrapped ms), the wrapped outcomes seen, and per round
    the wrapped requests' CPU ms on the request thread alone (the rest is the background
    loop's, where the HTTP calls run)."""
    from collections import Counter

    outcomes: Counter[str] = Counter()
    bare_ms: list[float] = []
    wrapped_ms: list[float] = []
    request_thread_ms: list[float] = []
    for i in range(20):  # warm-up (first call of the process: connection, imports)
        await once["wrapped"](_cpu_case("/search", "warm", i))
        await once["bare"](_cpu_case("/search", "warm", i))
    for r in range(rounds):
        for name in rotation(["bare", "wrapped"], r):
            gc.collect()
            cases = [_cpu_case("/search", f"r{r}", i) for i in range(calls)]
            t0, thread0 = time.process_time(), time.thread_time()
            for case in cases:
                seen = await once[name](case)
                if name == "wrapped":
                    outcomes[seen] += 1
            ms = (time.process_time() - t0) / calls * 1000
            (bare_ms if name == "bare" else wrapped_ms).append(ms)
            if name == "wrapped":
                request_thread_ms.append((time.thread_time() - thread0) / calls * 1000)
    return bare_ms, wrapped_ms, outcomes, request_thread_ms


def cpu_row(
    label: str, bare: list[float], wrapped: list[float], outcomes: Any, request_thread: list[float]
) -> Row:
    per_call = [w - b for b, w in zip(bare, wrapped, strict=True)]
    value = median(per_call)
    ok = set(outcomes) == {"intent=ok"}
    cells = [
        f"{label} CPU ms per LLM call",
        "in-process cpu",
        f"{median(bare):.3f} ms CPU/req",
        f"{median(wrapped):.3f} ms CPU/req (request thread {median(request_thread):.3f})",
        f"{value:.3f} ms (rounds {min(per_call):.3f}–{max(per_call):.3f})"
        + ("" if ok else f"; outcomes {dict(outcomes)}"),
        f"≤ {CPU_MAX_MS} ms",
    ]
    return Row(cells, value <= CPU_MAX_MS and ok)


def compare_cpu(
    name: str, build: Callable[[str], tuple[dict[str, Any], Any, Callable[[Any], Any]]]
) -> Callable[[Settings, str], tuple[list[Row], list[str]]]:
    """``build(provider_url)`` -> ({"bare", "wrapped"} apps, the wrapped engine, once-maker).
    The provider runs in a process of its own (its CPU is not ours)."""
    from _fault import fault_process

    def bench(settings: Settings, _provider_url: str) -> tuple[list[Row], list[str]]:
        quick = settings is QUICK
        calls = CPU_CALLS["quick" if quick else "default"]
        rounds = CPU_ROUNDS["quick" if quick else "default"]
        with fault_process() as provider:
            provider.set_default("fast")
            apps, engine, make_once = build(provider.url)
            once = {variant: make_once(app) for variant, app in apps.items()}

            async def run() -> tuple[list[float], list[float], Any, list[float]]:
                try:
                    return await measure_cpu(once, calls, rounds)
                finally:
                    if make_once is _asgi_once:
                        await engine.aclose()

            try:
                bare, wrapped, outcomes, request_thread = asyncio.run(run())
            finally:
                if make_once is not _asgi_once:
                    _close_sync_engine(engine)
            if PROFILE_CPU:
                _print_cpu_profile(name, make_once, provider.url, build, calls)
        note = (
            f"{name} CPU per LLM call: process CPU time (all threads) of {calls} sequential "
            f"matched requests with fresh texts, wrapped minus bare, {rounds} interleaved "
            "rounds; provider answers at once from a process of its own"
        )
        return [cpu_row(name, bare, wrapped, outcomes, request_thread)], [note]

    return bench


#: Set by ``--profile``: cProfile (on process CPU time) the matched path after the cpu rows.
PROFILE_CPU = False


def _print_cpu_profile(
    name: str,
    make_once: Callable[[Any], Callable[[Case], Awaitable[str]]],
    provider_url: str,
    build: Callable[[str], tuple[dict[str, Any], Any, Callable[[Any], Any]]],
    calls: int,
) -> None:
    apps, engine, _ = build(provider_url)
    once = make_once(apps["wrapped"])

    async def run() -> None:
        from llm_middleware.bridge import BACKGROUND

        for i in range(20):
            await once(_cpu_case("/search", "pwarm", i))
        # cProfile hooks one thread: one profiler on this thread, one on the background loop's
        # (where the HTTP calls run), each on its own thread's CPU time.
        here = cProfile.Profile(time.thread_time)
        loop_side = cProfile.Profile(time.thread_time)
        BACKGROUND.run(_on_loop(loop_side.enable), 5.0)
        here.enable()
        for i in range(calls):
            await once(_cpu_case("/search", "profile", i))
        here.disable()
        BACKGROUND.run(_on_loop(loop_side.disable), 5.0)
        for where, profiler in (("request thread", here), ("background loop", loop_side)):
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumtime").print_stats(45)
            print(f"\n### cProfile ({where}, thread CPU): {name} matched path, {calls} calls\n")
            print("```")
            print(out.getvalue().strip())
            print("```")
        if make_once is _asgi_once:
            await engine.aclose()

    asyncio.run(run())
    if make_once is not _asgi_once:
        _close_sync_engine(engine)


async def _on_loop(action: Callable[[], None]) -> None:
    action()


def _cpu_asgi(url: str) -> tuple[dict[str, Any], Any, Callable[[Any], Any]]:
    bare = _apps.starlette_app()
    wrapped = _apps.wrap_asgi(bare, _apps.middleware_config(url))
    return {"bare": bare, "wrapped": wrapped}, wrapped.engine, _asgi_once


def _cpu_wsgi(url: str) -> tuple[dict[str, Any], Any, Callable[[Any], Any]]:
    bare = _apps.wsgi_app()
    wrapped = _apps.wrap_wsgi(bare, _apps.middleware_config(url))
    return {"bare": bare, "wrapped": wrapped}, wrapped.engine, _wsgi_once


def _cpu_flask(url: str) -> tuple[dict[str, Any], Any, Callable[[Any], Any]]:
    wrapped = _apps.wrap_flask(_apps.flask_app(), _apps.middleware_config(url))
    engine = wrapped.extensions["llm_middleware"].engine
    return {"bare": _apps.flask_app(), "wrapped": wrapped}, engine, _wsgi_once


# -- sockets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SocketRound:
    bare_rps: float
    wrapped_rps: float
    bare_cpu: float  # server CPU seconds / wall seconds during the load (1.0 = saturated)
    wrapped_cpu: float


#: Runs a closed-loop load: (port, target, concurrency, max requests, max seconds) -> result.
Loader = Callable[[int, Callable[[int], str], int, int, float], LoadResult]


def asyncio_loader(
    port: int, target: Callable[[int], str], concurrency: int, requests: int, seconds: float
) -> LoadResult:
    """Keep-alive clients on one event loop (uvicorn keeps connections open)."""
    return asyncio.run(
        closed_loop(
            port, target, concurrency=concurrency, max_requests=requests, max_seconds=seconds
        )
    )


def blocking_loader(
    port: int, target: Callable[[int], str], concurrency: int, requests: int, seconds: float
) -> LoadResult:
    """Threads on blocking sockets (gunicorn sync workers close every connection)."""
    return blocking_closed_loop(
        port, target, concurrency=concurrency, max_requests=requests, max_seconds=seconds
    )


def measure_socket(
    servers: dict[str, Server], case: Case, settings: Settings, loader: Loader
) -> tuple[list[SocketRound], int]:
    """Alternate the two servers under the same closed-loop load; returns rounds and errors."""

    def load(server: Server, requests: int, seconds: float) -> tuple[float, float, int]:
        cpu0 = server.cpu_seconds()
        result = loader(
            server.port, lambda _i: case.target, settings.socket_concurrency, requests, seconds
        )
        busy = (server.cpu_seconds() - cpu0) / result.elapsed_s
        return result.rps, busy, sum(result.errors.values())

    for variant in VARIANTS:  # warm-up, discarded
        load(servers[variant], settings.socket_requests // 10, settings.socket_seconds / 5)
    rounds: list[SocketRound] = []
    errors = 0
    for r in range(settings.socket_rounds):
        rps: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for variant in rotation(list(VARIANTS), r):
            rps[variant], cpu[variant], errs = load(
                servers[variant], settings.socket_requests, settings.socket_seconds
            )
            errors += errs
        rounds.append(SocketRound(rps["bare"], rps["wrapped"], cpu["bare"], cpu["wrapped"]))
    return rounds, errors


#: Below this median server CPU use a socket comparison is not judged: the server was not the
#: bottleneck (other processes took the CPU, or the client was), so req/s measures the noise.
MIN_SERVER_CPU = 0.85


def socket_row(variant: str, case: Case, rounds: list[SocketRound], errors: int) -> Row:
    bare = median([r.bare_rps for r in rounds])
    wrapped = median([r.wrapped_rps for r in rounds])
    bare_cpu = median([r.bare_cpu for r in rounds])
    wrapped_cpu = median([r.wrapped_cpu for r in rounds])
    ratio = median([r.wrapped_rps / r.bare_rps for r in rounds])
    # Single worker at saturation: 1/rps is the server time per request.
    added = median([1e6 / r.wrapped_rps - 1e6 / r.bare_rps for r in rounds])
    err = f", {errors} errors" if errors else ""
    cells = [
        f"{variant} {case.name}",
        "sockets",
        f"{bare:,.0f} req/s (cpu {bare_cpu:.0%})",
        f"{wrapped:,.0f} req/s (cpu {wrapped_cpu:.0%})",
    ]
    saturated = min(bare_cpu, wrapped_cpu) >= MIN_SERVER_CPU
    ratios = [r.wrapped_rps / r.bare_rps for r in rounds]
    spread = f"rounds p25–p75 {percentile(ratios, 25):.3f}–{percentile(ratios, 75):.3f}"
    if case.kind == "ratio":
        cells += [
            f"{ratio:.3f}× req/s ({added:+.1f} µs/req; {spread}{err})",
            f"≥ {UNMATCHED_MIN_RATIO}×",
        ]
        passed = ratio >= UNMATCHED_MIN_RATIO and not errors
    else:
        cells += [
            f"+{added:.1f} µs/req from req/s ({ratio:.3f}×{err})",
            f"≤ {CACHE_HIT_MAX_ADDED_US:.0f} µs",
        ]
        passed = added <= CACHE_HIT_MAX_ADDED_US and not errors
    if not saturated:
        cells[-1] += f" (not judged: server cpu < {MIN_SERVER_CPU:.0%})"
        return Row(cells)
    return Row(cells, passed)


def check_socket(servers: dict[str, Server]) -> None:
    """The wrapped server runs the middleware (one provider call, then a cache hit); the bare
    one does not."""
    seen = []
    for _ in range(20):  # the first call of a cold process may overrun its budget
        _, headers, _ = get(servers["wrapped"].port, CACHE_HIT.target)
        seen.append(headers.get("x-llm-outcome"))
        if seen[-1] == "intent=cached":
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"cache warm-up failed on the server: {seen}")
    _, bare, _ = get(servers["bare"].port, CACHE_HIT.target)
    if bare.get("x-llm-outcome") != "-":
        raise RuntimeError(f"the bare server is not bare: {bare}")


Launch = Callable[[str, dict[str, str]], contextlib.AbstractContextManager[Server]]


@contextlib.contextmanager
def server_pair(launch: Launch, family: str, provider_url: str) -> Iterator[dict[str, Server]]:
    env = {"BENCH_PROVIDER_URL": provider_url}
    with launch(f"{family}_bare", env) as bare, launch(f"{family}_wrapped", env) as wrapped:
        yield {"bare": bare, "wrapped": wrapped}


def compare_socket(
    name: str,
    launch: Launch,
    family: str,
    cases: tuple[Case, ...],
    loader: Loader,
    concurrency: int | None = None,
) -> Callable[[Settings, str], tuple[list[Row], list[str]]]:
    """``concurrency`` overrides the settings' client connections."""

    def bench(settings: Settings, provider_url: str) -> tuple[list[Row], list[str]]:
        if concurrency is not None:
            settings = dataclasses.replace(settings, socket_concurrency=concurrency)
        with server_pair(launch, family, provider_url) as servers, pin_client():
            check_socket(servers)
            rows = []
            for case in cases:
                rounds, errors = measure_socket(servers, case, settings, loader)
                rows.append(socket_row(name, case, rounds, errors))
            return rows, []

    return bench


#: Client threads against a gunicorn sync worker: it serves one connection at a time, so a few
#: queued connections keep it busy; 16 threads would only fight over the client's GIL.
SYNC_CLIENTS = 4


def _gunicorn_sync(factory: str, env: dict[str, str]) -> contextlib.AbstractContextManager[Server]:
    return gunicorn_server(factory, env, worker_class="sync", workers=1)


#: (framework, layer) -> benchmark; each returns table rows and notes.
BENCHMARKS: dict[tuple[str, str], Callable[[Settings, str], tuple[list[Row], list[str]]]] = {
    ("asgi", "inprocess"): bench_asgi_inprocess,
    ("asgi", "sockets"): compare_socket(
        "ASGI uvicorn+Starlette", uvicorn_server, "asgi", CASES, asyncio_loader
    ),
    ("wsgi", "inprocess"): bench_wsgi_inprocess,
    ("wsgi", "sockets"): compare_socket(
        "WSGI plain, gunicorn sync",
        _gunicorn_sync,
        "wsgi",
        (UNMATCHED,),
        blocking_loader,
        SYNC_CLIENTS,
    ),
    ("flask", "inprocess"): bench_flask_inprocess,
    ("flask", "sockets"): compare_socket(
        "Flask, gunicorn sync", _gunicorn_sync, "flask", (UNMATCHED,), blocking_loader, SYNC_CLIENTS
    ),
    ("django", "inprocess"): bench_django_inprocess,
    ("django", "sockets"): compare_socket(
        "Django sync, gunicorn sync",
        _gunicorn_sync,
        "django",
        (UNMATCHED,),
        blocking_loader,
        SYNC_CLIENTS,
    ),
    ("asgi", "floor"): bench_asgi_floor,
    ("wsgi", "floor"): bench_wsgi_floor,
    ("django", "floor"): bench_django_floor,
    ("asgi", "cpu"): compare_cpu("ASGI Starlette", _cpu_asgi),
    ("wsgi", "cpu"): compare_cpu("WSGI plain", _cpu_wsgi),
    ("flask", "cpu"): compare_cpu("Flask", _cpu_flask),
}
FRAMEWORKS = ("asgi", "wsgi", "flask", "django")
LAYERS = ("inprocess", "sockets", "cpu", "floor")


def _names(value: str, allowed: tuple[str, ...]) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = set(names) - set(allowed)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {sorted(unknown)}; choose from {allowed}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 30 s)")
    parser.add_argument(
        "--only",
        type=lambda v: _names(v, FRAMEWORKS),
        default=list(FRAMEWORKS),
        help=f"comma-separated frameworks (default: all of {','.join(FRAMEWORKS)})",
    )
    parser.add_argument(
        "--layers",
        type=lambda v: _names(v, LAYERS),
        default=list(LAYERS),
        help=f"comma-separated layers (default: {','.join(LAYERS)})",
    )
    parser.add_argument("--profile", action="store_true", help="also cProfile the wrapped app")
    parser.add_argument(
        "--pin-cpus", action="store_true", help="pin servers and load client to separate CPUs"
    )
    parser.add_argument(
        "--logging",
        choices=("quiet", "default"),
        default="quiet",
        help="quiet: events dropped (the middleware's own cost); default: structlog's default "
        "console renderer to /dev/null (what an app that never configured structlog pays)",
    )
    args = parser.parse_args()
    if args.logging == "default" and not _common.DEFAULT_LOGGING:
        # Read at import by _common and by every server subprocess: start again with it set.
        os.environ["LLM_BENCH_LOGGING"] = "default"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    if args.pin_cpus:
        enable_pinning()
    global PROFILE_CPU
    PROFILE_CPU = args.profile
    meter = CpuMeter()
    settings = QUICK if args.quick else DEFAULT
    quiet_structlog()
    fault_server = fault_server_module()
    started = time.monotonic()
    print(f"# LLMMiddleware overhead ({'quick' if args.quick else 'default'} run)\n")
    print(f"- before: {environment_line()}")
    print(f"- {source_line()}")
    print(f"- {LOGGING_NOTE}")
    print(f"- {cpu_line()}")
    print(
        f"- in-process: {settings.inproc_rounds} rounds × ~{settings.inproc_round_s:g} s "
        f"(≤ {settings.inproc_requests:,} requests) per variant; sockets: "
        f"{settings.socket_rounds} rounds × ≤ {settings.socket_requests:,} requests / "
        f"≤ {settings.socket_seconds:g} s per variant; rotating order, median of paired rounds"
    )
    print(
        f"- servers: uvicorn (1 worker, h11; {settings.socket_concurrency} keep-alive asyncio "
        "clients) for ASGI; gunicorn, 1 sync worker (a connection per request; "
        f"{SYNC_CLIENTS} client threads on blocking sockets) for WSGI, Flask and Django\n"
    )
    rows: list[Row] = []
    notes: list[str] = []
    with fault_server.FaultServer() as provider:
        provider.default = fault_server.reply(_apps.INTENT_ANSWER)
        for framework in FRAMEWORKS:
            for layer in LAYERS:
                known = (framework, layer) in BENCHMARKS
                if known and framework in args.only and layer in args.layers:
                    bench_rows, bench_notes = BENCHMARKS[framework, layer](settings, provider.url)
                    rows += bench_rows
                    notes += bench_notes
        provider_calls = len(provider.requests)
        print_table(HEADERS, rows)
        print()
        for note in notes:
            print(f"- {note}")
        print(
            f"- provider calls: {provider_calls} "
            "(warm-ups only: every measured /search request hit the cache)"
        )
        if DROPPED_ERRORS:
            print(f"- middleware error events (dropped): {dict(DROPPED_ERRORS)}")
        print(f"- after: {environment_line()}")
        print(f"- {meter.line()}")
        print(f"- wall time: {time.monotonic() - started:.1f} s")
        if args.profile:
            profile_asgi(provider.url, settings.inproc_requests)


if __name__ == "__main__":
    main()
