"""The guarantees on every adapter, over real sockets: uvicorn (ASGI, Django async) and
werkzeug's threaded server (WSGI, Flask, Django sync) on loopback, against the fault server."""

from __future__ import annotations

import gc
import hashlib
import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fault_server import (
    FaultServer,
    close_connection,
    drip,
    hang_after_headers,
    hang_before_headers,
    huge_body,
    invalid_json,
    not_json_content,
    rate_limited,
    refused_url,
    reply,
    status,
)
from servers import GUARANTEE_BUDGET_MS, SchedulerDelay, Serve, own_slack_ms

BUDGET_MS = GUARANTEE_BUDGET_MS
# The middleware's own measure of what it added must stay within budget + 5 ms (ASGI) or
# + 10 ms (sync adapters, which wait on the background loop); the client's wall clock also
# pays for the loopback round trip and the test machine's noise.
WALL_SLACK_MS = 250

GOOD = {"category": "shoes", "color": "red", "max_price": 100}


def post_json(base: str, body: bytes, path: str = "/json-echo") -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(
        base + path, content=body, headers={"content-type": "application/json"}, timeout=10
    )
    return response, (time.monotonic() - started) * 1000


def test_intent_extracted_and_visible_to_view(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.script(reply(GOOD))
    with serve() as base:
        response = httpx.get(base + "/search", params={"q": "red shoes under $100"})
    data = response.json()
    assert response.status_code == 200
    assert data["intent"] == {"category": "shoes", "color": "red", "max_price": 100.0}
    assert data["outcomes"] == {"intent": "ok"}
    sent = fault_server.requests[0].json
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"]["title"] == "SearchIntent"
    user = sent["messages"][-1]["content"]
    assert "red shoes under $100" in user and "<<<INPUT" in user


def test_identical_requests_are_served_from_cache(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.script(reply(GOOD))
    with serve() as base:
        first = httpx.get(base + "/search", params={"q": "red shoes"}).json()
        second = httpx.get(base + "/search", params={"q": "red shoes"}).json()
    assert first["outcomes"] == {"intent": "ok"}
    assert second["outcomes"] == {"intent": "cached"}
    assert second["intent"] == first["intent"]
    assert len(fault_server.requests) == 1


FAULTS = [
    pytest.param([hang_before_headers()], "timeout", id="hang-before-headers"),
    pytest.param([hang_after_headers()], "timeout", id="hang-after-headers"),
    pytest.param([drip(b'{"choices": []}' * 20, interval=0.05)], "timeout", id="slow-drip"),
    pytest.param([rate_limited(retry_after=30)], "error", id="429-retry-after-too-long"),
    pytest.param([status(500), status(503)], "error", id="500-then-503"),
    pytest.param([invalid_json()], "error", id="invalid-json-envelope"),
    pytest.param([not_json_content(), not_json_content()], "invalid", id="content-not-json"),
    pytest.param(
        [reply({"max_price": "lots"}), reply({"max_price": "lots"})], "invalid", id="schema-invalid"
    ),
    pytest.param([huge_body(5_000_000)], "error", id="huge-body"),
    pytest.param([close_connection(), close_connection()], "error", id="connection-closed"),
]


@pytest.mark.parametrize(("behaviours", "outcome"), FAULTS)
def test_provider_fault_passes_request_through_within_budget(
    serve: Serve, fault_server: FaultServer, adapter: str, behaviours: list[Any], outcome: str
) -> None:
    fault_server.script(*behaviours)
    body = json.dumps({"q": "red shoes", "keep": "exact bytes ✓"}).encode()
    with serve() as base, SchedulerDelay() as delay:
        _, bare_ms = post_json(base, body, "/echo")  # same app, unmatched path: the baseline
        response, wall_ms = post_json(base, body)
    data = response.json()
    assert response.status_code == 200
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert data["content_length"] == str(len(body))
    assert data["outcomes"] == {"intent": outcome}
    assert data["intent"] is None
    assert data["added_ms"] <= BUDGET_MS + own_slack_ms(adapter, delay)
    assert wall_ms - bare_ms <= BUDGET_MS + WALL_SLACK_MS + delay.ms


def test_refused_connection_passes_through(serve: Serve, adapter: str) -> None:
    body = b'{"q": "red shoes"}'
    with serve(provider_url=refused_url()) as base, SchedulerDelay() as delay:
        response, _ = post_json(base, body)
    data = response.json()
    assert data["outcomes"] == {"intent": "error"}
    assert data["reasons"]["intent"].startswith("transport_")
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert data["added_ms"] <= BUDGET_MS + own_slack_ms(adapter, delay)


def test_retry_after_is_honoured_when_it_fits(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.script(rate_limited(retry_after=0.1), reply(GOOD))
    # A budget the wait fits in on a busy machine too (with 300 ms, a first attempt slowed
    # past 200 ms left no room for it and the answer was the 429).
    with serve(budget_ms=3000) as base:
        data = httpx.get(base + "/search", params={"q": "red shoes"}).json()
    assert data["outcomes"] == {"intent": "ok"}
    first, second = fault_server.requests
    assert second.at - first.at >= 0.1


def test_corrective_retry_fixes_schema_invalid_output(
    serve: Serve, fault_server: FaultServer
) -> None:
    fault_server.script(reply({"max_price": "lots"}), reply(GOOD))
    with serve() as base:
        data = httpx.get(base + "/search", params={"q": "red shoes"}).json()
    assert data["outcomes"] == {"intent": "ok"}
    correction = fault_server.requests[1].json["messages"]
    assert correction[-2]["role"] == "assistant"
    assert "max_price" in correction[-1]["content"]


BAD_INPUTS = [
    pytest.param("/json-echo", b'{"q": "red', "application/json", "body_not_json", id="bad-json"),
    pytest.param(
        "/body-echo", b"\xff\xfe\xfa red shoes", "text/plain", "undecodable", id="non-utf8"
    ),
    pytest.param("/json-echo", b"", "application/json", "body_not_json", id="empty-body"),
    pytest.param(
        "/json-echo", b'{"other": 1}', "application/json", "source_missing", id="no-field"
    ),
    pytest.param("/json-echo", b'{"q": "   "}', "application/json", "source_missing", id="blank"),
    pytest.param(
        "/json-echo", b'{"q": "x"}', "text/plain", "unsupported_content_type", id="wrong-type"
    ),
    pytest.param(
        "/form-echo",
        b"q=%ff%fe",
        "application/x-www-form-urlencoded",
        "undecodable",
        id="form-undecodable-escape",
    ),
]


@pytest.mark.parametrize(("path", "body", "content_type", "reason"), BAD_INPUTS)
def test_bad_input_passes_through_with_a_reason(
    serve: Serve, fault_server: FaultServer, path: str, body: bytes, content_type: str, reason: str
) -> None:
    with serve() as base:
        response = httpx.post(base + path, content=body, headers={"content-type": content_type})
    data = response.json()
    assert response.status_code == 200
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert data["outcomes"] == {"intent": "skipped"}
    assert data["reasons"] == {"intent": reason}
    assert fault_server.requests == []


def test_body_over_cap_is_passed_through_unread(serve: Serve, fault_server: FaultServer) -> None:
    body = json.dumps({"q": "red shoes", "pad": "x" * 5000}).encode()
    with serve(max_body_bytes=1000) as base:
        response, _ = post_json(base, body)
    data = response.json()
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert data["reasons"] == {"intent": "body_too_large"}
    assert fault_server.requests == []


def test_multipart_upload_is_passed_through_unread(serve: Serve, fault_server: FaultServer) -> None:
    with serve() as base:
        response = httpx.post(
            base + "/form-echo", data={"q": "red shoes"}, files={"f": ("a.bin", b"\x00\x01" * 500)}
        )
    data = response.json()
    assert int(data["content_length"]) == data["body_len"] > 1000
    assert data["reasons"] == {"intent": "unsupported_content_type"}
    assert fault_server.requests == []


def test_chunked_upload_is_passed_through_unread(serve: Serve, fault_server: FaultServer) -> None:
    chunks = [b'{"q": "red shoes", ', b'"pad": "', b"y" * 10_000, b'"}']

    def stream() -> Iterator[bytes]:
        yield from chunks

    headers = {"content-type": "application/json"}
    with serve() as base:
        bare = httpx.post(base + "/echo", content=stream(), headers=headers).json()
        data = httpx.post(base + "/json-echo", content=stream(), headers=headers).json()
    # Exactly what the same app gets without the middleware (Django's WSGI request, for one,
    # does not read a body with no Content-Length).
    assert (data["body_sha256"], data["body_len"]) == (bare["body_sha256"], bare["body_len"])
    assert data["content_length"] is None
    assert data["reasons"] == {"intent": "streaming_body"}
    assert fault_server.requests == []


def test_form_and_header_and_body_sources(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.default = reply(GOOD)
    with serve() as base:
        form = httpx.post(base + "/form-echo", data={"q": "red shoes", "other": "1"}).json()
        header = httpx.get(base + "/header-echo", headers={"x-query": "blue hats"}).json()
        text = httpx.post(base + "/body-echo", content=b"green socks").json()
    assert form["outcomes"] == header["outcomes"] == text["outcomes"] == {"intent": "ok"}
    inputs = [r.json["messages"][-1]["content"] for r in fault_server.requests]
    assert "red shoes" in inputs[0] and "blue hats" in inputs[1] and "green socks" in inputs[2]


def test_unmatched_paths_and_methods_are_untouched(serve: Serve, fault_server: FaultServer) -> None:
    with serve() as base:
        plain = httpx.get(base + "/plain")
        wrong_method = httpx.get(base + "/json-echo").json()
    assert plain.text == "plain"
    assert wrong_method["outcomes"] is None  # no rule for GET /json-echo: no state at all
    assert fault_server.requests == []


def test_llm_json_schema_dialects(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.default = reply(GOOD)
    providers = [{"kind": "openai", "base_url": fault_server.url, "model": "local",
                  "dialect": "json_object"}]  # fmt: skip
    with serve(providers=providers) as base:
        httpx.get(base + "/search", params={"q": "red shoes"})
    fmt = fault_server.requests[0].json["response_format"]
    assert fmt["type"] == "json_object"
    assert fmt["schema"]["title"] == "SearchIntent"


# -- any async backend; nothing left to the GC -------------------------------------------------

# Starlette's TestClient warns that it wants `httpx2`; the plain httpx it runs on is fine here.
TESTCLIENT = pytest.mark.filterwarnings(
    "ignore:Using `httpx` with `starlette.testclient`:UserWarning"
)

PII_BODIES = [
    {"message": "red shoes for jane.doe@example.com"},
    {"message": "blue hats for jane.doe@example.com", "pad": "and more " * 5000},  # off-loop
]


def _pii_run(fault_server: FaultServer, backend: str) -> list[dict[str, Any]]:
    from starlette.testclient import TestClient

    from apps import build_starlette, make_config

    app = build_starlette(make_config(fault_server.url, budget_ms=BUDGET_MS, cache_size=0))
    with TestClient(app, backend=backend) as client:
        return [client.post("/pii-echo", json=body).json() for body in PII_BODIES]


@TESTCLIENT
@pytest.mark.parametrize("provider", ["answers", "hangs"])
def test_trio_runs_intent_and_masking_as_asyncio_does(
    fault_server: FaultServer, provider: str
) -> None:
    # Starlette's TestClient on trio (hypercorn's trio worker alike): the same outcomes as on
    # asyncio, and masking never fails open (the raw address never reaches the app).
    fault_server.default = reply(GOOD) if provider == "answers" else hang_before_headers()
    with SchedulerDelay() as delay:
        runs = {backend: _pii_run(fault_server, backend) for backend in ("asyncio", "trio")}
    expected = "ok" if provider == "answers" else "timeout"
    for backend, results in runs.items():
        for data in results:
            assert data["outcomes"] == {"pii_masking": "ok", "intent": expected}, (backend, data)
            assert "jane.doe@example.com" not in data["body"], backend
            assert data["added_ms"] <= BUDGET_MS + own_slack_ms("asgi", delay), backend
    assert [d["body_sha256"] for d in runs["trio"]] == [d["body_sha256"] for d in runs["asyncio"]]
    assert all(b"jane.doe" not in r.body for r in fault_server.requests)


@TESTCLIENT
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_host_loop_that_ends_mid_call_leaves_no_socket(
    fault_server: FaultServer, backend: str
) -> None:
    # A TestClient used without `with`: each request runs on a loop that ends with it, while
    # the provider still hangs. Calls run on the background loop, so no socket of ours is
    # left on a dead loop for the GC (filterwarnings=error turns a ResourceWarning into a
    # failure).
    from starlette.testclient import TestClient

    from apps import build_starlette, make_config

    fault_server.default = hang_after_headers()
    app = build_starlette(make_config(fault_server.url, budget_ms=50, breaker_failures=10_000))
    client = TestClient(app, backend=backend)
    outcomes = [client.get("/search", params={"q": f"q{i}"}).json()["outcomes"] for i in range(6)]
    del client, app
    gc.collect()
    assert outcomes == [{"intent": "timeout"}] * 6


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_a_hanging_provider_costs_at_most_breaker_failures_budgets(
    serve: Serve, fault_server: FaultServer, adapter: str
) -> None:
    fault_server.default = hang_before_headers()
    with serve(breaker_failures=3, breaker_reset_s=60) as base:
        reference, _ = post_json(base, b'{"q": "x"}', "/echo")  # unmatched: the floor
        results = [
            httpx.get(base + "/search", params={"q": f"q{i}"}, timeout=10).json() for i in range(8)
        ]
    outcomes = [r["outcomes"]["intent"] for r in results]
    assert outcomes == ["timeout"] * 3 + ["circuit_open"] * 5, outcomes
    # The open breaker answers at once: a small share of the budget, not a wait on it (the
    # median: one request stalled by a busy machine is not the breaker's doing).
    assert statistics.median(r["added_ms"] for r in results[3:]) < BUDGET_MS / 10, results
