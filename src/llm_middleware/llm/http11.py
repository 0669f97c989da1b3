"""A small HTTP/1.1 client for the LLM calls: keep-alive pool, one request per connection at a
time, every phase bounded by its own timeout, on plain asyncio streams.

Why not httpcore: for one POST and a JSON answer of a few hundred bytes, httpcore's pool (its
locks, traces, h11's event machinery) cost about as much CPU as the rest of an LLM call
together (issue 14: a plain-stream prototype took a call from 0.94 to 0.46 ms of CPU against
httpcore, A/B in one run). Only what the client needs is
here: ``POST`` with a body of known length, answers framed by ``Content-Length``, chunked
transfer encoding or the end of the connection, ``http`` and ``https``. Routes through a
proxy stay on httpcore (see ``client``).

Errors are httpcore's exception classes (``ConnectTimeout``, ``ReadError``, ...), so callers
handle both paths alike. Nothing here is ever cancelled from outside: a timed-out operation
ends inside, as a ``*Timeout`` exception.
"""

from __future__ import annotations

import asyncio
import ssl
import time

import httpcore

from .backend import write_all

_MAX_HEAD = 64 * 1024  # status line and headers (asyncio's default stream limit)
_CHUNK = 64 * 1024
_MAX_TRAILERS = 100


Origin = tuple[bytes, bytes, int]  # scheme, host, port


class Connection:
    __slots__ = ("reader", "writer", "origin", "idle_until")

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.origin = origin
        self.idle_until = 0.0

    def stale(self, now: float) -> bool:
        """Expired, closed, or the server said something unasked (EOF, stray bytes)."""
        return (
            now > self.idle_until
            or self.writer.is_closing()
            or self.reader.at_eof()
            or bool(self.reader._buffer)  # type: ignore[attr-defined]
        )

    def close(self) -> None:
        self.writer.close()


class Response:
    """The status and headers of an answer; the body is read with ``read_chunk``."""

    __slots__ = ("status", "headers", "_conn", "_timeout", "_left", "_chunked", "_done", "_keep")

    def __init__(
        self,
        conn: Connection,
        status: int,
        headers: list[tuple[bytes, bytes]],
        timeout: float,
        keep_alive: bool,
    ) -> None:
        self.status = status
        self.headers = headers
        self._conn = conn
        self._timeout = timeout
        self._keep = keep_alive
        self._chunked = False
        self._left = -1  # bytes of the body (or of the current chunk) still to read; -1: to EOF
        self._done = False
        if status in (204, 304):
            self._left, self._done = 0, True
            return
        encoding = self.header(b"transfer-encoding")
        if encoding is not None and encoding.lower().strip() != b"identity":
            if encoding.lower().rsplit(b",", 1)[-1].strip() != b"chunked":
                raise httpcore.RemoteProtocolError("unsupported transfer-encoding")
            self._chunked, self._left = True, 0
            return
        length = self.header(b"content-length")
        if length is not None:
            value = length.strip()
            if not value.isdigit():
                raise httpcore.RemoteProtocolError("bad content-length")
            self._left = int(value)
            self._done = self._left == 0
        else:
            self._keep = False  # framed by the end of the connection

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def read_chunk(self) -> bytes:
        """The next piece of the body; ``b""`` once it is complete."""
        if self._done:
            return b""
        reader = self._conn.reader
        if self._chunked:
            if self._left == 0:
                line = await self._read(reader.readuntil(b"\r\n"), reader)
                size = line.split(b";", 1)[0].strip()
                try:
                    self._left = int(size, 16)
                except ValueError:
                    raise httpcore.RemoteProtocolError("bad chunk size") from None
                if self._left == 0:
                    await self._trailers(reader)
                    self._done = True
                    return b""
            data = await self._read(reader.read(min(self._left, _CHUNK)), reader)
            if not data:
                raise httpcore.RemoteProtocolError("connection closed inside a chunk")
            self._left -= len(data)
            if self._left == 0 and await self._read(reader.readexactly(2), reader) != b"\r\n":
                raise httpcore.RemoteProtocolError("chunk not followed by CRLF")
            return data
        if self._left < 0:  # to EOF
            data = await self._read(reader.read(_CHUNK), reader)
            if not data:
                self._done = True
            return data
        data = await self._read(reader.read(min(self._left, _CHUNK)), reader)
        if not data:
            raise httpcore.RemoteProtocolError("connection closed before the end of the body")
        self._left -= len(data)
        self._done = self._left == 0
        return data

    async def _trailers(self, reader: asyncio.StreamReader) -> None:
        """Skip the trailer section: at most ``_MAX_TRAILERS`` lines under one timer, so a
        server dripping trailer lines cannot keep the call alive."""
        try:
            async with asyncio.timeout(self._timeout):
                for _ in range(_MAX_TRAILERS):
                    if await reader.readuntil(b"\r\n") == b"\r\n":
                        return
        except TimeoutError:
            raise httpcore.ReadTimeout(f"no end of trailers within {self._timeout} s") from None
        except asyncio.IncompleteReadError:
            raise httpcore.RemoteProtocolError("connection closed inside the trailers") from None
        except asyncio.LimitOverrunError:
            raise httpcore.RemoteProtocolError("trailer line too long") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from None
        raise httpcore.RemoteProtocolError("too many trailer lines")

    async def _read(self, operation: object, reader: asyncio.StreamReader) -> bytes:
        try:
            if reader._buffer:  # type: ignore[attr-defined]  # likely complete: no timer
                return await operation  # type: ignore[no-any-return, misc]
            async with asyncio.timeout(self._timeout):
                return await operation  # type: ignore[no-any-return, misc]
        except TimeoutError:
            raise httpcore.ReadTimeout(f"no data within {self._timeout} s") from None
        except asyncio.IncompleteReadError:
            raise httpcore.RemoteProtocolError("connection closed inside the body") from None
        except asyncio.LimitOverrunError:
            raise httpcore.RemoteProtocolError("line too long") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from None

    @property
    def reusable(self) -> bool:
        return self._done and self._keep


