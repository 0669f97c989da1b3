"""Soak: minutes of sustained load against a misbehaving provider (issue 9), plus CPU per call.

Per server (``--servers``, default ``uvicorn,gunicorn``: uvicorn + Starlette, and gunicorn with
ONE ``gthread`` worker of 64 threads + plain WSGI), with the middleware's one intent rule
(budget 200 ms, ``max_in_flight`` 128, ``max_retries`` 1) and the scripted fault server in a
process of its own:

1. ``cpu``: the provider answers at once; sequential requests with distinct texts, 6 rounds of
   300 on the matched path and 300 on the unmatched one, interleaved: the server's CPU time per
   request, matched minus unmatched (median of the rounds) = **CPU ms per LLM call** (target
   <= 0.8 ms, issue 14); and the same split per thread role (the server's main thread, its
   request threads, the middleware's background loop thread, gunicorn's master).
2. ``reference``: the soak's load (``--concurrency`` keep-alive clients, distinct texts) on an
   unmatched view that sleeps the budget, for a sixth of the soak (at least 15 s): what an ideal
   middleware would cost under the same arrivals.
3. ``soak``: ``--minutes`` of that load on the matched path while the provider cycles
   fast x3 / hang before headers / HTTP 500 / hang after headers. Every 5 s: the server's RSS,
   open fds, threads and ESTABLISHED connections to the provider.
4. After 5 s idle: provider connections still open; then 12 probes with fresh texts, one at a
   time (the provider keeps cycling: half of its answers are good).

Printed: requests, req/s, latency p50/p99/max against the reference's, outcome counts, the
samples, and verdicts for the targets: p99 <= reference p99 + 5 ms, provider connections after
idle <= 64, RSS and fds flat (+-10 %) over the last two thirds, probes answered at the
provider's own rate.

Usage: ``python bench/soak.py [--minutes 3] [--servers uvicorn,gunicorn] [--concurrency 50]
[--no-breaker] [--cpu-only] [--cpu-rounds 6]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections import Counter
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    LoadResult,
    Server,
    _process_tree,
    closed_loop,
    environment_line,
    get,
    gunicorn_server,
    percentile,
    source_line,
    uvicorn_server,
    verdict,
)
from _fault import FaultProcess, fault_process

BUDGET_MS = 200
SAMPLE_EVERY_S = 5.0
PROBES = 12
CPU_REQUESTS = 300
CPU_ROUNDS = 6  # matched and unmatched interleaved (rotating order); median of the differences


BREAKER_FAILURES = 5  # the default; --no-breaker sets it out of reach


def server_for(kind: str, provider: str) -> AbstractContextManager[Server]:
    extra = {
        "max_in_flight": 128,
        "breaker_failures": BREAKER_FAILURES,
        "providers": [{"kind": "openai", "base_url": provider, "model": "fake", "max_retries": 1}],
    }
    env = {
        "BENCH_PROVIDER_URL": provider,
        "BENCH_BUDGET_MS": str(BUDGET_MS),
        "BENCH_EXTRA_CONFIG": json.dumps(extra),
    }
    if kind == "uvicorn":
        return uvicorn_server("asgi_wrapped", env)
    return gunicorn_server("wsgi_wrapped", env, worker_class="gthread", threads=64)


# -- sampling the server -------------------------------------------------------------------------


def _workers(server: Server) -> list[int]:
    return _process_tree(server.pid)


def _status_field(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def provider_connections(provider_url: str) -> int:
    """ESTABLISHED TCP connections to the provider's port (only the server connects to it)."""
    port = int(provider_url.rsplit(":", 1)[1].split("/", 1)[0])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with _ignore_oserror():
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                remote, state = fields[2], fields[3]
                if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


class _ignore_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *_: object) -> bool:
        return isinstance(kind, type) and issubclass(kind, OSError)


def sample(server: Server, provider_url: str) -> dict[str, float]:
    pids = _workers(server)
    return {
        "rss_mb": sum(_status_field(p, "VmRSS") for p in pids) / 1024,
        "fds": sum(_fds(p) for p in pids),
        "threads": sum(_status_field(p, "Threads") for p in pids),
        "provider_conns": provider_connections(provider_url),
    }


# -- phases --------------------------------------------------------------------------------------


def _thread_cpu(server: Server) -> dict[tuple[int, int], float]:
    """CPU seconds (user + system) so far of every live thread of the server's processes,
    keyed by (process, thread) id (Linux ``/proc``; threads that ended are in no key)."""
    tick = os.sysconf("SC_CLK_TCK")
    seen: dict[tuple[int, int], float] = {}
    for pid in _workers(server):
        with _ignore_oserror():
            for tid in os.listdir(f"/proc/{pid}/task"):
                with _ignore_oserror():
                    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                    fields = stat.rsplit(")", 1)[1].split()
                    seen[(pid, int(tid))] = (int(fields[11]) + int(fields[12])) / tick
    return seen


