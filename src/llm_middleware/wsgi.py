"""WSGI adapter: ``LLMWSGIMiddleware(wsgi_app, config)``; views read
``environ["llm_middleware.result"]``."""

from __future__ import annotations

import contextlib
import io
import re
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
        self._match = self.engine.router.matcher()
        self._paths, self._search = _raw_prefilter(*self.engine.router.prefilter())

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # The unmatched path is the hot one: a dict lookup and a set lookup (and, when rules
        # have patterns, one C-level regex search on an ASCII path), no call into Python. The
        # set holds the raw PATH_INFO forms of the exact paths (see _raw_prefilter).
        try:
            path: str = environ["PATH_INFO"]
            unmatched = path not in self._paths and (
                self._search is None or (path.isascii() and self._search(path or "/") is None)
            )
        except KeyError:  # PEP 3333: may be absent at the application's root
            unmatched = "" not in self._paths and (
                self._search is None or self._search("/") is None
            )
        except (AttributeError, TypeError):  # not a str, against PEP 3333: not ours to route
            unmatched = True
        if unmatched:
            return self.app(environ, start_response)
        rule = self._match(environ.get("REQUEST_METHOD", "GET"), route_path(environ))
        if rule is None or RESULT_KEY in environ:  # (set: wrapped twice, the outer one ran)
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
            try:
                return side.run(self.app)
            except BaseException:
                # Whatever the app raised, the request is logged once (the error is the app's).
                self.engine.finish_response(rule, result, side.method, "app_error")
                raise
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


def _raw_prefilter(
    paths: frozenset[str], search: Callable[[str], object] | None
) -> tuple[frozenset[str], Callable[[str], object] | None]:
    """The router's prefilter for a raw PATH_INFO, which PEP 3333 hands over as latin-1 (the
    path's UTF-8 bytes, one character each) and may leave empty: each exact path also under
    that form, ``/`` also as ``""``. A raw path outside the set then decodes to no exact path,
    so without pattern rules no decoding is needed to reject it. (A rule path with U+FFFD, which
    undecodable bytes decode to, keeps the decoding: every non-ASCII path takes the general
    route, as with pattern rules.)"""
    raw = set(paths)
    raw.update(path.encode().decode("latin-1") for path in paths if not path.isascii())
    if "/" in paths:
        raw.add("")
    if search is None and any("\ufffd" in path for path in paths):
        search = _NEVER.search
    return frozenset(raw), search


_NEVER = re.compile(r"(?!)")


def route_path(environ: dict[str, Any]) -> str:
    # PATH_INFO is already inside SCRIPT_NAME; PEP 3333 hands it over as latin-1.
    path: str = environ.get("PATH_INFO") or "/"
    if not path.isascii():
        # Not latin-1: already decoded (a server against PEP 3333), taken as it is.
        with contextlib.suppress(UnicodeEncodeError):
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
    """Read ``wsgi.input`` when it is small and known-length, and leave the app the stream it
    would have had: the server's own object, sought back, where it is seekable; otherwise one
    that replays the same bytes (and the same short read or error) and then goes on reading
    the server's stream. ``CONTENT_LENGTH`` is never changed here."""
    framed = "transfer-encoding" in exchange.headers or bool(environ.get("wsgi.input_terminated"))
    length = plan_body_read(exchange, environ.get("CONTENT_LENGTH"), cap, framed=framed)
    if length is None:
        return
    stream = environ["wsgi.input"]
    start = _tell(stream)
    chunks: list[bytes] = []
    remaining = length
    error: Exception | None = None
    try:
        while remaining > 0:
            chunk = stream.read(remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except Exception as exc:  # the server's own (a reset upload): the app gets it too
        error = exc
    body = b"".join(chunks)
    if start is None or error is not None or not _seek(stream, start):
        environ["wsgi.input"] = _Replay(body, stream, error)
    if remaining or error is not None:
        exchange.body_skip_reason = "client_disconnected"
        return
    exchange.body = body


def _tell(stream: Any) -> int | None:
    try:
        if stream.seekable():
            position: int = stream.tell()
            return position
    except Exception:  # no seekable()/tell(), or a socket file that refuses: replay instead
        pass
    return None


def _seek(stream: Any, position: int) -> bool:
    try:
        stream.seek(position)
    except Exception:
        return False
    return True


class _Replay:
    """``wsgi.input`` as the app would have had it: the bytes we read, then the server's
    stream as it is (its short read, its error, raised where the app would have met it)."""

    def __init__(self, head: bytes, rest: Any, error: Exception | None) -> None:
        self._head = head
        self._rest = rest
        self._error = error

    def _more(self, size: int) -> bytes:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        data: bytes = self._rest.read() if size < 0 else self._rest.read(size)
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            head, self._head = self._head, b""
            if head and self._error is not None:
                return head  # the error comes with the next read
            return head + self._more(-1)
        head, self._head = self._head[:size], self._head[size:]
        if len(head) == size or (head and self._error is not None):
            return head
        return head + self._more(size - len(head))

    def readline(self, size: int | None = -1) -> bytes:
        if self._head:
            limit = len(self._head) if size is None or size < 0 else min(size, len(self._head))
            end = self._head.find(b"\n", 0, limit)
            cut = limit if end < 0 else end + 1
            line, self._head = self._head[:cut], self._head[cut:]
            return line
        if self._error is not None:
            return self._more(0)
        rest: bytes = (
            self._rest.readline() if size is None or size < 0 else self._rest.readline(size)
        )
        return rest

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(self)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def close(self) -> None:
        pass  # the server's stream is the server's to close


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
            self.engine.finish_response(self.rule, self.result, self.method, "app_error")
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
                if self.status is None:  # it never started a response: nothing to enrich
                    self.engine.finish_response(self.rule, self.result, self.method, "no_response")
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
