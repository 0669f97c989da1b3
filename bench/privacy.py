"""Privacy layer benchmark: masking cost per KB on adversarial shapes, and the end-to-end
budget on a 1 MB hostile body. Ratios measured in one run.

    python bench/privacy.py [--quick]

1. µs/KB of the masking layer (JSON spliced in place, form, text) at 1 KB, 16 KB, 256 KB and
   1 MB on shapes chosen to hurt: dense near-miss digits, '@' storms, many tiny JSON strings
   and numbers, deep-ish nesting, one huge field, percent-escapes. Linear time means the
   µs/KB of a shape stays flat across sizes: the verdict is max/min within 2x.
2. End to end (ASGI, in process): a rule with pii_masking (for the app too) and an intent on a
   hanging provider, budget B; a 1 MB hostile JSON body. The time the request takes is
   compared with a reference view on an unmatched path that sleeps B itself: the wrapped
   request must stay within reference + 5 ms. Run at 300 ms (the job cannot finish in time:
   not started) and 1500 ms (it starts on the masking pool and is awaited under the deadline).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fault_server_module, quiet_structlog  # noqa: E402

from llm_middleware.pii import PIIDetector, Vault  # noqa: E402
from llm_middleware.pii.masking import mask_form, mask_json_text, mask_text  # noqa: E402

SIZES = [1_024, 16_384, 262_144, 1_048_576]
DETECTOR = PIIDetector()


def _fill(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _json_array(item: str, size: int) -> str:
    n = max(1, (size - 2) // (len(item) + 1))
    return "[" + ",".join([item] * n) + "]"


SHAPES: dict[str, tuple[str, Callable[[int], str]]] = {
    "text: near-miss digits": ("text", lambda n: _fill("4111 1111 1111 1112 555-01 ", n)),
    "text: @ storm": ("text", lambda n: _fill("a@b@c.d@ ", n)),
    "text: dotted quads": ("text", lambda n: _fill("1.2.3.4.5.6.7.8 ", n)),
    "text: mixed PII": (
        "text",
        lambda n: _fill("mail jane.doe@example.com card 4111111111111111 ip 203.0.113.7 ", n),
    ),
    "json: tiny strings": ("json", lambda n: _json_array('"a@b.co"', n)),
    "json: big numbers": ("json", lambda n: _json_array("12345678901234567890.123", n)),
    "json: nested objects": (
        "json",
        lambda n: _json_array('{"password":{"k":[1,"x"]},"a":{"b":"c@d.io"}}', n),
    ),
    "json: one huge field": (
        "json",
        lambda n: json.dumps({"message": _fill("call 415 555 0132 or x@y.io ", n - 16)}),
    ),
    "form: many pairs": ("form", lambda n: _fill("email=a%40b.io&token=x&q=%ff%20b&", n)),
    "form: one huge value": ("form", lambda n: "q=" + _fill("jane%40example.com+%2B1+", n - 2)),
}


def mask_once(kind: str, text: str) -> None:
    vault = Vault()
    if kind == "json":
        mask_json_text(text, DETECTOR, vault)
    elif kind == "form":
        mask_form(text, DETECTOR, vault)
    else:
        mask_text(text, DETECTOR, vault)


def us_per_kb(kind: str, text: str, budget_s: float) -> float:
    runs: list[float] = []
    deadline = time.perf_counter() + budget_s
    gc.disable()
    try:
        while len(runs) < 3 or (time.perf_counter() < deadline and len(runs) < 50):
            # CPU time of this thread: the machine may be shared, linearity is about work done.
            start = time.thread_time()
            mask_once(kind, text)
            runs.append(time.thread_time() - start)
    finally:
        gc.enable()
    return min(runs) * 1e6 / (len(text.encode()) / 1024)


def layer_table(sizes: list[int]) -> float:
    print(f"{'shape':26}" + "".join(f"{s // 1024:>9} KB" for s in sizes) + "   max/min")
    worst = 0.0
    worst_ratio = 0.0
    for name, (kind, make) in SHAPES.items():
        row = [us_per_kb(kind, make(size), 0.3 if size < 300_000 else 1.0) for size in sizes]
        ratio = max(row) / min(row)
        worst = max(worst, *row)
        worst_ratio = max(worst_ratio, ratio)
        print(f"{name:26}" + "".join(f"{v:12.1f}" for v in row) + f"   {ratio:6.2f}")
    print(f"worst µs/KB: {worst:.1f}; worst growth across sizes: {worst_ratio:.2f}x "
          f"({'PASS' if worst_ratio <= 2 else 'FAIL'}: flat within 2x)")  # fmt: skip
    return worst_ratio


async def _asgi_post(app: Any, path: str, body: bytes) -> float:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    start = time.perf_counter()
    await app(scope, receive, send)
    return time.perf_counter() - start


def end_to_end(budget_ms: int, rounds: int) -> float:
    from llm_middleware import LLMMiddleware

    fault = fault_server_module()
    server = fault.FaultServer().start()
    server.default = fault.hang_before_headers()
    budget_s = budget_ms / 1000

    outcomes: list[str] = []

    async def view(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        assert len(message["body"]) > 0
        result = scope.get("state", {}).get("llm")
        if result is not None:
            masking = result.outcomes.get("pii_masking")
            outcomes.append(f"{masking}:{result.reasons.get('pii_masking', '')}".rstrip(":"))
        if scope["path"] == "/reference":
            await asyncio.sleep(budget_s)  # what the budget may cost at most
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    config = {
        "providers": [{"kind": "openai", "base_url": server.url, "model": "m"}],
        "max_body_bytes": 2_000_000,
        "rules": [{
            "path": "/tickets", "budget_ms": budget_ms,
            "interceptors": [
                {"type": "pii_masking", "mask_for": ["providers", "app"]},
                {"type": "intent", "schema": "schemas.SearchIntent", "source": "json:/message"},
            ],
        }],
    }  # fmt: skip
    app = LLMMiddleware(view, config=config)
    hostile = json.dumps({
        "message": _fill("jane.doe@example.com 4111 1111 1111 1111 a@b@c ", 600_000),
        "items": [{"n": 12345678901234567890.123, "ssn": 536221234}] * 9_000,
    }).encode()  # fmt: skip

    async def run() -> tuple[list[float], list[float]]:
        wrapped: list[float] = []
        reference: list[float] = []
        for _ in range(rounds):
            reference.append(await _asgi_post(app, "/reference", hostile))
            wrapped.append(await _asgi_post(app, "/tickets", hostile))
        return wrapped, reference

    try:
        wrapped, reference = asyncio.run(run())
    finally:
        server.stop()
    over_ms = (statistics.median(wrapped) - statistics.median(reference)) * 1000
    worst_ms = (max(wrapped) - statistics.median(reference)) * 1000
    print(f"end to end, {len(hostile) / 1e6:.2f} MB hostile JSON, budget {budget_ms} ms, "
          f"hanging provider, {rounds} rounds")  # fmt: skip
    print(
        f"  reference (view sleeps the budget): median {statistics.median(reference) * 1000:.1f} ms"
    )
    print(f"  masking + intent rule:              median {statistics.median(wrapped)*1000:.1f} ms, "
          f"max {max(wrapped)*1000:.1f} ms")  # fmt: skip
    print(f"  masking outcomes: {dict(Counter(outcomes))}")
    print(f"  added over reference: median {over_ms:+.1f} ms, worst {worst_ms:+.1f} ms "
          f"({'PASS' if over_ms <= 5 else 'FAIL'}: within +5 ms)")  # fmt: skip
    return over_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="sizes up to 256 KB, 3 rounds")
    parser.add_argument("--budget-ms", type=int, default=300)
    parser.add_argument("--long-budget-ms", type=int, default=1500)
    args = parser.parse_args()
    quiet_structlog()
    sizes = SIZES[:3] if args.quick else SIZES
    layer_table(sizes)
    print()
    # The short budget: a 1 MB masking job cannot finish, so it is not started. The long one:
    # it starts on the pool, and either finishes or is abandoned at the deadline.
    for budget_ms in (args.budget_ms, args.long_budget_ms):
        end_to_end(budget_ms, 3 if args.quick else 5)
        print()


if __name__ == "__main__":
    main()