class Pool:
    """Keep-alive connections by origin. Connections are not capped here: the LLM client's
    in-flight cap bounds how many are busy; at most ``max_idle`` wait per origin."""

    __slots__ = ("_ssl", "_max_idle", "_expiry", "_idle", "_busy", "closed")

    def __init__(self, ssl_context: ssl.SSLContext, max_idle: int, keepalive_expiry: float) -> None:
        self._ssl = ssl_context
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._idle: dict[Origin, list[Connection]] = {}
        self._busy: set[Connection] = set()
        self.closed = False

    async def send(
        self,
        origin: Origin,
        head: bytes,
        content: bytes,
        timeout: float,
    ) -> Response:
        """Write ``head`` + ``content`` on an idle or new connection to ``origin`` (scheme,
        host, port); return the answer once its headers are in. The caller reads the body,
        then hands the response to ``release``, whatever happened."""
        if self.closed:
            raise httpcore.ConnectError("the client is closed")
        conn = self._take(origin)
        if conn is None:
            conn = await self._connect(origin, timeout)
        self._busy.add(conn)
        try:
            await write_all(conn.writer, head + content, timeout)
            return await _read_head(conn, timeout)
        except BaseException:
            self._busy.discard(conn)
            conn.close()
            raise

    def release(self, response: Response) -> None:
        conn = response._conn
        self._busy.discard(conn)
        if self.closed or not response.reusable or conn.writer.is_closing():
            conn.close()
            return
        conn.idle_until = time.monotonic() + self._expiry
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) >= self._max_idle:
            conn.close()
            return
        idle.append(conn)

    def close_all(self) -> None:
        """Close every connection: idle ones, and busy ones, whose calls then fail on
        their closed connection and end normally (never cancelled)."""
        self.closed = True
        idle, self._idle = self._idle, {}
        busy, self._busy = self._busy, set()
        for conns in idle.values():
            for conn in conns:
                conn.close()
        for conn in busy:
            conn.close()

    def idle_count(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    def _take(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have expired
            if not conn.stale(now):
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin, timeout: float) -> Connection:
        scheme, host, port = origin
        name = host.decode("ascii")
        tls = scheme == b"https"
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    name.strip("[]"),
                    port,
                    ssl=self._ssl if tls else None,
                    server_hostname=name.strip("[]") if tls else None,
                    limit=_MAX_HEAD,
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection within {timeout} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from None
        return Connection(reader, writer, origin)


async def _read_head(conn: Connection, timeout: float) -> Response:
    reader = conn.reader
    # One timer for the whole head, interim answers included: a server that sends
    # "100 Continue" forever must not keep the call (and its in-flight slot) alive.
    loop = asyncio.get_running_loop()
    ends = loop.time() + timeout
    while True:
        try:
            async with asyncio.timeout_at(ends):
                raw = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            raise httpcore.ReadTimeout(f"no answer within {timeout} s") from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise httpcore.RemoteProtocolError(
                    "Server disconnected without sending a response."
                ) from None
            raise httpcore.RemoteProtocolError("connection closed inside the headers") from None
        except asyncio.LimitOverrunError:
            raise httpcore.RemoteProtocolError("headers too large") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from None
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise httpcore.RemoteProtocolError("not an HTTP/1.x status line")
        status = int(parts[1])
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise httpcore.RemoteProtocolError("malformed header line")
            headers.append((name.lower(), value.strip()))
        if 100 <= status < 200:
            continue  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        connection = b""
        for name, value in headers:
            if name == b"connection":
                connection += value.lower()
        keep_alive = parts[0] == b"HTTP/1.1" and b"close" not in connection
        return Response(conn, status, headers, timeout, keep_alive)
