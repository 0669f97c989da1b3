"""Budget fidelity: latency the middleware adds when the LLM provider HANGS, at concurrency 50.

A real server on loopback (uvicorn + Starlette, or gunicorn + a WSGI app, wrapped by the
middleware, rule budget 200 ms) whose provider is the scripted fault server
(``tests/fault_server.py``, in a process of its own), hanging either before or after the
response headers. 50 keep-alive clients send matched requests (``/search?q=...``, every query
unique so neither the cache nor single-flight can help: each request waits on its own hung
provider call); meanwhile one probe client sends the same request to the unmatched path
(``/plain?q=...``) every few ms. Per matched request:

    added = wall latency - median wall latency of the unmatched probe (same run, same load)

Target (DESIGN.md, "Performance"): p99 added <= budget + 5 ms (ASGI) / + 10 ms (WSGI).

Two arrival patterns per fault: ``staggered`` (the 50 clients start spread over one budget, so
deadlines expire spread out, as with real traffic) and ``lockstep`` (all 50 start together and
stay synchronised: 50 deadlines expire in the same millisecond, the worst case for the server's
event loop). Before them, a ``cold`` cell (one staggered request per client on the freshly
started server) shows the first-requests cost, and after them ``reference`` cells send the same
load to an unmatched view that just sleeps the budget: the floor an ideal middleware would show
(the server's own queueing under that arrival pattern). Both are reported, not judged; each
judged cell's note gives its distance to the reference with the same arrivals. The circuit
breaker is set out of reach (``EXTRA_CONFIG``) so every request really waits on a hung provider
instead of failing fast; the in-flight cap keeps its default.

Where the time goes, per request: ``own`` is the middleware's ``added_ms`` (its deadline's
clock); ``outside app`` is the wall latency minus the time spent inside the app (an outermost
timing wrapper's ``x-app-ms``): the server's event loop before and after the app, HTTP parsing,
the network and the client. Garbage-collection pauses in the server are listed per cell, full
collections with the objects they freed (each cell starts after an untimed full collection, so
cells do not inherit each other's garbage), and the live objects (after a full collection)
before and after the cell: a leak would show as growth from cell to cell.

Servers (``--servers``, default ``asgi,wsgi,flask``):

* ``asgi``: uvicorn (one worker) + Starlette; target budget + 5 ms;
* ``wsgi`` / ``flask`` / ``django``: gunicorn, ONE ``gthread`` worker with 64 threads, serving
  plain WSGI / Flask / Django (sync); target budget + 10 ms. A sync adapter blocks its thread
  for as long as the request waits on the provider, so 50 concurrent hung requests need 50
  threads or processes. 50 sync workers on 2 cores would be 50 interpreters (memory, and 50
  background loops and HTTP clients, one per process); one gthread worker is how a sync app
  serves that concurrency: its threads share one background loop and one provider connection
  pool, as in production. 64 = 50 load connections + the probe + headroom (an idle keep-alive
  connection holds no thread in gthread). One process keeps every thread under one GIL: the
  strict case for the lockstep pattern.

Usage: ``python bench/budget.py [--quick] [--servers asgi,wsgi,flask,django]
[--wsgi-workers N] [--library-defaults] [--pin-cpus]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from _common import (
    DROPPED_ERRORS,
    LOGGING_NOTE,
    Connection,
    CpuMeter,
    LoadResult,
    Row,
    Server,
    closed_loop,
    cpu_line,
    enable_pinning,
    environment_line,
    fetch,
    gunicorn_server,
    median,
    percentile,
    pin_client,
    print_table,
    quiet_structlog,
    source_line,
    uvicorn_server,
)
from _fault import fault_process

BUDGET_MS = 200
CONCURRENCY = 50
PROBE_INTERVAL_S = 0.005
FAULTS = ("hang_before_headers", "hang_after_headers")
MATCHED = "/search?"
#: The reference cells: an unmatched view that sleeps exactly the budget, i.e. what an ideal
#: middleware (costing its budget and not a microsecond more) would show under the same load.
SLEEP = f"/sleep?ms={BUDGET_MS}&"
REFERENCE = f"(view sleeps {BUDGET_MS} ms)"
#: name -> how long the clients' first requests are spread over (0: all at once)
ARRIVALS = {"staggered": BUDGET_MS / 1000.0, "lockstep": 0.0}
#: The breaker out of reach, so every request really waits on its hung provider call: it opens
#: after 5 hung calls (by design) and then every request fails fast with ``circuit_open``. The
#: in-flight cap keeps its default (128): 50 hung calls, each holding its slot for at most the
#: 20 ms teardown grace after its request gave up, stay below it. ``--library-defaults`` runs
#: without this (the breaker opens: the numbers then measure fast failures).
EXTRA_CONFIG: dict[str, Any] = {"breaker_failures": 1_000_000_000}
#: gunicorn gthread worker threads (see the module docstring), per worker process.
WSGI_THREADS = 64
#: gunicorn worker processes (``--wsgi-workers``).
WSGI_WORKERS = 1


@dataclass(frozen=True)
class Settings:
    requests: int  # matched requests per cell (cap)
    max_seconds: float  # per cell (cap on starting new requests)
    idle_probes: int  # sequential unmatched requests on the idle server (reference)


QUICK = Settings(requests=250, max_seconds=4.0, idle_probes=100)
DEFAULT = Settings(requests=1_500, max_seconds=20.0, idle_probes=300)


@dataclass(frozen=True)
class ServerSpec:
    """A server to test: its launcher (given the env) and its allowed slack over the budget."""

    name: str
    launch: Callable[[dict[str, str]], contextlib.AbstractContextManager[Server]]
    slack_ms: float


def _gthread(factory: str) -> Callable[[dict[str, str]], contextlib.AbstractContextManager[Server]]:
    def launch(env: dict[str, str]) -> contextlib.AbstractContextManager[Server]:
        env = {**env, "BENCH_GC_STATS": "1"}
        return gunicorn_server(
            factory, env, worker_class="gthread", workers=WSGI_WORKERS, threads=WSGI_THREADS
        )

    return launch


SERVERS = {
    "asgi": ServerSpec(
        "ASGI uvicorn+Starlette",
        lambda env: uvicorn_server("asgi_wrapped_instrumented", {**env, "BENCH_GC_STATS": "1"}),
        5.0,
    ),
    "wsgi": ServerSpec("WSGI gunicorn gthread", _gthread("wsgi_wrapped_instrumented"), 10.0),
    "flask": ServerSpec("Flask gunicorn gthread", _gthread("flask_wrapped_instrumented"), 10.0),
    "django": ServerSpec("Django gunicorn gthread", _gthread("django_wrapped_instrumented"), 10.0),
}
DEFAULT_SERVERS = ("asgi", "wsgi", "flask")


def _header_ms(headers: dict[str, str], name: str) -> float:
    try:
        return float(headers.get(name, ""))
    except ValueError:
        return float("nan")


@dataclass
class Cell:
    """What one (server, fault, arrival) combination measured."""

    fault: str
    arrival: str
    load: LoadResult
    probes_s: list[float]
    provider_calls: int
    gc_pauses: list[tuple[int, float, int]] = field(default_factory=list)
    live: tuple[int, int] = (-1, -1)  # the server's live objects before and after the cell

    def outcomes(self) -> Counter[str]:
        return Counter(r.headers.get("x-llm-outcome", "?") for r in self.load.responses)

    def added_ms(self) -> list[float]:
        base = median(self.probes_s)
        return [(r.latency_s - base) * 1000.0 for r in self.load.responses]

    def own_ms(self) -> list[float]:
        return [_header_ms(r.headers, "x-llm-added-ms") for r in self.load.responses]

    def outside_app_ms(self) -> list[float]:
        return [
            r.latency_s * 1000.0 - _header_ms(r.headers, "x-app-ms") for r in self.load.responses
        ]


async def probe(port: int, target: str, stop: asyncio.Event, limit: int) -> list[float]:
    """Sequential requests on one keep-alive connection until ``stop`` (or ``limit``)."""
    conn = Connection(port)
    latencies: list[float] = []
    try:
        while not stop.is_set() and len(latencies) < limit:
            t0 = time.perf_counter()
            async with asyncio.timeout(5):
                status, _, _ = await conn.request(target)
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_INTERVAL_S)
    finally:
        await conn.close()
    return latencies


async def gc_pauses(
    port: int, *, collect: bool = False
) -> tuple[list[tuple[int, float, int]], int]:
    """The server's GC pauses since the last call (empty if it does not report them) and its
    tracked objects; ``collect``: then a full collection (so the next cell starts from a clean
    heap), and the objects counted are those that survived it: the live heap."""
    status, _, body = await fetch(port, "/_bench/gc?collect=1" if collect else "/_bench/gc")
    if status != 200:
        return [], -1
    data = json.loads(body)
    pauses = [(int(g), float(ms), int(freed)) for g, ms, freed in data["pauses"]]
    return pauses, int(data["tracked"])


@dataclass
class CellRun:
    load: LoadResult
    probes: list[float]
    gc_pauses: list[tuple[int, float, int]]
    live_before: int  # live objects in the server (after a full collection), before the cell
    live_after: int  # and after it


async def run_cell(
    server: Server, path: str, arrival: str, requests: int, max_seconds: float, tag: str
) -> CellRun:
    _, live_before = await gc_pauses(server.port, collect=True)  # reset
    stop = asyncio.Event()
    probe_task = asyncio.create_task(probe(server.port, f"/plain?q=red+shoes+{tag}", stop, 100_000))
    try:
        load = await closed_loop(
            server.port,
            lambda i: f"{path}q=red+shoes+{tag}-{i}",
            concurrency=CONCURRENCY,
            max_requests=requests,
            max_seconds=max_seconds,
            keep=True,
            stagger_s=ARRIVALS[arrival],
        )
    finally:
        stop.set()
    probes = await probe_task
    pauses, _ = await gc_pauses(server.port)
    _, live_after = await gc_pauses(server.port, collect=True)
    return CellRun(load, probes, pauses, live_before, live_after)


def bench_server(
    spec: ServerSpec, settings: Settings, extra_config: dict[str, Any]
) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    with fault_process() as provider:
        env = {
            "BENCH_PROVIDER_URL": provider.url,
            "BENCH_BUDGET_MS": str(BUDGET_MS),
            "BENCH_EXTRA_CONFIG": json.dumps(extra_config),
        }
        with spec.launch(env) as server, pin_client():
            stop = asyncio.Event()
            idle = asyncio.run(probe(server.port, "/plain?q=red+shoes", stop, settings.idle_probes))
            notes.append(
                f"{spec.name}: idle unmatched request p50 {median(idle) * 1000:.2f} ms "
                f"(p99 {percentile(idle, 99) * 1000:.2f} ms, n={len(idle)})"
            )
            # (label, fault, arrival, requests, path); a label marks an unjudged cell.
            cells = [("cold", FAULTS[0], "staggered", CONCURRENCY, MATCHED)]
            cells += [("", f, a, settings.requests, MATCHED) for f in FAULTS for a in ARRIVALS]
            cells += [("reference", REFERENCE, a, settings.requests, SLEEP) for a in ARRIVALS]
            measured: list[tuple[str, Cell]] = []
            for label, fault, arrival, requests, path in cells:
                provider.set_default(FAULTS[0] if fault == REFERENCE else fault)
                tag = f"{label or fault}-{arrival}"
                run = asyncio.run(
                    run_cell(server, path, arrival, requests, settings.max_seconds, tag)
                )
                cell = Cell(fault, arrival, run.load, run.probes, provider.count(), run.gc_pauses)
                cell.live = (run.live_before, run.live_after)
                measured.append((label, cell))
    references = {c.arrival: c for label, c in measured if label == "reference"}
    for label, cell in measured:
        rows.append(cell_row(spec, cell, judged=not label, label=label))
        notes.append(cell_note(spec, cell, label, None if label else references.get(cell.arrival)))
    return rows, notes


HEADERS = (
    "server",
    "provider fault",
    "arrivals",
    "n",
    "unmatched p50",
    "added p50",
    "added p99",
    "added max",
    "own p50 / p99 / max",
    "outside app p50 / p99",
    "target (p99)",
    "verdict",
)


def _ms(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def cell_row(spec: ServerSpec, cell: Cell, *, judged: bool, label: str) -> Row:
    added = cell.added_ms()
    own = cell.own_ms()
    outside = cell.outside_app_ms()
    limit = BUDGET_MS + spec.slack_ms
    errors = sum(cell.load.errors.values())
    p99 = percentile(added, 99)
    n = f"{len(added)}" + (f" (+{errors} errors)" if errors else "")
    arrivals = f"{cell.arrival} ({label})" if label else cell.arrival
    return Row(
        [
            spec.name,
            cell.fault,
            arrivals,
            n,
            f"{_ms(median(cell.probes_s) * 1000, 2)} ms",
            f"{_ms(percentile(added, 50))} ms",
            f"{_ms(p99)} ms",
            f"{_ms(max(added, default=float('nan')))} ms",
            f"{_ms(percentile(own, 50))} / {_ms(percentile(own, 99))} / "
            f"{_ms(max(own, default=float('nan')))} ms",
            f"{_ms(percentile(outside, 50))} / {_ms(percentile(outside, 99))} ms",
            f"≤ {limit:g} ms" if judged else "(info)",
        ],
        (bool(added) and p99 <= limit and not errors) if judged else None,
    )


def cell_note(spec: ServerSpec, cell: Cell, label: str, reference: Cell | None) -> str:
    """``reference``: the sleeping-view cell with the same arrivals, for the judged cells."""
    outcomes = ", ".join(f"{k} ×{v}" for k, v in cell.outcomes().most_common() if k != "?")
    errors = f"; client errors {dict(cell.load.errors)}" if cell.load.errors else ""
    slow_gc = sorted((ms for _, ms, _ in cell.gc_pauses), reverse=True)[:3]
    full = [(ms, freed) for gen, ms, freed in cell.gc_pauses if gen == 2]
    full_text = ", ".join(f"{ms:.1f} ms freeing {freed:,} objects" for ms, freed in full)
    name = f"{cell.fault} / {cell.arrival}" + (f" ({label})" if label else "")
    versus = ""
    if reference is not None:
        mine, ideal = cell.added_ms(), reference.added_ms()
        versus = (
            f"vs the reference (view sleeping {BUDGET_MS} ms, same arrivals): p50 "
            f"{percentile(mine, 50) - percentile(ideal, 50):+.1f} ms, p99 "
            f"{percentile(mine, 99) - percentile(ideal, 99):+.1f} ms; "
        )
    return (
        f"{spec.name} / {name}: {versus}outcomes {outcomes or 'n/a'}; "
        f"provider calls {cell.provider_calls}; "
        f"unmatched probes n={len(cell.probes_s)}, p99 "
        f"{percentile(cell.probes_s, 99) * 1000:.2f} ms; "
        f"{cell.load.completed / cell.load.elapsed_s:.0f} matched req/s; server GC: "
        f"{len(cell.gc_pauses)} collections ({len(full)} full{': ' if full else ''}{full_text}), "
        "longest "
        f"{', '.join(f'{ms:.1f}' for ms in slow_gc) or '-'} ms; live objects "
        f"{cell.live[0]:,} → {cell.live[1]:,}{errors}"
    )


def _server_names(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = set(names) - set(SERVERS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {sorted(unknown)}; choose from {list(SERVERS)}")
    return names


def main() -> None:
    global WSGI_WORKERS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 30 s)")
    parser.add_argument(
        "--library-defaults",
        action="store_true",
        help="keep the default circuit breaker (it opens after 5 hangs: requests fail fast)",
    )
    parser.add_argument(
        "--servers",
        type=_server_names,
        default=list(DEFAULT_SERVERS),
        help=f"comma-separated, of {','.join(SERVERS)} (default: {','.join(DEFAULT_SERVERS)})",
    )
    parser.add_argument(
        "--wsgi-workers",
        type=int,
        default=WSGI_WORKERS,
        help=f"gunicorn gthread worker processes, {WSGI_THREADS} threads each (default: 1)",
    )
    parser.add_argument(
        "--pin-cpus", action="store_true", help="pin servers and load client to separate CPUs"
    )
    args = parser.parse_args()
    WSGI_WORKERS = args.wsgi_workers
    if args.pin_cpus:
        enable_pinning()
    meter = CpuMeter()
    settings = QUICK if args.quick else DEFAULT
    extra_config = {} if args.library_defaults else EXTRA_CONFIG
    quiet_structlog()
    started = time.monotonic()
    print(f"# LLMMiddleware budget fidelity ({'quick' if args.quick else 'default'} run)\n")
    print(f"- before: {environment_line()}")
    print(f"- {source_line()}")
    print(f"- {LOGGING_NOTE} (in the server processes)")
    print(f"- {cpu_line()}; the fault server (provider) unpinned")
    print(
        f"- budget {BUDGET_MS} ms, concurrency {CONCURRENCY}, ≤ {settings.requests} matched "
        f"requests / ≤ {settings.max_seconds:g} s per cell, unique queries (no cache, no "
        f"single-flight), extra config {extra_config or 'none (library defaults)'}"
    )
    print(
        f"- servers: uvicorn, 1 worker (ASGI); gunicorn, {WSGI_WORKERS} gthread worker(s) × "
        f"{WSGI_THREADS} threads (WSGI, Flask, Django sync); each in its own process"
    )
    print(
        "- added = wall latency − median latency of the same request on the unmatched path, "
        f"probed every {PROBE_INTERVAL_S * 1000:g} ms during the same load; own = the "
        "middleware's added_ms; outside app = wall − time inside the app (ms)\n"
    )
    rows: list[Row] = []
    notes: list[str] = []
    for name in args.servers:
        spec = SERVERS[name]
        spec_rows, spec_notes = bench_server(spec, settings, extra_config)
        rows += spec_rows
        notes += spec_notes
    print_table(HEADERS, rows)
    print()
    for note in notes:
        print(f"- {note}")
    if DROPPED_ERRORS:
        print(f"- error events (dropped) in this process: {dict(DROPPED_ERRORS)}")
    print(f"- after: {environment_line()}")
    print(f"- {meter.line()}")
    print(f"- wall time: {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
