"""WSGI adapter: ``LLMWSGIMiddleware(wsgi_app, config)``; views read
``environ["llm_middleware.result"]``."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from .deadline import Deadline
from .engine import CompiledRule, Engine
from .exchange import Headers, RequestExchange
from .observability import log_internal_error, reset_request_pii, set_request_pii
from .sync import process_request_sync

RESULT_KEY = "llm_middleware.result"
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class LLMWSGIMiddleware:
    def __init__(self, app: WSGIApp, config: Any = None, **config_kwargs: Any) -> None:
        self.app = app
        self.engine = config if isinstance(config, Engine) else Engine(config, **config_kwargs)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if RESULT_KEY in environ:  # wrapped twice: the outer instance already handled it
            return self.app(environ, start_response)
        rule = self.engine.match(environ.get("REQUEST_METHOD", "GET"), route_path(environ))
        if rule is None:
            return self.app(environ, start_response)
        try:
            self._before(rule, environ)
        except Exception as exc:  # ours: the request goes on as it came (body restored)
            log_internal_error("wsgi", exc)
        result = environ.get(RESULT_KEY)
        token = set_request_pii(result.pii_values if result is not None else frozenset())
        try:
            return self.app(environ, start_response)
        finally:
            reset_request_pii(token)

    def _before(self, rule: CompiledRule, environ: dict[str, Any]) -> None:
        deadline = Deadline(rule.budget_s)
        headers = environ_headers(environ)
        exchange = RequestExchange(
            environ.get("REQUEST_METHOD", "GET"),
            route_path(environ),
            environ.get("QUERY_STRING", ""),
            headers,
            client_key=self.engine.client_key(headers, environ.get("REMOTE_ADDR")),
        )
        if rule.needs_body:
            read_body(exchange, environ, rule.max_body_bytes)
        result, body, query = process_request_sync(self.engine, rule, exchange, deadline)
        if body is not None:
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        if query is not None:
            environ["QUERY_STRING"] = query
        environ[RESULT_KEY] = result


def route_path(environ: dict[str, Any]) -> str:
    # PATH_INFO is already inside SCRIPT_NAME; PEP 3333 hands it over as latin-1.
    path: str = environ.get("PATH_INFO") or "/"
    if not path.isascii():
        path = path.encode("latin-1").decode("utf-8", "replace")
    return path


def environ_headers(environ: dict[str, Any]) -> Headers:
    items = [
        (key[5:].replace("_", "-"), value)
        for key, value in environ.items()
        if key.startswith("HTTP_") and isinstance(value, str)
    ]
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            items.append((key.replace("_", "-"), environ[key]))
    return Headers(items)


def read_body(exchange: RequestExchange, environ: dict[str, Any], cap: int) -> None:
    """Read ``wsgi.input`` when it is small and known-length, and put a fresh stream back."""
    headers = exchange.headers
    if (headers.get("content-type") or "").lower().startswith("multipart/"):
        exchange.body_skip_reason = "unsupported_content_type"
        return
    declared = environ.get("CONTENT_LENGTH") or ""
    if not declared:
        if (
            "transfer-encoding" in headers
            or environ.get("wsgi.input_terminated")
            or exchange.method not in _BODYLESS_METHODS
        ):
            exchange.body_skip_reason = "streaming_body"  # passed through unread
        else:
            exchange.body = b""
        return
    if not declared.strip().isdigit():
        exchange.body_skip_reason = "bad_content_length"
        return
    length = int(declared)
    if length > cap:
        exchange.body_skip_reason = "body_too_large"
        return
    stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    remaining = length
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    body = b"".join(chunks)
    environ["wsgi.input"] = io.BytesIO(body)
    if remaining:
        environ["CONTENT_LENGTH"] = str(len(body))
        exchange.body_skip_reason = "client_disconnected"
        return
    exchange.body = body
