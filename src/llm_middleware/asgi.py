"""Pure ASGI middleware (never ``BaseHTTPMiddleware``): Starlette, FastAPI, any ASGI app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .deadline import Deadline
from .engine import CompiledRule, Engine
from .exchange import Headers, RequestExchange, ResponseExchange, plan_body_read, rejection
from .observability import (
    log_internal_error,
    publish_result,
    reset_request_pii,
    server_timing,
    set_request_pii,
)
from .result import LLMResult

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SCOPE_MARK = "llm_middleware"
REJECT_KEY = "llm_middleware.reject"


class LLMMiddleware:
    """``LLMMiddleware(app, config=None, **config_kwargs)``; views read ``request.state.llm``."""

    def __init__(self, app: ASGIApp, /, config: Any = None, **config_kwargs: Any) -> None:
        self.app = app
        self.engine = config if isinstance(config, Engine) else Engine(config, **config_kwargs)
        self._match = self.engine.router.matcher()
        self._paths, self._search = self.engine.router.prefilter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The unmatched path is the hot one, at the cost of a no-op middleware plus a few
        # C-level operations: two dict lookups, a set lookup (and one regex search when rules
        # have patterns). No scope["type"] test there: an unmatched websocket goes to the app as
        # well; a scope without "path" / "root_path" (lifespan, a server that leaves out the
        # optional root_path) takes the general route.
        try:
            path: str = scope["path"]
            root_path: str = scope["root_path"]
        except KeyError:
            return await self._general(scope, receive, send)
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :] or "/"
        if path not in self._paths and (self._search is None or self._search(path) is None):
            return await self.app(scope, receive, send)
        return await self._matched(scope, receive, send, path)

    async def _general(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = _route_path(scope)
            if path not in self._paths and (self._search is None or self._search(path) is None):
                return await self.app(scope, receive, send)
            return await self._matched(scope, receive, send, path)
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, self._lifespan_send(send))
        return await self.app(scope, receive, send)

    async def _matched(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        rule = self._match(scope["method"], path) if scope["type"] == "http" else None
        if rule is None or SCOPE_MARK in scope:  # (marked: wrapped twice, the outer ran)
            return await self.app(scope, receive, send)
        return await _Responder(self.app, self.engine, rule).run(scope, receive, send)

    def _lifespan_send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                try:
                    await self.engine.aclose()
                except Exception as exc:
                    log_internal_error("aclose", exc)
            await send(message)

        return wrapped


def _route_path(scope: Scope) -> str:
    # Match on the path inside the mount point, as Starlette's routing does.
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        return path[len(root_path) :] or "/"
    return path


class _Responder:
    """Per-request state; the middleware instance holds none."""

    __slots__ = ("app", "engine", "rule", "buffered", "more_body")

    def __init__(self, app: ASGIApp, engine: Engine, rule: CompiledRule) -> None:
        self.app = app
        self.engine = engine
        self.rule = rule
        self.buffered: list[Message] = []
        self.more_body = False

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        result: LLMResult | None = None
        try:
            scope, send, result = await self._before(scope, receive, send)
        except Exception as exc:  # ours, never the app's: pass the request through untouched
            log_internal_error("asgi", exc)
            scope = dict(scope)
            scope[SCOPE_MARK] = True
        rejected = scope.pop(REJECT_KEY, None)
        if rejected is not None:  # the rule fails closed: the app is not called
            status, headers, body = rejected
            raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
            await send({"type": "http.response.start", "status": status, "headers": raw})
            await send({"type": "http.response.body", "body": body})
            return
        token = set_request_pii(result.pii_values if result is not None else frozenset())
        try:
            await self.app(scope, self._replay(receive), send)
        finally:
            reset_request_pii(token)
            if isinstance(send, _ResponseSide):
                send.finish("no_response")

    async def _before(
        self, scope: Scope, receive: Receive, send: Send
    ) -> tuple[Scope, Send, LLMResult]:
        deadline = Deadline(self.rule.budget_s)
        headers = Headers.from_asgi(scope["headers"])
        client = scope.get("client")
        exchange = RequestExchange(
            scope["method"],
            _route_path(scope),
            scope.get("query_string", b"").decode("latin-1"),
            headers,
            client_key=self.engine.client_key(headers, client[0] if client else None),
        )
        if self.rule.needs_body:
            await self._read_body(exchange, receive)
        result = await self.engine.process_request(self.rule, exchange, deadline)

        scope = dict(scope)
        scope[SCOPE_MARK] = True
        # The request's own state dict (the server's per-request copy of the lifespan state),
        # written in place as Starlette's request.state does, so that middleware outside us
        # sees what the view sets. A name the app already uses (lifespan state
        # {"llm": client}) keeps the app's value.
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        publish_result(state, self.engine.config.result_attr, result, "scope['state']")
        if exchange.reject is not None:  # sent by run() through the original send
            scope[REJECT_KEY] = rejection(exchange)
            self.engine.finish_response(self.rule, result, exchange.method, "rejected")
            return scope, send, result
        if exchange.new_query_string is not None:
            scope["query_string"] = exchange.new_query_string.encode("latin-1")
        if exchange.new_body is not None and not self.more_body:
            body = exchange.new_body
            self.buffered = [{"type": "http.request", "body": body, "more_body": False}]
            scope["headers"] = [
                (k, v) for k, v in scope["headers"] if k.lower() != b"content-length"
            ] + [(b"content-length", str(len(body)).encode("latin-1"))]
        if self.engine.config.server_timing:
            send = _with_server_timing(send, result)
        if self.rule.needs_response and result.context is not None:
            send = _ResponseSide(self.engine, self.rule, result, exchange.method, send)
        return scope, send, result

    async def _read_body(self, exchange: RequestExchange, receive: Receive) -> None:
        headers = exchange.headers
        cap = self.rule.max_body_bytes
        framed = "transfer-encoding" in headers
        if plan_body_read(exchange, headers.get("content-length"), cap, framed=framed) is None:
            return
        # Buffer until more_body is False (capped), as Starlette's _CachedRequest does.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            self.buffered.append(message)
            if message["type"] != "http.request":  # http.disconnect: replay it as it came
                exchange.body_skip_reason = "client_disconnected"
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                self.more_body = message.get("more_body", False)
                exchange.body_skip_reason = "body_too_large"
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        exchange.body = body
        # One message with the whole body replaces what was buffered.
        self.buffered = [{"type": "http.request", "body": body, "more_body": False}]

    def _replay(self, receive: Receive) -> Receive:
        if not self.buffered:
            return receive
        buffered = self.buffered

        async def replay() -> Message:
            if buffered:
                return buffered.pop(0)
            return await receive()  # then the real channel, so http.disconnect still arrives

        return replay


def _with_server_timing(send: Send, result: Any) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [
                *message.get("headers", []),
                (b"server-timing", server_timing(result).encode("latin-1")),
            ]
        await send(message)

    return wrapped


class _ResponseSide:
    """Wraps ``send``: holds ``http.response.start`` until the body is known, as Starlette's
    GZipMiddleware does; only a complete single-message body of an eligible response is
    handed to the response interceptors. Anything else passes byte for byte."""

    __slots__ = ("engine", "rule", "result", "method", "send", "start", "state", "headers")

    def __init__(
        self, engine: Engine, rule: CompiledRule, result: Any, method: str, send: Send
    ) -> None:
        self.engine = engine
        self.rule = rule
        self.result = result
        self.method = method
        self.send = send
        self.start: Message | None = None
        self.headers: Headers | None = None
        self.state = "waiting"  # -> "buffering" -> "done" | "passthrough"

    def finish(self, reason: str | None) -> None:
        if self.state in ("waiting", "buffering"):
            self.state = "done"
        self.engine.finish_response(self.rule, self.result, self.method, reason)

    async def __call__(self, message: Message) -> None:
        if self.state in ("passthrough", "done"):
            return await self.send(message)
        kind = message["type"]
        if kind == "http.response.start":
            headers = Headers.from_asgi(message.get("headers", []))
            declared = headers.get("content-length")
            reason = self.engine.response_skip_reason(
                self.rule, self.result, self.method, message["status"], headers,
                int(declared) if declared and declared.isdigit() else None,
            )  # fmt: skip
            if reason is not None:
                await self._passthrough(reason, message)
                return
            # Don't send the start message until we know whether the body changes.
            self.start, self.headers, self.state = message, headers, "buffering"
            return
        if self.start is None or self.headers is None:
            return await self.send(message)
        if kind != "http.response.body":  # pathsend, zerocopy...: not a body we can see
            await self._passthrough("unsupported_message", self.start, message)
            return
        start, body = self.start, message.get("body", b"")
        if message.get("more_body", False):
            await self._passthrough("streaming_response", start, message)
            return
        if len(body) > self.rule.max_response_bytes:
            await self._passthrough("response_too_large", start, message)
            return
        try:
            start, body = await self._enrich(start, self.headers, body)
        except Exception as exc:  # ours: the app's response goes out as it was
            log_internal_error("asgi.response", exc)
            start, body = self.start, message.get("body", b"")
        self.state = "done"
        self.finish(None)
        await self.send(start)
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _passthrough(self, reason: str, *messages: Message) -> None:
        self.state = "passthrough"
        self.finish(reason)
        for message in messages:
            await self.send(message)

    async def _enrich(self, start: Message, headers: Headers, body: bytes) -> tuple[Message, bytes]:
        response = ResponseExchange(start["status"], headers, body)
        await self.engine.process_response(self.rule, self.result, response)
        if response.new_body is None and not response.set_headers:
            return start, body
        raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]
        out = [
            (k.lower().encode("latin-1"), v.encode("latin-1", "replace"))
            for k, v in response.headers_after(raw)
        ]
        return {**start, "headers": out}, response.current_body
