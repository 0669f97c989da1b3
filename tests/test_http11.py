"""The LLM client's own HTTP/1.1 pool, against scripted loopback servers: framing, keep-alive,
stale connections, malformed answers, timeouts."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpcore
import pytest

from fault_server import FaultServer, reply
from llm_middleware import load_config
from llm_middleware.deadline import Deadline
from llm_middleware.llm import CallStats, LLMClient, LLMConfigError
from llm_middleware.llm.http11 import Pool, Response
from llm_middleware.llm.prompts import default_prompt
from schemas import SearchIntent

# The pool serves the client's own background loop, which is always asyncio.
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEAD = b"POST /v1/x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n"


class Script:
    """A loopback server that reads each request head + body and answers with the next of
    ``answers`` (raw bytes; ``None``: close the connection instead). ``one_each``: close
    every connection after its first answer."""

    def __init__(
        self, *answers: bytes | None, keep_open: bool = True, one_each: bool = False
    ) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.requests: list[bytes] = []
        self.keep_open = keep_open
        self.one_each = one_each
        self.handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.one_each:
                    return
            while self.keep_open:
                await asyncio.sleep(0.05)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serve(script: Script) -> AsyncIterator[tuple[bytes, bytes, int]]:
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    try:
        yield (b"http", b"127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        script.keep_open = False
        server.close()
        await asyncio.sleep(0.01)  # handlers of just-accepted connections start (and close)
        for task in script.handlers:
            task.cancel()
        await asyncio.gather(*script.handlers, return_exceptions=True)
        await server.wait_closed()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def fetch(pool: Pool, origin: tuple[bytes, bytes, int], timeout: float = 2.0) -> bytes:
    response = await pool.send(origin, HEAD, b"{}", timeout)
    try:
        return await read_all(response)
    finally:
        pool.release(response)


async def read_all(response: Response) -> bytes:
    chunks = []
    while chunk := await response.read_chunk():
        chunks.append(chunk)
    return b"".join(chunks)


def new_pool(expiry: float = 5.0) -> Pool:
    return Pool(ssl.create_default_context(), 4, expiry)


async def test_content_length_answers_reuse_one_connection() -> None:
    script = Script(ok(b"one"), ok(b"two"), ok(b""))
    async with serve(script) as origin:
        pool = new_pool()
        assert [await fetch(pool, origin) for _ in range(3)] == [b"one", b"two", b""]
        pool.close_all()
    assert script.connections == 1
    assert script.requests[0] == HEAD + b"{}"


async def test_chunked_answer_with_extension_and_trailer() -> None:
    body = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    script = Script(body, ok(b"next"))
    async with serve(script) as origin:
        pool = new_pool()
        assert await fetch(pool, origin) == b"abcdefg"
        assert await fetch(pool, origin) == b"next"  # the chunked answer left it reusable
        pool.close_all()
    assert script.connections == 1


async def test_interim_answer_is_skipped() -> None:
    script = Script(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"))
    async with serve(script) as origin:
        pool = new_pool()
        response = await pool.send(origin, HEAD, b"{}", 2.0)
        assert response.status == 200 and await read_all(response) == b"final"
        pool.release(response)
        pool.close_all()


async def test_endless_interim_answers_end_within_one_timeout() -> None:
    """A server that answers "100 Continue" every 20 ms forever: the head has one timer in
    all, so the call ends as a ReadTimeout near ``timeout``, not never."""

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            for _ in range(1000):  # bounded: 20 s at most, far past the timeout below
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.02)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    origin = (b"http", b"127.0.0.1", server.sockets[0].getsockname()[1])
    pool = new_pool()
    timeout = 0.3
    started = time.monotonic()
    try:
        with pytest.raises(httpcore.ReadTimeout):
            await pool.send(origin, HEAD, b"{}", timeout)
        elapsed = time.monotonic() - started
        # Without the single timer this never ends (each interim answer restarts it); the
        # bound is many timeouts wide so a busy machine cannot fail it.
        assert elapsed < timeout * 10
    finally:
        pool.close_all()
        server.close()
        await server.wait_closed()


async def test_endless_trailers_are_refused() -> None:
    """A chunked answer whose trailer section never ends: refused after a bounded number of
    lines instead of read forever."""
    trailers = b"X-T: t\r\n" * 500
    script = Script(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n" + trailers
    )
    async with serve(script) as origin:
        pool = new_pool()
        response = await pool.send(origin, HEAD, b"{}", 2.0)
        assert await response.read_chunk() == b"hi"
        with pytest.raises(httpcore.RemoteProtocolError, match="trailer"):
            await response.read_chunk()
        pool.release(response)
        assert pool.idle_count() == 0  # not reused
        pool.close_all()


async def test_close_delimited_and_connection_close_are_not_reused() -> None:
    script = Script(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nho",
        b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
        keep_open=False,
    )
    async with serve(script) as origin:
        pool = new_pool()
        assert await fetch(pool, origin) == b"hi"
        assert await fetch(pool, origin) == b"ho"
        assert await fetch(pool, origin) == b"until the end"
        assert pool.idle_count() == 0
        pool.close_all()
    assert script.connections == 3


async def test_connection_closed_while_idle_is_replaced() -> None:
    # The server closes after one answer: the idle connection is found stale, a new one opens.
    script = Script(ok(b"a"), ok(b"b"), one_each=True)
    async with serve(script) as origin:
        pool = new_pool()
        assert await fetch(pool, origin) == b"a"
        await asyncio.sleep(0.1)  # the server's close arrives
        assert await fetch(pool, origin) == b"b"
        pool.close_all()
    assert script.connections == 2


async def test_keepalive_expiry() -> None:
    script = Script(ok(b"a"), ok(b"b"), ok(b"c"))
    async with serve(script) as origin:
        pool = new_pool(expiry=0.05)
        assert await fetch(pool, origin) == b"a"
        assert await fetch(pool, origin) == b"b"  # within the expiry: reused
        await asyncio.sleep(0.1)
        assert await fetch(pool, origin) == b"c"  # expired: a new connection
        pool.close_all()
    assert script.connections == 2


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"garbage\r\n\r\n", httpcore.RemoteProtocolError),
        (b"HTTP/1.1 abc OK\r\n\r\n", httpcore.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", httpcore.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", httpcore.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", httpcore.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", httpcore.RemoteProtocolError),
        (None, httpcore.RemoteProtocolError),  # closed without an answer
    ],
)
async def test_malformed_answers_are_protocol_errors(
    answer: bytes | None, error: type[Exception]
) -> None:
    async with serve(Script(answer, keep_open=False)) as origin:
        pool = new_pool()
        with pytest.raises(error):
            await fetch(pool, origin)
        assert pool.idle_count() == 0
        pool.close_all()


async def test_body_cut_short_is_an_error_not_a_short_body() -> None:
    script = Script(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", one_each=True)
    async with serve(script) as origin:
        pool = new_pool()
        response = await pool.send(origin, HEAD, b"{}", 2.0)
        try:
            with pytest.raises(httpcore.RemoteProtocolError):
                await read_all(response)
        finally:
            pool.release(response)
        assert pool.idle_count() == 0
        pool.close_all()


async def test_timeouts_end_inside_and_are_bounded() -> None:
    async with serve(Script()) as origin:  # accepts, never reads nor answers
        pool = new_pool()
        try:
            started = time.monotonic()
            with pytest.raises(httpcore.ReadTimeout):
                await pool.send(origin, HEAD, b"{}", 0.05)
            assert 0.05 <= time.monotonic() - started < 1.0
            task = asyncio.current_task()
            assert task is not None and not task.cancelling()
            assert pool.idle_count() == 0
        finally:
            pool.close_all()


async def test_closed_pool_refuses_and_closes_busy_connections() -> None:
    script = Script(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    async with serve(script) as origin:
        pool = new_pool()
        response = await pool.send(origin, HEAD, b"{}", 2.0)
        pool.close_all()  # shutdown while the body is on its way: the read fails, ends
        with pytest.raises((httpcore.RemoteProtocolError, httpcore.ReadError)):
            await read_all(response)
        pool.release(response)
        with pytest.raises(httpcore.ConnectError):
            await pool.send(origin, HEAD, b"{}", 2.0)


async def test_header_injection_through_config_is_refused(fault_server: FaultServer) -> None:
    fault_server.default = reply({"category": "shoes"})
    provider = {
        "kind": "openai",
        "base_url": fault_server.url,
        "model": "m",
        "headers": {"x-team": "a\r\nx-evil: 1"},
    }
    client = LLMClient(load_config({"providers": [provider]}))
    try:
        with pytest.raises(LLMConfigError) as raised:
            await client.structured(
                SearchIntent,
                default_prompt(SearchIntent, "intent"),
                "red shoes",
                Deadline(1.0),
                CallStats(),
            )
    finally:
        await client.aclose()
    assert raised.value.reason == "bad_header"
    assert fault_server.requests == []  # nothing was sent


def test_route_head_and_origin() -> None:
    from llm_middleware.llm.client import _Route

    route = _Route.of("http://[::1]:9000/v1/chat/completions?x=1")
    assert route.origin == (b"http", b"::1", 9000)
    assert route.head.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: [::1]:9000\r\n")
    default = _Route.of("https://api.example.com/v1/messages")
    assert default.origin == (b"https", b"api.example.com", 443)
    assert b"Host: api.example.com\r\n" in default.head  # the default port is not named


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_https_origin_verifies_and_reuses(tmp_path: Path) -> None:
    from test_llm_backend import _self_signed

    cert, key = _self_signed(tmp_path)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    script = Script(ok(b"secure"), ok(b"again"))
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=server_side)
    port = server.sockets[0].getsockname()[1]
    trusting = Pool(ssl.create_default_context(cafile=str(cert)), 4, 5.0)
    untrusting = new_pool()
    try:
        origin = (b"https", b"localhost", port)
        assert await fetch(trusting, origin) == b"secure"
        assert await fetch(trusting, origin) == b"again"
        assert script.connections == 1
        with pytest.raises(httpcore.ConnectError):  # not trusted: no request is sent
            await fetch(untrusting, origin)
        assert len(script.requests) == 2
    finally:
        trusting.close_all()
        untrusting.close_all()
        script.keep_open = False
        server.close()
        await asyncio.sleep(0.01)
        for task in script.handlers:
            task.cancel()
        await asyncio.gather(*script.handlers, return_exceptions=True)
        await server.wait_closed()
