"""Response enrichment on every adapter over real sockets: added to complete JSON responses;
everything else passes byte for byte; the budget covers both sides together."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from fault_server import FaultServer, hang_before_headers, reply
from servers import GUARANTEE_BUDGET_MS, SchedulerDelay, Serve, own_slack_ms

GOOD = {"summary": "Llamas are camelids.", "tags": ["llama"]}
IGNORED_HEADERS = {"date", "server", "connection", "keep-alive"}


def fetch(
    base: str, path: str, kind: str, method: str = "GET", **params: str
) -> tuple[int, dict[str, str], bytes]:
    query = {"kind": kind, **params}
    with (
        httpx.Client() as client,
        client.stream(method, base + path, params=query, timeout=10) as response,
    ):
        body = b"".join(response.iter_raw())  # as sent: no gzip decoding
        headers = {k.lower(): v for k, v in response.headers.items()
                   if k.lower() not in IGNORED_HEADERS}  # fmt: skip
        return response.status_code, headers, body


def test_enrichment_added_to_json_response(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.default = reply(GOOD)
    with serve() as base:
        status, headers, body = fetch(base, "/article", "json")
        bare_status, bare_headers, bare_body = fetch(base, "/article-bare", "json")
    doc = json.loads(body)
    assert doc.pop("summary") == GOOD
    assert doc == json.loads(bare_body)
    assert status == bare_status == 200
    assert headers["content-length"] == str(len(body))
    assert headers["x-app"] == "kept" and headers["content-type"] == bare_headers["content-type"]
    sent = fault_server.requests[0].json["messages"][-1]["content"]
    assert "Llamas are domesticated" in sent


def test_strong_etag_is_weakened_when_the_body_changes(
    serve: Serve, fault_server: FaultServer
) -> None:
    fault_server.default = reply(GOOD)
    with serve() as base:
        _, headers, body = fetch(base, "/article", "etag")
    assert headers["etag"] == 'W/"v1"'
    assert json.loads(body)["summary"] == GOOD


def test_enrichment_into_a_header_leaves_the_body_alone(
    serve: Serve, fault_server: FaultServer
) -> None:
    fault_server.default = reply(GOOD)
    with serve() as base:
        _, headers, body = fetch(base, "/article-header", "json")
        _, _, bare_body = fetch(base, "/article-bare", "json")
    assert body == bare_body
    assert json.loads(headers["x-llm-summary"]) == GOOD


@pytest.mark.parametrize("kind", ["stream", "sse", "gzip", "status204", "status500", "text", "big"])
def test_ineligible_responses_pass_byte_for_byte(
    serve: Serve, fault_server: FaultServer, kind: str
) -> None:
    fault_server.default = reply(GOOD)
    with serve() as base:
        got = fetch(base, "/article", kind)
        bare = fetch(base, "/article-bare", kind)
    assert got == bare
    assert fault_server.requests == []


def test_problem_json_is_enriched(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.default = reply(GOOD)
    with serve() as base:
        _, headers, body = fetch(base, "/article", "problem")
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["summary"] == GOOD


def test_head_request_passes_through(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.default = reply(GOOD)
    with serve() as base:
        got = fetch(base, "/article", "json", method="HEAD")
        bare = fetch(base, "/article-bare", "json", method="HEAD")
    assert got == bare
    assert fault_server.requests == []


def test_hanging_provider_leaves_the_response_as_it_was(
    serve: Serve, fault_server: FaultServer
) -> None:
    fault_server.default = hang_before_headers()
    with serve() as base, SchedulerDelay() as delay:
        started = time.monotonic()
        got = fetch(base, "/article", "json")
        wall_ms = (time.monotonic() - started) * 1000
        bare = fetch(base, "/article-bare", "json")
    assert got == bare
    # Loopback round trip and noise (250 ms), plus the scheduler delay measured meanwhile.
    assert wall_ms <= GUARANTEE_BUDGET_MS + 250 + delay.ms


def test_one_budget_for_request_and_response_side(
    serve: Serve, fault_server: FaultServer, adapter: str
) -> None:
    fault_server.default = hang_before_headers()
    with serve() as base, capture_logs() as logs, SchedulerDelay() as delay:
        got = fetch(base, "/article-both", "json", q="red shoes")
        bare = fetch(base, "/article-bare", "json")
    assert got[2] == bare[2]
    events = [e for e in logs if e.get("event") == "llm_middleware.request"]
    assert len(events) == 1
    event: dict[str, Any] = events[0]
    assert event["outcomes"] == {"intent": "timeout", "enrichment": "timeout"}
    assert event["reasons"]["enrichment"] in {"budget_exhausted", "deadline"}
    # Nominal slack plus the scheduler delay measured while the request ran.
    assert event["added_ms"] <= GUARANTEE_BUDGET_MS + own_slack_ms(adapter, delay)


def test_stale_while_revalidate_fills_the_cache_for_the_next_response(
    serve: Serve, fault_server: FaultServer
) -> None:
    # The model answers after the budget: the first response goes out as it was, the call
    # finishes in the background, and the next identical response is enriched at once.
    fault_server.script(reply(GOOD, delay=GUARANTEE_BUDGET_MS / 1000 + 0.2))
    with serve() as base:
        first = fetch(base, "/article-swr", "json")
        deadline = time.monotonic() + 3
        while len(fault_server.requests) < 1 or time.monotonic() < deadline:
            second = fetch(base, "/article-swr", "json")
            if "summary" in json.loads(second[2]):
                break
            time.sleep(0.05)
        bare = fetch(base, "/article-bare", "json")
    assert first[2] == bare[2]
    assert json.loads(second[2])["summary"] == GOOD
    assert len(fault_server.requests) == 1  # one upstream call served both


def test_header_enrichment_over_the_cap_is_skipped(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.default = reply({"summary": "x" * 600, "tags": []})
    from apps import make_config

    rules = make_config(fault_server.url)["rules"]
    for rule in rules:
        if rule["path"] == "/article-header":
            rule["interceptors"][0]["max_header_bytes"] = 512
    with capture_logs() as logs, serve(rules=rules) as base:
        status, headers, body = fetch(base, "/article-header", "json")
        _, _, bare_body = fetch(base, "/article-bare", "json")
    assert status == 200 and "x-llm-summary" not in headers and body == bare_body
    requests = [e for e in logs if e.get("event") == "llm_middleware.request"]
    assert any(e.get("reasons", {}).get("enrichment") == "header_too_large" for e in requests), (
        requests
    )
