"""A framework-neutral view of one request: what adapters fill in and interceptors read."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

__all__ = [
    "Headers",
    "RequestExchange",
    "ResponseExchange",
    "SourceError",
    "json_pointer_get",
    "json_pointer_set",
    "read_source_value",
    "weak_etag",
]


class SourceError(Exception):
    """The interceptor's input is not there or not usable; ``reason`` is a stable short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Headers:
    """Read-only, case-insensitive, multi-valued headers (names stored lower-case)."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = [(k.lower(), v) for k, v in items]

    @classmethod
    def from_asgi(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        self = cls.__new__(cls)
        self._items = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]
        return self

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self._items:
            if key == name:
                return value
        return default

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __repr__(self) -> str:  # header values may be secrets: names only
        return f"Headers({[k for k, _ in self._items]!r})"


class RequestExchange:
    """One request as interceptors see it. ``body`` is ``None`` when it was not read
    (``body_skip_reason`` says why). Interceptors write ``new_body`` / ``new_query_string``;
    adapters apply them."""

    __slots__ = (
        "method",
        "path",
        "query_string",
        "headers",
        "body",
        "body_skip_reason",
        "client_key",
        "new_body",
        "new_query_string",
        "reject",
        "_json",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: Headers,
        body: bytes | None = None,
        *,
        body_skip_reason: str | None = None,
        client_key: str = "",
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self.body_skip_reason = body_skip_reason
        self.client_key = client_key
        self.new_body: bytes | None = None
        self.new_query_string: str | None = None
        # Set when a rule fails closed (pii_masking with on_masking_failure="reject"): the
        # adapter answers with this status and JSON body instead of calling the app.
        self.reject: tuple[int, bytes] | None = None
        self._json: tuple[bytes, Any] | None = None

    @property
    def content_type(self) -> str:
        value = self.headers.get("content-type") or ""
        return value.split(";", 1)[0].strip().lower()

    @property
    def current_body(self) -> bytes | None:
        return self.new_body if self.new_body is not None else self.body

    @property
    def current_query_string(self) -> str:
        return self.new_query_string if self.new_query_string is not None else self.query_string

    def body_text(self) -> str:
        body = self.current_body
        if body is None:
            raise SourceError(self.body_skip_reason or "body_not_read")
        charset = charset_of(self.headers.get("content-type") or "")
        try:
            return body.decode(charset)
        except (UnicodeDecodeError, LookupError):
            raise SourceError("undecodable", f"body is not valid {charset}") from None

    def body_json(self) -> Any:
        body = self.current_body
        if body is None:
            raise SourceError(self.body_skip_reason or "body_not_read")
        if self._json is not None and self._json[0] is body:
            return self._json[1]
        if not is_json_type(self.content_type):
            raise SourceError("unsupported_content_type", self.content_type or "none")
        try:
            value = json.loads(body)
        except UnicodeDecodeError:
            raise SourceError("undecodable", "body is not UTF-8") from None
        except ValueError:
            raise SourceError("body_not_json") from None
        self._json = (body, value)
        return value

    def __repr__(self) -> str:
        return f"RequestExchange({self.method} {self.path})"


_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


def plan_body_read(
    exchange: RequestExchange, declared: str | None, cap: int, *, framed: bool
) -> int | None:
    """Whether an adapter should read the request body: the length to read, or ``None``
    (then ``body_skip_reason`` says why, or ``body`` is ``b""`` for a request without one).
    ``framed``: the server said the body ends without a length (chunked upload)."""
    if (exchange.headers.get("content-type") or "").lower().startswith("multipart/"):
        exchange.body_skip_reason = "unsupported_content_type"  # uploads pass unread
        return None
    if not declared:
        if framed or exchange.method not in _BODYLESS_METHODS:
            exchange.body_skip_reason = "streaming_body"  # passed through unread
        else:
            exchange.body = b""
        return None
    if not declared.strip().isdigit():
        exchange.body_skip_reason = "bad_content_length"
        return None
    length = int(declared)
    if length > cap:
        exchange.body_skip_reason = "body_too_large"
        return None
    return length


def rejection(exchange: RequestExchange) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """What an adapter sends instead of calling the app when a rule failed closed
    (``on_masking_failure="reject"``): status, headers, body; ``None`` to go on."""
    if exchange.reject is None:
        return None
    status, body = exchange.reject
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    return status, headers, body


def is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def charset_of(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return "utf-8"


def json_pointer_get(document: Any, pointer: str) -> Any:
    """RFC 6901. Raises ``KeyError`` when the pointer does not resolve."""
    if pointer == "":
        return document
    current = document
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(current, dict):
            current = current[token]
        elif isinstance(current, list):
            if not token.isdigit():
                raise KeyError(token)
            try:
                current = current[int(token)]
            except IndexError:
                raise KeyError(token) from None
        else:
            raise KeyError(token)
    return current


def json_pointer_set(document: Any, pointer: str, value: Any, *, overwrite: bool) -> bool:
    """Set ``value`` at an RFC 6901 pointer, creating missing objects on the way. Returns
    whether the document changed; raises ``SourceError`` when the path crosses a non-object."""
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]
    current = document
    for token in tokens[:-1]:
        if not isinstance(current, dict):
            raise SourceError("target_not_object", pointer)
        current = current.setdefault(token, {})
    if not isinstance(current, dict):
        raise SourceError("target_not_object", pointer)
    last = tokens[-1]
    if last in current and not overwrite:
        return False
    current[last] = value
    return True


def read_source_value(exchange: RequestExchange, source: str) -> Any:
    """What an interceptor reads: text from ``query:``, ``form:``, ``header:`` or ``body``; the
    JSON value itself from ``json:`` (so that masking can apply its field-name rules to it
    before it is sent anywhere)."""
    kind, _, name = source.partition(":")
    if kind == "query":
        for key, value in _parse_pairs(exchange.current_query_string):
            if key == name:
                return _non_empty(value)
        raise SourceError("source_missing", f"no query parameter {name!r}")
    if kind == "header":
        header = exchange.headers.get(name)
        if header is None:
            raise SourceError("source_missing", f"no header {name!r}")
        return _non_empty(header)
    if kind == "form":
        if exchange.content_type != "application/x-www-form-urlencoded":
            if exchange.current_body is None:
                raise SourceError(exchange.body_skip_reason or "body_not_read")
            raise SourceError("unsupported_content_type", exchange.content_type or "none")
        for key, value in _parse_pairs(exchange.body_text()):
            if key == name:
                return _non_empty(value)
        raise SourceError("source_missing", f"no form field {name!r}")
    if kind == "json":
        document = exchange.body_json()
        try:
            value = json_pointer_get(document, name)
        except (KeyError, TypeError):
            raise SourceError("source_missing", f"no JSON value at {name!r}") from None
        if isinstance(value, str):
            return _non_empty(value)
        if value is None:
            raise SourceError("source_missing", f"JSON value at {name!r} is null")
        return value
    if kind == "body":
        return _non_empty(exchange.body_text())
    raise SourceError("bad_source", source)  # config validation makes this unreachable


def _parse_pairs(encoded: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(encoded, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise SourceError("undecodable", "percent-escapes are not UTF-8") from None


def _non_empty(value: str) -> str:
    if not value.strip():
        raise SourceError("source_missing", "empty value")
    return value


class ResponseExchange:
    """A complete, buffered response as response-side interceptors see it. They write
    ``new_body`` and ``set_headers``; adapters apply them (and recompute Content-Length)."""

    __slots__ = ("status", "headers", "body", "new_body", "set_headers", "_json")

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.new_body: bytes | None = None
        self.set_headers: dict[str, str] = {}
        self._json: tuple[bytes, Any] | None = None

    @property
    def content_type(self) -> str:
        return (self.headers.get("content-type") or "").split(";", 1)[0].strip().lower()

    @property
    def current_body(self) -> bytes:
        return self.new_body if self.new_body is not None else self.body

    def json(self) -> Any:
        body = self.current_body
        if self._json is not None and self._json[0] is body:
            return self._json[1]
        try:
            value = json.loads(body)
        except UnicodeDecodeError:
            raise SourceError("undecodable", "response is not UTF-8") from None
        except ValueError:
            raise SourceError("body_not_json", "response") from None
        self._json = (body, value)
        return value

    def headers_after(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The response's header list once interceptors changed it: Content-Length written
        once and recomputed, a strong ETag weakened when the body changed, interceptor
        headers set."""
        replaced = {k.lower() for k in self.set_headers}
        body_changed = self.new_body is not None
        out: list[tuple[str, str]] = []
        length_name: str | None = None
        for key, value in headers:
            lower = key.lower()
            if lower == "content-length":
                length_name = key  # the app's spelling is kept
                continue
            if lower in replaced:
                continue
            if lower == "etag" and body_changed:
                value = weak_etag(value)
            out.append((key, value))
        out.extend(self.set_headers.items())
        if length_name is not None or body_changed:
            out.append((length_name or "Content-Length", str(len(self.current_body))))
        return out

    def text(self) -> str:
        charset = charset_of(self.headers.get("content-type") or "")
        try:
            return self.current_body.decode(charset)
        except (UnicodeDecodeError, LookupError):
            raise SourceError("undecodable", f"response is not valid {charset}") from None


def weak_etag(value: str) -> str:
    """A changed body keeps its validator only as a weak one (RFC 9110 8.8.3)."""
    return value if value.startswith("W/") else f"W/{value}"
