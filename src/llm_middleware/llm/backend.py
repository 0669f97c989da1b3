"""An httpcore network backend on plain asyncio streams, for the LLM client's own loop.

The LLM client's pools only ever run on ``bridge.BACKGROUND``, an asyncio loop of ours, so
they need none of anyio's portability: its per-operation cancel scopes, checkpoints and
attribute lookups were about a third of httpcore's CPU per call (issue 14). Semantics are
httpcore's ``AnyIOBackend``'s: every operation bounded by its own timeout, raising httpcore's
``*Timeout`` / ``*Error`` exceptions; a timed-out operation ends inside the backend (the
caller's task is never cancelled from outside).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
from httpcore._utils import is_socket_readable

_Option = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class AsyncioStream(httpcore.AsyncNetworkStream):
    __slots__ = ("_reader", "_writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        reader = self._reader
        if reader._buffer:  # type: ignore[attr-defined]  # already here: no timer needed
            return await reader.read(max_bytes)
        try:
            async with asyncio.timeout(timeout):
                return await reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout(f"no data within {timeout} s") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            await write_all(self._writer, buffer, timeout)

    async def aclose(self) -> None:
        # Close without waiting for the peer: a provider that hangs must not hold us here.
        self._writer.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError:
            self._writer.close()
            raise httpcore.ConnectTimeout(f"TLS handshake over {timeout} s") from None
        except (OSError, ssl.SSLError) as exc:
            self._writer.close()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from None
        return AsyncioStream(self._reader, self._writer)

    def get_extra_info(self, info: str) -> Any:
        writer = self._writer
        if info == "ssl_object":
            return writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return writer.get_extra_info("sockname")
        if info == "server_addr":
            return writer.get_extra_info("peername")
        if info == "socket":
            return writer.get_extra_info("socket")
        if info == "is_readable":
            sock = writer.get_extra_info("socket")
            return is_socket_readable(sock)
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[_Option] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, local_addr=(local_address, 0) if local_address else None
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection within {timeout} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from None
        _set_options(writer, socket_options)
        return AsyncioStream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[_Option] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection within {timeout} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from None
        _set_options(writer, socket_options)
        return AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _set_options(writer: asyncio.StreamWriter, options: Iterable[_Option] | None) -> None:
    sock: socket.socket | None = writer.get_extra_info("socket")
    if sock is None or not options:
        return
    with contextlib.suppress(OSError):
        for option in options:
            sock.setsockopt(*option)


async def write_all(writer: asyncio.StreamWriter, data: bytes, timeout: float | None) -> None:
    """Write ``data``, waiting for the socket to drain only when it did not take it all at
    once; errors as httpcore's (``WriteTimeout``, ``WriteError``). Shared by the httpcore
    backend and the HTTP/1.1 pool."""
    try:
        if writer.transport.is_closing():
            raise httpcore.WriteError("connection closed")
        writer.write(data)
        if writer.transport.get_write_buffer_size() == 0:
            return  # all of it went to the socket at once: nothing to wait for
        async with asyncio.timeout(timeout):
            await writer.drain()
    except TimeoutError:
        raise httpcore.WriteTimeout(f"could not write within {timeout} s") from None
    except OSError as exc:
        raise httpcore.WriteError(str(exc) or type(exc).__name__) from None
