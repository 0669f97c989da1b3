"""Response-side details: response masking on every adapter; WSGI iterables of every shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from apps import make_config
from fault_server import FaultServer, reply
from llm_middleware.wsgi import LLMWSGIMiddleware
from servers import Serve
from test_enrichment import GOOD, fetch


def test_json_response_masked(serve: Serve, fault_server: FaultServer) -> None:
    with serve() as base:
        _, headers, body = fetch(base, "/article-masked", "pii-json")
    assert json.loads(body) == {"contact": "<EMAIL_ADDRESS_1>", "id": 3,
                                "note": "call <PHONE_NUMBER_1>"}  # fmt: skip
    assert headers["content-length"] == str(len(body))


def test_text_response_masked(serve: Serve, fault_server: FaultServer) -> None:
    with serve() as base:
        _, headers, body = fetch(base, "/article-masked", "pii-text")
    assert body == b"write to <EMAIL_ADDRESS_1>"
    assert headers["content-length"] == str(len(body))


def _call(app: Any, path: str = "/article") -> tuple[str, list[tuple[str, str]], bytes]:
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured.update(status=status, headers=headers)
        return lambda data: None

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": ""}
    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return captured["status"], captured["headers"], body


DOC = json.dumps({"id": 1, "body": "Llamas are camelids."}).encode()


class Tracked:
    """An app iterable that records whether it was closed."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def enriching(fault_server: FaultServer) -> Iterator[Any]:
    fault_server.default = reply(GOOD)
    apps: list[LLMWSGIMiddleware] = []

    def wrap(inner: Any, **overrides: Any) -> LLMWSGIMiddleware:
        apps.append(LLMWSGIMiddleware(inner, make_config(fault_server.url, **overrides)))
        return apps[-1]

    yield wrap
    for app in apps:
        app.engine.close()


def test_wsgi_generator_app_calls_start_response_late(enriching: Any) -> None:
    def inner(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(DOC)))])  # fmt: skip
        yield DOC

    status, headers, body = _call(enriching(inner))
    assert status == "200 OK"
    assert json.loads(body)["summary"] == GOOD
    assert dict(headers)["Content-Length"] == str(len(body))


def test_wsgi_iterable_longer_than_the_cap_passes_whole(enriching: Any) -> None:
    tracked = Tracked([DOC[:10], b"x" * 600, DOC[10:]])

    def inner(environ: dict[str, Any], start_response: Any) -> Tracked:
        # Declares a small length, sends more than max_response_bytes: handed on untouched.
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", "10")])  # fmt: skip
        return tracked

    _, _, body = _call(enriching(inner, max_response_bytes=500))
    assert body == DOC[:10] + b"x" * 600 + DOC[10:]
    assert tracked.closed


def test_wsgi_write_callable_output_is_kept(enriching: Any) -> None:
    tracked = Tracked([DOC[20:]])

    def inner(environ: dict[str, Any], start_response: Any) -> Tracked:
        write = start_response("200 OK", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(DOC)))])  # fmt: skip
        write(DOC[:20])  # the legacy write() API
        return tracked

    _, _, body = _call(enriching(inner))
    assert json.loads(body)["summary"] == GOOD
    assert tracked.closed


def test_wsgi_enriched_iterable_is_closed(enriching: Any) -> None:
    tracked = Tracked([DOC])

    def inner(environ: dict[str, Any], start_response: Any) -> Tracked:
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(DOC))), ("ETag", '"x"')])  # fmt: skip
        return tracked

    _, headers, body = _call(enriching(inner))
    assert tracked.closed
    assert dict(headers)["ETag"] == 'W/"x"'
    assert json.loads(body)["summary"] == GOOD


def test_intent_as_is_typed() -> None:
    from llm_middleware import LLMResult
    from schemas import SearchIntent, Summary

    result = LLMResult(rule="/x")
    intent = SearchIntent(category="shoes")
    result.intents["intent"] = result.intent = intent
    assert result.intent_as(SearchIntent) is intent
    assert result.intent_as(Summary) is None
    assert result.enrichment_as(Summary) is None
