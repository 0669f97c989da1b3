"""The real local model through the middleware: start-up time, per-request latency and the share
of schema-valid answers on 20 shop queries (SmolLM2-135M via llama.cpp on loopback).

    python bench/local_model.py [--budget-ms 8000]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time

import httpx
import uvicorn

from llm_middleware.demo import local_llm_server

QUERIES = [
    "red shoes under $100", "a yellow rain jacket", "black trail running shoes",
    "cheap red hat", "white sneakers below 70 dollars", "winter jacket", "blue hat",
    "shoes for running, max 150", "something yellow", "black shoes under 130",
    "a red beanie", "court shoes in white", "jacket under 200", "hats", "red shoes",
    "sprint shoes", "rain jacket yellow under 160", "any shoes under 90", "a black hat",
    "red running shoes cheaper than 100",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget-ms", type=int, default=8000)
    args = parser.parse_args()
    started = time.monotonic()
    with local_llm_server() as url:
        ready_s = time.monotonic() - started
        os.environ.update(
            LLM_DEMO_PROVIDER_URL=url, LLM_DEMO_DIALECT="json_object",
            LLM_DEMO_BUDGET_MS=str(args.budget_ms),
        )  # fmt: skip
        from llm_middleware.demo import create_app

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        rows = []
        with httpx.Client(base_url=base, timeout=60) as client:
            for q in QUERIES:
                t0 = time.monotonic()
                data = client.get("/search", params={"q": q}).json()
                rows.append(((time.monotonic() - t0) * 1000, data["outcomes"]["intent"], data))
        server.should_exit = True
        thread.join(timeout=10)
    latencies = [ms for ms, _, _ in rows]
    outcomes = [o for _, o, _ in rows]
    print(f"model server ready in {ready_s:.1f} s (budget {args.budget_ms} ms, 20 queries)")
    print("| metric | value |\n|---|---|")
    print(f"| latency p50 | {statistics.median(latencies):.0f} ms |")
    print(f"| latency p90 | {statistics.quantiles(latencies, n=10)[-1]:.0f} ms |")
    print(f"| latency max | {max(latencies):.0f} ms |")
    for name in sorted(set(outcomes)):
        print(f"| outcome {name} | {outcomes.count(name)}/20 |")
    print(f"| schema-valid rate | {outcomes.count('ok') / len(outcomes):.0%} |")
    for ms, outcome, data in rows[:5]:
        print(f"  {data['q']!r}: {outcome} {data['intent']} ({ms:.0f} ms)")


if __name__ == "__main__":
    main()
