"""Sync adapters run the engine inline, in the request thread, when it needs no I/O (a cache
hit, masking only); anything else goes to the background loop with the same result."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from apps import make_config
from fault_server import FaultServer, reply
from llm_middleware import bridge
from llm_middleware.wsgi import RESULT_KEY, LLMWSGIMiddleware

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
    assert first["result"].outcomes == {"intent": "ok"} and len(hops) == 1
    second = _call(app, "/search", "q=red+shoes")
    app.close()
    assert second["result"].outcomes == {"intent": "cached"}
    assert second["result"].intent.model_dump() == {"category": "shoes", "color": "red",
                                                    "max_price": 100.0}  # fmt: skip
    assert len(hops) == 1  # the hit never left the request thread
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


def test_a_miss_after_inline_masking_redoes_it_on_the_loop(
    fault_server: FaultServer, hops: list[str]
) -> None:
    # Masking ran inline, then the intent needed the provider: the partial run is dropped and
    # the whole request runs once on the loop, masking included (nothing applied twice).
    fault_server.default = reply({"category": "<EMAIL_ADDRESS_1>"})
    app = LLMWSGIMiddleware(lambda e, s: [], make_config(fault_server.url))
    body = json.dumps({"message": "write to jane@example.com"}).encode()
    seen = _call(app, "/pii-echo", body=body, content_type="application/json")
    app.close()
    assert len(hops) == 1
    assert seen["result"].outcomes == {"pii_masking": "ok", "intent": "ok"}
    assert seen["result"].intent.category == "jane@example.com"
    assert json.loads(seen["body"]) == {"message": "write to <EMAIL_ADDRESS_1>"}
    assert seen["result"].pii == {"EMAIL_ADDRESS": 1}