@dataclass
class CpuSplit:
    """Server CPU ms per request, matched and unmatched, per round; and per thread role."""

    matched: list[float] = field(default_factory=list)
    unmatched: list[float] = field(default_factory=list)
    roles: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> path -> ms/req

    @property
    def per_call(self) -> list[float]:
        return [m - u for m, u in zip(self.matched, self.unmatched, strict=True)]


def _role(server: Server, pid: int, tid: int, matched: float, unmatched: float) -> str:
    if pid == server.pid and len(_workers(server)) > 1:
        return "master process"
    if tid == pid:
        return "main thread (server loop)"
    # Only LLM calls run on the middleware's background loop: an unmatched request never
    # gives it CPU; the server's request threads serve both paths.
    if unmatched == 0 and matched > 0:
        return "middleware loop thread"
    return "request threads"


def cpu_per_call(server: Server, provider: FaultProcess) -> CpuSplit:
    """Server CPU ms per request, matched (instant provider) and unmatched, ``CPU_ROUNDS``
    rounds of ``CPU_REQUESTS`` each, the two paths interleaved in rotating order; and where
    it went, per thread role (summed over the rounds)."""
    provider.set_default("fast")
    for i in range(20):
        get(server.port, f"/search?q=warm-{i}")
        get(server.port, f"/plain?q=warm-{i}")
    split = CpuSplit()
    per_thread: dict[str, Counter[tuple[int, int]]] = {"matched": Counter(), "unmatched": Counter()}
    for r in range(CPU_ROUNDS):
        for name in ("matched", "unmatched") if r % 2 == 0 else ("unmatched", "matched"):
            path = "/search?q=cpu-{r}-{i}" if name == "matched" else "/plain?q=cpu-{r}-{i}"
            threads, before = _thread_cpu(server), server.cpu_seconds()
            for i in range(CPU_REQUESTS):
                get(server.port, path.format(r=r, i=i))
            ms = (server.cpu_seconds() - before) / CPU_REQUESTS * 1000
            (split.matched if name == "matched" else split.unmatched).append(ms)
            for key, seconds in _thread_cpu(server).items():
                per_thread[name][key] += seconds - threads.get(key, 0.0)
    total = CPU_ROUNDS * CPU_REQUESTS
    for key in set(per_thread["matched"]) | set(per_thread["unmatched"]):
        m, u = per_thread["matched"][key], per_thread["unmatched"][key]
        role = split.roles.setdefault(_role(server, *key, m, u), {"matched": 0.0, "unmatched": 0.0})
        role["matched"] += m / total * 1000
        role["unmatched"] += u / total * 1000
    return split


async def load(
    server: Server, path: str, seconds: float, concurrency: int, samples: list[dict[str, float]],
    provider_url: str,
) -> LoadResult:  # fmt: skip
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            samples.append(sample(server, provider_url))
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)

    task = asyncio.create_task(sampler())
    try:
        return await closed_loop(
            server.port,
            lambda i: f"{path}q=soak-{time.monotonic_ns()}-{i}",
            concurrency=concurrency,
            max_requests=10**9,
            max_seconds=seconds,
            keep=True,
            stagger_s=BUDGET_MS / 1000,
        )
    finally:
        stop.set()
        await task


def latencies_ms(result: LoadResult) -> list[float]:
    return [r.latency_s * 1000 for r in result.responses]


def outcomes(result: LoadResult) -> Counter[str]:
    counts: Counter[str] = Counter(
        r.headers.get("x-llm-outcome", "?").split(";")[0] for r in result.responses
    )
    counts.update({f"error:{k}": v for k, v in result.errors.items()})
    return counts


def flat(values: list[float]) -> tuple[bool, str]:
    """Drift over the last two thirds: the median of the last third against the middle
    third's (a leak grows; a momentary burst of connections is not one)."""
    third = len(values) // 3
    middle, last = values[third : 2 * third], values[2 * third :]
    if not middle or not last or statistics.median(middle) <= 0:
        return False, "too few samples"
    before, after = statistics.median(middle), statistics.median(last)
    drift = (after - before) / before
    return abs(drift) <= 0.10, (
        f"median {before:.0f} -> {after:.0f} ({drift:+.0%}; range {min(middle + last):.0f}.."
        f"{max(middle + last):.0f})"
    )


