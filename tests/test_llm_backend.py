"""The LLM client's asyncio network backend for httpcore, on its own, over loopback sockets."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpcore
import pytest

from fault_server import refused_url
from llm_middleware.llm.backend import AsyncioBackend

# The backend serves the client's own background loop, which is always asyncio.
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        for writer in writers:
            writer.close()
        await srv.wait_closed()


async def echo_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    line = await reader.readline()
    writer.write(b"got " + line)
    await writer.drain()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(5)  # never answers (the test ends first)


async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def test_round_trip_and_extra_info() -> None:
    async with server(echo_line) as port:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=2)
        try:
            assert stream.get_extra_info("server_addr")[1] == port
            assert stream.get_extra_info("ssl_object") is None
            assert stream.get_extra_info("is_readable") is False  # nothing sent yet
            await stream.write(b"hello\n", timeout=2)
            assert await stream.read(100, timeout=2) == b"got hello\n"
            assert await stream.read(100, timeout=2) == b""  # the server closed: EOF
        finally:
            await stream.aclose()


async def test_read_timeout_is_httpcore_read_timeout_and_bounded() -> None:
    async with server(silent) as port:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=2)
        try:
            started = time.monotonic()
            with pytest.raises(httpcore.ReadTimeout):
                await stream.read(100, timeout=0.05)
            waited = time.monotonic() - started
            assert 0.05 <= waited < 1.0
            assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]
        finally:
            await stream.aclose()


async def test_idle_connection_closed_by_peer_reads_as_readable() -> None:
    # httpcore's test for an expired keep-alive connection.
    async with server(close_at_once) as port:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=2)
        try:
            for _ in range(100):
                if stream.get_extra_info("is_readable"):
                    break
                await asyncio.sleep(0.01)
            assert stream.get_extra_info("is_readable") is True
        finally:
            await stream.aclose()


async def test_refused_connection_is_connect_error() -> None:
    port = int(refused_url().rsplit(":", 1)[1].split("/", 1)[0])
    with pytest.raises(httpcore.ConnectError):
        await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=2)


async def test_write_to_closed_connection_is_write_error() -> None:
    async with server(echo_line) as port:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=2)
        await stream.aclose()
        with pytest.raises(httpcore.WriteError):
            await stream.write(b"late\n", timeout=1)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_start_tls_verifies_and_carries_data(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with server(echo_line, server_side) as port:
        backend = AsyncioBackend()
        plain = await backend.connect_tcp("127.0.0.1", port, timeout=2)
        stream = await plain.start_tls(trusting, server_hostname="localhost", timeout=5)
        try:
            assert stream.get_extra_info("ssl_object") is not None
            await stream.write(b"secret\n", timeout=2)
            assert await stream.read(100, timeout=2) == b"got secret\n"
        finally:
            await stream.aclose()
        # Not trusted: the handshake fails as a connect error, not a hang or a raw SSLError.
        plain = await backend.connect_tcp("127.0.0.1", port, timeout=2)
        with pytest.raises(httpcore.ConnectError):
            await plain.start_tls(ssl.create_default_context(), "localhost", timeout=5)
