"""A scripted, loopback-only fake LLM server for tests.

Built on raw ``asyncio`` streams in a background daemon thread (own event loop), so byte-level
behaviour is exact: hang before/after headers, drip the body one byte at a time, close mid-way,
stream a huge body. HTTP/1.1 keep-alive is supported (httpx reuses connections); request bodies
are read by ``Content-Length`` (or ``Transfer-Encoding: chunked``).

Usage::

    with FaultServer() as server:           # or the ``fault_server`` pytest fixture
        server.script(hang_after_headers(), reply({"category": "shoes"}))
        ...  # point a provider at server.url
        assert server.requests[0].json["model"] == "m"

Each incoming request pops the next scripted behaviour; when the queue is empty ``server.default``
answers (initially ``reply({"ok": True})``). Behaviours apply to any method and path; the reply
shape depends on the wire (``"openai"`` chat completions or ``"anthropic"`` messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

__all__ = [
    "Behaviour",
    "Captured",
    "CloseConnection",
    "Drip",
    "FaultServer",
    "HangAfterHeaders",
    "HangBeforeHeaders",
    "HugeBody",
    "InvalidJson",
    "RateLimited",
    "Reply",
    "Status",
    "close_connection",
    "drip",
    "hang_after_headers",
    "hang_before_headers",
    "huge_body",
    "invalid_json",
    "not_json_content",
    "rate_limited",
    "refused_url",
    "reply",
    "status",
]

Wire: TypeAlias = Literal["openai", "anthropic"]
Content: TypeAlias = dict[str, Any] | str

_HOST = "127.0.0.1"
_STOP_TIMEOUT = 1.5  # seconds; stop() as a whole stays under 2 s
_HANG_CONTENT_LENGTH = 100
_HUGE_CHUNK = 64 * 1024


# --------------------------------------------------------------------------- captured requests


@dataclass(frozen=True)
class Captured:
    """One request as the server received it."""

    method: str
    path: str  # the request target, query string included
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes
    json: Any | None  # parsed body, or None when it is not JSON
    at: float = 0.0  # time.monotonic() when the request was fully read


# --------------------------------------------------------------------------- behaviours


@dataclass(frozen=True)
class Reply:
    content: Content
    delay: float = 0.0
    usage: dict[str, Any] | None = None


@dataclass(frozen=True)
class HangBeforeHeaders:
    pass


@dataclass(frozen=True)
class HangAfterHeaders:
    content_length: int = _HANG_CONTENT_LENGTH


@dataclass(frozen=True)
class Drip:
    content: Content | bytes  # bytes: sent as the raw body; otherwise rendered like reply()
    interval: float = 0.2


@dataclass(frozen=True)
class Status:
    code: int
    body: str = '{"error": "boom"}'
    headers: dict[str, str] | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class RateLimited:
    retry_after: float = 1.0


@dataclass(frozen=True)
class InvalidJson:
    pass


@dataclass(frozen=True)
class HugeBody:
    n_bytes: int = 20_000_000
    chunk_size: int = _HUGE_CHUNK
    content_length: bool = True  # False: Transfer-Encoding: chunked, no size announced


@dataclass(frozen=True)
class CloseConnection:
    pass


Behaviour: TypeAlias = (
    Reply
    | HangBeforeHeaders
    | HangAfterHeaders
    | Drip
    | Status
    | RateLimited
    | InvalidJson
    | HugeBody
    | CloseConnection
)


def reply(content: Content, *, delay: float = 0.0, usage: dict[str, Any] | None = None) -> Reply:
    """A well-formed completion, after ``delay`` seconds. A dict is sent as JSON text
    (openai) or as a tool_use input (anthropic); a str is sent as is / as a text block."""
    return Reply(content=content, delay=delay, usage=usage)


def hang_before_headers() -> HangBeforeHeaders:
    """Read the request, then never answer (until stop())."""
    return HangBeforeHeaders()


def hang_after_headers() -> HangAfterHeaders:
    """Send the status line and headers (Content-Length: 100), then never send the body."""
    return HangAfterHeaders()


def drip(content: Content | bytes, interval: float = 0.2) -> Drip:
    """Send headers, then the body one byte every ``interval`` seconds.

    ``content`` is rendered like :func:`reply`; pass ``bytes`` to drip a raw body instead
    (a full completion is ~300 bytes, i.e. a minute at the default interval)."""
    return Drip(content=content, interval=interval)


def status(
    code: int,
    body: str = '{"error": "boom"}',
    headers: dict[str, str] | None = None,
    *,
    delay: float = 0.0,
) -> Status:
    """Answer ``code`` with ``body`` (content-type application/json unless overridden)."""
    return Status(code=code, body=body, headers=headers, delay=delay)


def rate_limited(retry_after: float = 1.0) -> RateLimited:
    """429 with a ``Retry-After`` header (seconds, e.g. ``1`` or ``0.5``)."""
    return RateLimited(retry_after=retry_after)


def invalid_json() -> InvalidJson:
    """200, content-type application/json, body ``{"choices": [`` (truncated)."""
    return InvalidJson()


def not_json_content(text: str = "I think the answer is shoes") -> Reply:
    """A well-formed completion whose message content is not JSON."""
    return Reply(content=text)


def huge_body(
    n_bytes: int = 20_000_000, *, chunk_size: int = _HUGE_CHUNK, content_length: bool = True
) -> HugeBody:
    """200 with a valid-looking completion start padded to ``n_bytes``, written in chunks.

    With ``content_length=False`` the body is sent chunked, so the size is not announced."""
    return HugeBody(n_bytes=n_bytes, chunk_size=chunk_size, content_length=content_length)


def close_connection() -> CloseConnection:
    """Read the request, then close the socket without answering."""
    return CloseConnection()


def refused_url() -> str:
    """An ``http://127.0.0.1:PORT/v1`` URL where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
    return f"http://{_HOST}:{port}/v1"


# --------------------------------------------------------------------------- rendering


def _reason(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def _head(code: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {code} {_reason(code)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _json_headers(length: int, extra: dict[str, str] | None = None) -> list[tuple[str, str]]:
    merged: dict[str, tuple[str, str]] = {
        "content-type": ("content-type", "application/json"),
        "server": ("server", "fault-server"),
    }
    for name, value in (extra or {}).items():
        if name.lower() not in ("content-length", "transfer-encoding"):
            merged[name.lower()] = (name, value)
    return [*merged.values(), ("content-length", str(length))]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(", ", ": ")).encode()


def _completion_body(
    wire: Wire, n: int, content: Content, usage: dict[str, Any] | None, request: Any | None
) -> bytes:
    req: dict[str, Any] = request if isinstance(request, dict) else {}
    model = req.get("model") if isinstance(req.get("model"), str) else "fake"
    if wire == "openai":
        text = content if isinstance(content, str) else json.dumps(content)
        return _dumps(
            {
                "id": f"chatcmpl-fault-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage or {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            }
        )
    block: dict[str, Any]
    if isinstance(content, str):
        block = {"type": "text", "text": content}
        stop_reason = "end_turn"
    else:
        tools = req.get("tools")
        name = "output"
        if isinstance(tools, list) and tools and isinstance(tools[0], dict):
            first = tools[0].get("name")
            if isinstance(first, str):
                name = first
        block = {"type": "tool_use", "id": "toolu_1", "name": name, "input": content}
        stop_reason = "tool_use"
    return _dumps(
        {
            "id": f"msg_fault_{n}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [block],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage or {"input_tokens": 11, "output_tokens": 7},
        }
    )


def _huge_payload_edges(n: int) -> tuple[bytes, bytes]:
    prefix = (
        f'{{"id": "chatcmpl-huge-{n}", "object": "chat.completion", "model": "fake", '
        '"choices": [{"index": 0, "message": {"role": "assistant", "content": "'
    ).encode()
    suffix = b'"}, "finish_reason": "stop"}]}'
    return prefix, suffix


# --------------------------------------------------------------------------- the server


class _ConnectionClosed(Exception):
    """The client went away (or sent a malformed request)."""


@dataclass
class _Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool = True
    parsed: Any | None = field(default=None)


class FaultServer:
    """Scripted fake LLM server on 127.0.0.1, in a background thread. See the module docstring."""

    def __init__(self, wire: Wire = "openai") -> None:
        if wire not in ("openai", "anthropic"):
            raise ValueError(f"wire must be 'openai' or 'anthropic', not {wire!r}")
        self.wire: Wire = wire
        self.requests: list[Captured] = []
        self.errors: list[BaseException] = []  # unexpected exceptions inside handlers
        self.connections = 0  # TCP connections accepted (keep-alive reuse shows as fewer)
        self.default: Behaviour = reply({"ok": True})
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._received = threading.Condition(self._lock)
        self._counter = itertools.count(1)
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ public API

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultServer is not started")
        return self._port

    @property
    def url(self) -> str:
        base = f"http://{_HOST}:{self.port}"
        return f"{base}/v1" if self.wire == "openai" else base

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours: each incoming request pops the next one."""
        with self._lock:
            self._queue.extend(behaviours)

    def reset(self) -> None:
        """Clear the queue and the captured requests; restore the default behaviour."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.errors.clear()
            self.connections = 0
            self.default = reply({"ok": True})

    def wait_for_requests(self, n: int, timeout: float = 2.0) -> bool:
        """Block until at least ``n`` requests were captured; False on timeout."""
        with self._received:
            return self._received.wait_for(lambda: len(self.requests) >= n, timeout)

    def start(self) -> FaultServer:
        if self._thread is not None:
            raise RuntimeError("FaultServer already started")
        self._thread = threading.Thread(target=self._run, name="fault-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout=5.0):
            raise RuntimeError("FaultServer did not start within 5 s")
        if self._start_error is not None:
            self._thread.join(timeout=_STOP_TIMEOUT)
            raise RuntimeError("FaultServer failed to start") from self._start_error
        return self

    def stop(self) -> None:
        """Close the listener and every connection (hanging ones included); join the thread."""
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(event.set)
        thread.join(timeout=_STOP_TIMEOUT + 0.4)
        if thread.is_alive():
            raise RuntimeError("FaultServer thread did not stop in time")

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{_HOST}:{self._port}" if self._port is not None else "not started"
        return f"<FaultServer {self.wire} {where} requests={len(self.requests)}>"

    # ------------------------------------------------------------------ event-loop thread

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to start()
            self._start_error = exc
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._started.set()  # never leave start() waiting

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._handle, _HOST, 0, limit=1 << 20)
        try:
            self._port = server.sockets[0].getsockname()[1]
            self._started.set()
            await self._stop_event.wait()
        finally:
            server.close()
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            if handlers:
                await asyncio.wait(handlers, timeout=_STOP_TIMEOUT)
            await server.wait_closed()

    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

    def _capture(self, request: _Request) -> None:
        captured = Captured(
            method=request.method,
            path=request.target,
            headers=dict(request.headers),
            body=request.body,
            json=request.parsed,
            at=time.monotonic(),
        )
        with self._received:
            self.requests.append(captured)
            self._received.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        with self._lock:
            self.connections += 1
        graceful = False
        try:
            while True:
                request = await _read_request(reader)
                if request is None:  # clean EOF between requests
                    graceful = True
                    return
                self._capture(request)
                behaviour = self._next_behaviour()
                keep_open = await self._respond(behaviour, request, reader, writer)
                if not keep_open or not request.keep_alive:
                    graceful = True
                    return
        except (_ConnectionClosed, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only stop() cancels handlers; the finally below aborts the socket. The task must
            # not end cancelled: Python 3.11's start_server done-callback calls task.exception()
            # on it and logs a spurious "Exception in callback" traceback.
            pass
        except Exception as exc:  # kept in self.errors for debugging
            self.errors.append(exc)
        finally:
            self._handlers.discard(task)
            await _close(writer, graceful=graceful)

    async def _respond(
        self,
        behaviour: Behaviour,
        request: _Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Send the answer; return whether the connection may serve another request."""
        n = next(self._counter)
        match behaviour:
            case Reply(content=content, delay=delay, usage=usage):
                if delay > 0:
                    await asyncio.sleep(delay)
                body = _completion_body(self.wire, n, content, usage, request.parsed)
                await _send(writer, _head(200, _json_headers(len(body))) + body)
                return True
            case Status(code=code, body=text, headers=headers, delay=delay):
                if delay > 0:
                    await asyncio.sleep(delay)
                body = text.encode()
                await _send(writer, _head(code, _json_headers(len(body), headers)) + body)
                return True
            case RateLimited(retry_after=retry_after):
                body = _dumps(
                    {
                        "error": {
                            "message": "Rate limit reached (fault server)",
                            "type": "rate_limit_error",
                            "code": "rate_limit_exceeded",
                        }
                    }
                )
                extra = {"retry-after": f"{retry_after:g}"}
                await _send(writer, _head(429, _json_headers(len(body), extra)) + body)
                return True
            case InvalidJson():
                body = b'{"choices": ['
                await _send(writer, _head(200, _json_headers(len(body))) + body)
                return True
            case HangBeforeHeaders():
                await _until_client_closes(reader)
                return False
            case HangAfterHeaders(content_length=length):
                await _send(writer, _head(200, _json_headers(length)))
                await _until_client_closes(reader)
                return False
            case Drip(content=content, interval=interval):
                if isinstance(content, bytes):
                    body = content
                else:
                    body = _completion_body(self.wire, n, content, None, request.parsed)
                await _send(writer, _head(200, _json_headers(len(body))))
                for i in range(len(body)):
                    await asyncio.sleep(interval)
                    await _send(writer, body[i : i + 1])
                return True
            case HugeBody(n_bytes=size, chunk_size=chunk, content_length=announce):
                await self._send_huge(writer, n, size, max(1, chunk), announce)
                return True
            case CloseConnection():
                return False
        raise TypeError(f"unknown behaviour: {behaviour!r}")

    async def _send_huge(
        self, writer: asyncio.StreamWriter, n: int, size: int, chunk: int, announce: bool
    ) -> None:
        prefix, suffix = _huge_payload_edges(n)
        if size < len(prefix) + len(suffix):
            prefix, suffix = prefix[:size], b""
        pad = size - len(prefix) - len(suffix)
        if announce:
            headers = _json_headers(size)
        else:
            headers = [(k, v) for k, v in _json_headers(0) if k != "content-length"]
            headers.append(("transfer-encoding", "chunked"))
        await _send(writer, _head(200, headers))

        async def emit(data: bytes) -> None:
            if not data:
                return
            await _send(writer, data if announce else b"%x\r\n%b\r\n" % (len(data), data))

        await emit(prefix)
        filler = b"x" * chunk
        while pad > 0:
            step = min(pad, chunk)
            await emit(filler[:step])
            pad -= step
        await emit(suffix)
        if not announce:
            await _send(writer, b"0\r\n\r\n")


# --------------------------------------------------------------------------- stream helpers


async def _until_client_closes(reader: asyncio.StreamReader) -> None:
    """Hang: never answer; return once the client closes its side (or stop() cancels)."""
    while await reader.read(65536):
        pass


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def _close(writer: asyncio.StreamWriter, *, graceful: bool) -> None:
    if graceful:
        writer.close()
    else:  # hanging, cancelled or broken: drop unsent data, close the socket now
        writer.transport.abort()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(writer.wait_closed(), timeout=0.5)


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _ConnectionClosed("truncated request head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise _ConnectionClosed("request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError as exc:
        raise _ConnectionClosed(f"bad request line: {lines[0]!r}") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        key, value = name.strip().lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value

    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        length = int(headers.get("content-length", "0") or "0")
        body = await reader.readexactly(length) if length > 0 else b""

    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (
        version.upper() != "HTTP/1.0" or "keep-alive" in connection
    )
    parsed: Any | None = None
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
    return _Request(method.upper(), target, headers, body, keep_alive, parsed)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