def soak_one(kind: str, minutes: float, concurrency: int, cpu_only: bool = False) -> None:
    print(f"\n== {kind} ==")
    with fault_process() as provider, server_for(kind, provider.url) as server:
        cpu = cpu_per_call(server, provider)
        per_call = statistics.median(cpu.per_call)
        print(
            f"cpu: server CPU per request, instant provider, sequential, {CPU_ROUNDS} interleaved"
            f" rounds of {CPU_REQUESTS}: matched {statistics.median(cpu.matched):.3f} ms, "
            f"unmatched {statistics.median(cpu.unmatched):.3f} ms -> CPU per LLM call "
            f"{per_call:.3f} ms (rounds {min(cpu.per_call):.3f}-{max(cpu.per_call):.3f}) "
            f"(target <= 0.8) {verdict(per_call <= 0.8)}"
        )
        for role, ms in sorted(cpu.roles.items()):
            print(
                f"  {role}: matched {ms['matched']:.3f}, unmatched {ms['unmatched']:.3f} "
                f"-> {ms['matched'] - ms['unmatched']:+.3f} ms/request"
            )
        if cpu_only:
            return
        ref_seconds = max(15.0, minutes * 60 / 6)
        ref_samples: list[dict[str, float]] = []
        reference = asyncio.run(
            load(server, f"/sleep?ms={BUDGET_MS}&", ref_seconds, concurrency, ref_samples,
                 provider.url)
        )  # fmt: skip
        provider.set_default("mixed")
        samples: list[dict[str, float]] = []
        soak = asyncio.run(
            load(server, "/search?", minutes * 60, concurrency, samples, provider.url)
        )
        time.sleep(5.0)
        idle_conns = provider_connections(provider.url)
        # Probes, one at a time. An open breaker (the provider failed many calls in a row)
        # lets a trial through after breaker_reset_s (30 s): circuit_open answers are counted
        # apart, and probing goes on until PROBES calls reached the provider (or 45 s).
        probes: Counter[str] = Counter()
        probe_end = time.monotonic() + 45
        reached = 0
        while reached < PROBES and time.monotonic() < probe_end:
            started = time.perf_counter()
            status, headers, _ = get(server.port, f"/search?q=probe-{time.monotonic_ns()}")
            took = (time.perf_counter() - started) * 1000
            outcome = headers.get("x-llm-outcome", "?").split(";")[0] if status == 200 else status
            if outcome == "intent=circuit_open":
                probes[str(outcome)] += 1
                time.sleep(0.5)
                continue
            reached += 1
            probes[f"{outcome}{' (>budget+50ms)' if took > BUDGET_MS + 50 else ''}"] += 1
        after = sample(server, provider.url)

    ref_ms, soak_ms = latencies_ms(reference), latencies_ms(soak)
    ref_p99, p99 = percentile(ref_ms, 99), percentile(soak_ms, 99)
    print(
        f"reference (view sleeps {BUDGET_MS} ms, same load, {ref_seconds:.0f} s): "
        f"{reference.completed} requests, {reference.rps:.0f} req/s, p50 "
        f"{percentile(ref_ms, 50):.1f} p99 {ref_p99:.1f} max {max(ref_ms, default=0):.1f} ms"
    )
    print(
        f"soak ({minutes:g} min, mixed-fault provider, {concurrency} clients): {soak.completed} "
        f"requests, {soak.rps:.0f} req/s, p50 {percentile(soak_ms, 50):.1f} p99 {p99:.1f} max "
        f"{max(soak_ms, default=0):.1f} ms; p99 - reference p99 = {p99 - ref_p99:+.1f} ms "
        f"(target <= +5) {verdict(p99 - ref_p99 <= 5)}"
    )
    print(f"outcomes: {dict(outcomes(soak).most_common())}")
    print("samples (every 5 s): rss_mb / fds / threads / provider_conns")
    print("  " + "  ".join(
        f"{s['rss_mb']:.0f}/{s['fds']:.0f}/{s['threads']:.0f}/{s['provider_conns']:.0f}"
        for s in samples
    ))  # fmt: skip
    rss_ok, rss_note = flat([s["rss_mb"] for s in samples])
    fds_ok, fds_note = flat([s["fds"] for s in samples])
    print(f"RSS over the last two thirds: {rss_note} MB {verdict(rss_ok)}")
    print(f"fds over the last two thirds: {fds_note} {verdict(fds_ok)}")
    print(
        f"provider connections after 5 s idle: {idle_conns} (target <= 64) "
        f"{verdict(idle_conns <= 64)}; after the probes: {after}"
    )
    ok = probes.get("intent=ok", 0)
    print(
        f"probes ({PROBES}, fresh texts, provider still cycling: 3 of 6 answers good): "
        f"{dict(probes)} {verdict(ok >= PROBES // 4)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--servers", default="uvicorn,gunicorn")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--no-breaker",
        action="store_true",
        help="breaker out of reach: every request reaches the faulty provider (pool's worst case)",
    )
    parser.add_argument("--cpu-only", action="store_true", help="only the cpu row, per server")
    parser.add_argument(
        "--cpu-rounds", type=int, default=6, help="interleaved rounds of the cpu row"
    )
    args = parser.parse_args()
    if args.no_breaker:
        global BREAKER_FAILURES
        BREAKER_FAILURES = 1_000_000_000
        print("breaker: off (breaker_failures out of reach)")
    global CPU_ROUNDS
    CPU_ROUNDS = max(1, args.cpu_rounds)
    print(environment_line())
    print(source_line())
    for kind in args.servers.split(","):
        soak_one(kind, args.minutes, args.concurrency, args.cpu_only)


if __name__ == "__main__":
    main()
