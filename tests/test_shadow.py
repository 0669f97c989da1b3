"""Shadow mode: both sides run, nothing is applied, and the opt-in comparison record (what the
LLM produced next to what the request carried) never holds an unmasked value."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs

from apps import ARTICLE_BODY, build_starlette, build_wsgi
from fault_server import FaultServer, reply
from servers import serve_asgi_thread, serve_wsgi_thread

EMAIL = "jane.doe@example.com"
PHONE = "+1 415 555 0132"


class Contact(BaseModel):
    """Who to contact and about what."""

    email: str | None = None
    phone: str | None = None
    topic: str | None = None


def _shadow_config(provider: str, **intent: Any) -> dict[str, Any]:
    return {
        "providers": [{"kind": "openai", "base_url": provider, "model": "m", "max_retries": 0}],
        "rules": [
            {"path": "/pii-echo", "mode": "shadow", "budget_ms": 3000, "interceptors": [
                {"type": "pii_masking"},
                {"type": "intent", "schema": "test_shadow.Contact", "source": "json:/message",
                 "rewrite": {"email": "json:/email", "phone": "json:/phone",
                             "topic": "json:/topic"},
                 "compare": 1.0, **intent}]},
            {"path": "/article", "mode": "shadow", "budget_ms": 3000, "interceptors": [
                {"type": "enrichment", "schema": "schemas.Summary", "source": "json:/body",
                 "into": "json:/summary"}]},
        ],
    }  # fmt: skip


def _wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the shadow run")


# The model echoes the placeholders it saw; the engine restores them in the intent, so the
# comparison record must mask them again.
ECHO = {"email": "<EMAIL_ADDRESS_1>", "phone": "<PHONE_NUMBER_1>", "topic": "refund"}
MESSAGE = {
    "message": f"Refund please, write to {EMAIL} or call {PHONE}",
    "email": EMAIL,
    "phone": PHONE,
    "topic": "Refund",
}


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_comparison_record_never_holds_an_unmasked_value(
    adapter: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.default = reply(ECHO)
    sink = tmp_path / "shadow.jsonl"
    config = _shadow_config(fault_server.url, compare_sink=str(sink))
    wsgi_app = build_wsgi(config) if adapter == "wsgi" else None
    server = (
        serve_asgi_thread(build_starlette(config))
        if wsgi_app is None
        else serve_wsgi_thread(wsgi_app)
    )
    try:
        with server as base:
            data = httpx.post(base + "/pii-echo", json=MESSAGE, timeout=10).json()
            text = _wait_for(lambda: sink.exists() and sink.read_text())
    finally:
        if wsgi_app is not None:
            wsgi_app.engine.close()
    # Shadow: the request reached the app as it came (masking not applied either).
    assert data["outcomes"] == {"pii_masking": "shadow", "intent": "shadow"}
    assert json.loads(data["body"]) == MESSAGE
    # The provider saw placeholders only ...
    sent = b"".join(r.body for r in fault_server.requests).decode()
    assert EMAIL not in sent and "<EMAIL_ADDRESS_1>" in sent
    # ... and so does the record, on both sides of the comparison.
    [record] = [json.loads(line) for line in text.splitlines()]
    assert EMAIL not in text and "jane.doe" not in text
    assert "415" not in text and "0132" not in text
    assert record["llm"]["email"] == "<EMAIL_ADDRESS_1>"
    assert record["request"]["email"] == "<EMAIL_ADDRESS_1>"
    assert record["agree"] == {"email": True, "phone": True, "topic": True}
    assert record["outcome"] == "ok" and record["rule"] == "/pii-echo"


def test_comparison_to_structlog_is_masked_and_sampled(fault_server: FaultServer) -> None:
    fault_server.default = reply({**ECHO, "topic": "delivery"})
    with (
        capture_logs() as logs,
        serve_asgi_thread(build_starlette(_shadow_config(fault_server.url))) as base,
    ):
        httpx.post(base + "/pii-echo", json=MESSAGE, timeout=10)
        records = _wait_for(
            lambda: [e for e in logs if e["event"] == "llm_middleware.shadow_compare"]
        )
    assert EMAIL not in repr(logs) and "0132" not in repr(logs)
    assert records[0]["agree"]["topic"] is False  # the model said delivery, the client refund

    fault_server.reset()
    fault_server.default = reply(ECHO)
    config = _shadow_config(fault_server.url, compare=0.0)
    with capture_logs() as logs, serve_asgi_thread(build_starlette(config)) as base:
        httpx.post(base + "/pii-echo", json=MESSAGE, timeout=10)
        _wait_for(lambda: [e for e in logs if e["event"] == "llm_middleware.request"])
    assert not [e for e in logs if e["event"] == "llm_middleware.shadow_compare"]


def test_sampling_leaves_the_global_random_state_alone(fault_server: FaultServer) -> None:
    # The app owns `random`'s global generator (Hypothesis even checks that nothing else
    # advances it): a sampled comparison draws from the module's own.
    import random

    fault_server.default = reply(ECHO)
    config = _shadow_config(fault_server.url, compare=0.5)
    with capture_logs() as logs, serve_asgi_thread(build_starlette(config)) as base:
        state = random.getstate()
        for i in range(4):  # fresh texts: cache hits would not be logged (sampled)
            message = {**MESSAGE, "message": f"{MESSAGE['message']} (order {i})"}
            httpx.post(base + "/pii-echo", json=message, timeout=10)
        _wait_for(lambda: len([e for e in logs if e["event"] == "llm_middleware.request"]) >= 4)
        assert random.getstate() == state


def test_response_side_runs_in_shadow_and_is_never_applied(fault_server: FaultServer) -> None:
    fault_server.default = reply({"summary": "About shoes.", "tags": ["shoes"]})
    with (
        capture_logs() as logs,
        serve_asgi_thread(build_starlette(_shadow_config(fault_server.url))) as base,
    ):
        response = httpx.get(base + "/article", timeout=10)
        events = _wait_for(
            lambda: [e for e in logs if e["event"] == "llm_middleware.shadow_response"]
        )
    doc = response.json()
    assert "summary" not in doc and doc["body"] == ARTICLE_BODY  # the app's response, as is
    assert events[0]["outcomes"] == {"enrichment": "ok"}
    assert len(fault_server.requests) == 1  # the enrichment call was made, in the shadow
