"""WSGI adapter: ``LLMWSGIMiddleware(wsgi_app, config)``; views read
``environ["llm_middleware.result"]``."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any

from .deadline import Deadline
from .engine import CompiledRule, Engine
from .exchange import Headers, RequestExchange, ResponseExchange, plan_body_read, rejection
from .observability import log_internal_error, reset_request_pii, set_request_pii
from .sync import process_request_sync, process_response_sync

RESULT_KEY = "llm_middleware.result"
REJECT_KEY = "llm_middleware.reject"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class LLMWSGIMiddleware:
    def __init__(self, app: WSGIApp, /, config: Any = None, **config_kwargs: Any) -> None:
        self.app = app
        self.engine = config if isinstance(config, Engine) else Engine(config, **config_kwargs)
        self._match = self.engine.router.match

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if RESULT_KEY in environ:  # wrapped twice: the outer instance already handled it
            return self.app(environ, start_response)
        rule = self._match(environ.get("REQUEST_METHOD", "GET"), route_path(environ))
        if rule is None:
            return self.app(environ, start_response)
        try:
            self._before(rule, environ)
        except Exception as exc:  # ours: the request goes on as it came (body restored)
            log_internal_error("wsgi", exc)
        result = environ.get(RESULT_KEY)
        rejected = environ.pop(REJECT_KEY, None)
        if rejected is not None:  # the rule fails closed: the app is not called
            status, headers, body = rejected
            start_response(f"{status} {HTTPStatus(status).phrase}", headers)
            return [body]
        token = set_request_pii(result.pii_values if result is not None else frozenset())
        try:
            if result is None or result.context is None or not rule.needs_response:
                return self.app(environ, start_response)
            side = _ResponseSide(self.engine, rule, result, environ, start_response)
            return side.run(self.app)
        finally:
            reset_request_pii(token)

    def close(self) -> None:
        """Close the LLM clients (a server's shutdown hook, tests)."""
        self.engine.close()

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
        environ[RESULT_KEY] = result
        if exchange.reject is not None:
            environ[REJECT_KEY] = rejection(exchange)
            self.engine.finish_response(rule, result, exchange.method, "rejected")
            return
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
    framed = "transfer-encoding" in exchange.headers or bool(environ.get("wsgi.input_terminated"))
    length = plan_body_read(exchange, environ.get("CONTENT_LENGTH"), cap, framed=framed)
    if length is None:
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


class _ResponseSide:
    """Holds ``start_response`` until the body is known; only a complete response with a
    Content-Length under the cap is buffered (no length = streaming: passed through). The
    app's iterable is always closed."""

    def __init__(
        self, engine: Engine, rule: CompiledRule, result: Any, environ: dict[str, Any],
        start_response: StartResponse,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.rule = rule
        self.result = result
        self.environ = environ
        self.method = environ.get("REQUEST_METHOD", "GET")
        self.start_response = start_response
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.held = False
        self.written: list[bytes] = []

    def _start(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None or self.status is not None:
            self.held = False
            return self.start_response(status, headers, exc_info)
        self.status, self.headers = status, headers
        head = Headers(headers)
        declared = head.get("content-length")
        code = status.split(" ", 1)[0]
        reason = (
            self.engine.response_skip_reason(
                self.rule, self.result, self.method, int(code), head,
                int(declared) if declared and declared.isdigit() else None,
            )
            if code.isdigit()
            else "bad_status_line"
        )  # fmt: skip
        if reason is None and not (declared and declared.isdigit()):
            reason = "streaming_response"
        if reason is not None:
            self.engine.finish_response(self.rule, self.result, self.method, reason)
            return self.start_response(status, headers)
        self.held = True
        return self.written.append

    def run(self, app: WSGIApp) -> Iterable[bytes]:
        iterable = app(self.environ, self._start)
        if self.status is None:
            # A generator app calls start_response on its first iteration.
            iterator = iter(iterable)
            try:
                first = next(iterator)
            except StopIteration:
                first = b""
            except BaseException:
                _close(iterable)
                raise
            if not self.held:
                return _Chained([first], iterator, iterable)
            chunks, rest = [first], iterator
        else:
            if not self.held:
                return iterable
            chunks, rest = [], iter(iterable)
        cap = self.rule.max_response_bytes
        size = sum(len(c) for c in self.written) + sum(len(c) for c in chunks)
        try:
            for chunk in rest:
                chunks.append(chunk)
                size += len(chunk)
                if size > cap:  # more than it declared: hand on what we have, then the rest
                    self.engine.finish_response(
                        self.rule, self.result, self.method, "response_too_large"
                    )
                    assert self.status is not None
                    self.start_response(self.status, self.headers)
                    return _Chained(self.written + chunks, rest, iterable)
        except BaseException:
            _close(iterable)
            raise
        _close(iterable)
        body = b"".join(self.written) + b"".join(chunks)
        assert self.status is not None
        status, headers = self.status, self.headers
        try:
            response = ResponseExchange(int(status.split(" ", 1)[0]), Headers(headers), body)
            response = process_response_sync(self.engine, self.rule, self.result, response)
            if response.new_body is not None or response.set_headers:
                body = response.current_body
                headers = response.headers_after(headers)
        except Exception as exc:  # ours: the app's response goes out as it was
            log_internal_error("wsgi.response", exc)
            headers = self.headers
            body = b"".join(self.written) + b"".join(chunks)
        self.engine.finish_response(self.rule, self.result, self.method, None)
        self.start_response(status, headers)
        return [body]


class _Chained:
    """``head`` then ``rest``; ``close()`` closes the app's original iterable."""

    def __init__(self, head: list[bytes], rest: Iterator[bytes], original: Iterable[bytes]):
        self.head = head
        self.rest = rest
        self.original = original

    def __iter__(self) -> Iterator[bytes]:
        yield from self.head
        yield from self.rest

    def close(self) -> None:
        _close(self.original)


def _close(iterable: Iterable[bytes]) -> None:
    close = getattr(iterable, "close", None)
    if close is not None:
        close()
