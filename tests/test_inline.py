"""Sync adapters run the engine inline, in the request thread: a cache hit and masking need
no I/O; an LLM call runs on the background loop while the request thread waits for its
future, bounded by the deadline. Only a step that needs the event loop itself (shadow) sends
the request to the background loop, with the same result."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from apps import make_config
from fault_server import FaultServer, hang_before_headers, reply
from llm_middleware import bridge
from llm_middleware.wsgi import RESULT_KEY, LLMWSGIMiddleware
from servers import SchedulerDelay, own_slack_ms

GOOD = {"category": "shoes", "color": "red", "max_price": 100}


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts trips to the background loop."""
    seen: list[str] = []
    real = bridge.BACKGROUND.run

    def counting(coro: Any, timeout: float) -> Any:
        seen.append(coro.__qualname__)
        return real(coro, timeout)

    monkeypatch.setattr(bridge.BACKGROUND, "run", counting)
    return seen


def _call(app: LLMWSGIMiddleware, path: str, query: str = "", body: bytes = b"",
          content_type: str = "") -> Any:  # fmt: skip
    environ = {"REQUEST_METHOD": "POST" if body else "GET", "PATH_INFO": path,
               "QUERY_STRING": query, "CONTENT_TYPE": content_type,
               "CONTENT_LENGTH": str(len(body)) if body else "",
               "wsgi.input": io.BytesIO(body)}  # fmt: skip
    seen: dict[str, Any] = {}

    def inner_start(status: str, headers: list[tuple[str, str]]) -> None:
        pass

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen["result"] = environ.get(RESULT_KEY)
        seen["body"] = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]

    app.app = inner
    b"".join(app(environ, inner_start))
    return seen


def test_cache_hit_is_served_without_a_hop(fault_server: FaultServer, hops: list[str]) -> None:
    fault_server.default = reply(GOOD)
    app = LLMWSGIMiddleware(lambda e, s: [], make_config(fault_server.url))
    first = _call(app, "/search", "q=red+shoes")
    assert first["result"].outcomes == {"intent": "ok"} and hops == []
    second = _call(app, "/search", "q=red+shoes")
    app.close()
    assert second["result"].outcomes == {"intent": "cached"}
    assert second["result"].intent.model_dump() == {"category": "shoes", "color": "red",
                                                    "max_price": 100.0}  # fmt: skip
    assert hops == []  # the engine never left the request thread
    assert len(fault_server.requests) == 1


def test_masking_only_needs_no_hop(fault_server: FaultServer, hops: list[str]) -> None:
    config = make_config(fault_server.url)
    masking = {"type": "pii_masking", "mask_for": ["providers", "app"]}
    config["rules"].insert(0, {"path": "/tickets", "interceptors": [masking]})
    app = LLMWSGIMiddleware(lambda e, s: [], config)
    body = json.dumps({"message": "mail jane@example.com"}).encode()
    seen = _call(app, "/tickets", body=body, content_type="application/json")
    app.close()
    assert json.loads(seen["body"]) == {"message": "mail <EMAIL_ADDRESS_1>"}
    assert seen["result"].outcomes == {"pii_masking": "ok"}
    assert hops == []


def test_a_miss_after_inline_masking_runs_once_inline(
    fault_server: FaultServer, hops: list[str]
) -> None:
    # Masking ran inline, then the intent needed the provider: the request thread waits for
    # the call and the run goes on; masking is applied once, the provider saw the masked text.
    fault_server.default = reply({"category": "<EMAIL_ADDRESS_1>"})
    app = LLMWSGIMiddleware(lambda e, s: [], make_config(fault_server.url))
    body = json.dumps({"message": "write to jane@example.com"}).encode()
    seen = _call(app, "/pii-echo", body=body, content_type="application/json")
    app.close()
    assert hops == []
    assert seen["result"].outcomes == {"pii_masking": "ok", "intent": "ok"}
    assert seen["result"].intent.category == "jane@example.com"
    assert json.loads(seen["body"]) == {"message": "write to <EMAIL_ADDRESS_1>"}
    assert seen["result"].pii == {"EMAIL_ADDRESS": 1}
    assert len(fault_server.requests) == 1
    assert "jane@example.com" not in fault_server.requests[0].body.decode()


def test_a_hanging_provider_ends_inline_at_the_deadline(
    fault_server: FaultServer, hops: list[str]
) -> None:
    # The inline wait is bounded by the budget: a timeout outcome, the app called, no hop.
    fault_server.default = hang_before_headers()
    app = LLMWSGIMiddleware(lambda e, s: [], make_config(fault_server.url, budget_ms=150))
    with SchedulerDelay() as delay:
        started = time.monotonic()
        seen = _call(app, "/search", "q=hang")
        took_ms = (time.monotonic() - started) * 1000
    app.close()
    assert hops == []
    assert seen["result"].outcomes == {"intent": "timeout"}
    assert seen["body"] == b""  # the app ran, with the request as sent
    assert 100 <= took_ms <= 150 + own_slack_ms("wsgi", delay)  # waited, within the budget


def test_shadow_still_goes_to_the_loop(fault_server: FaultServer, hops: list[str]) -> None:
    # Shadow work needs the event loop: the inline run stops and the loop runs the request.
    fault_server.default = reply(GOOD)
    config = make_config(fault_server.url)
    config["rules"][0]["mode"] = "shadow"
    app = LLMWSGIMiddleware(lambda e, s: [], config)
    with capture_logs() as logs:
        seen = _call(app, "/search", "q=red+shoes")
        for _ in range(200):  # the shadow run logs once it is done
            if logs:
                break
            time.sleep(0.01)
    app.close()
    assert len(hops) == 1
    assert seen["result"].outcomes == {"intent": "shadow"}
    assert logs[0]["mode"] == "shadow" and logs[0]["outcomes"] == {"intent": "ok"}
    assert len(fault_server.requests) == 1
