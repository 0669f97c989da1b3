"""Sync callers (WSGI, Flask, Django sync) drive the async core on one background event loop
per process, waiting at most the time the request's budget has left."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio

from .inline import inline

T = TypeVar("T")


class BackgroundLoop:
    """Started lazily; re-created in a forked child (gunicorn ``--preload``), where the
    parent's loop thread does not exist."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and self._pid == os.getpid():
            return loop
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="llm-middleware-loop", daemon=True
                )
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def current(self) -> asyncio.AbstractEventLoop | None:
        """The loop if it was started in this process, else ``None`` (never starts it)."""
        return self._loop if self._pid == os.getpid() else None

    def on_thread(self) -> bool:
        """Is the caller running on the loop's own thread?"""
        thread = self._thread
        return thread is not None and thread.ident == threading.get_ident()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop; after ``timeout`` seconds cancel it and raise TimeoutError."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop())
        try:
            return future.result(timeout=max(0.0, timeout))
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError from None

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` as a task on the loop, in a fresh context: nothing of the caller's
        context variables (a trio run's async-library marker, which httpcore reads to pick
        its locks; request-bound values) reaches work that outlives the request."""
        return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, self.loop())

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._loop = None
        self._thread = None
        self._pid = 0

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread


BACKGROUND = BackgroundLoop()
os.register_at_fork(after_in_child=BACKGROUND._after_fork)


async def wait_future(future: concurrent.futures.Future[T], timeout: float) -> T:
    """Wait at most ``timeout`` seconds for a future that another thread completes (the
    background loop, a worker pool), under whatever async library runs the caller: asyncio
    or trio, through anyio. Raises ``TimeoutError`` when the time is up; never cancels
    ``future`` (the work it stands for ends by its own bounds), so nothing is ever cut off
    in the middle of a connection pool's bookkeeping.

    The waiter is woken by a callback scheduled on its own loop; if that loop has gone away
    the callback is dropped. In an inline run (a sync adapter's request thread, no loop of
    ours) the wait blocks the thread instead."""
    if future.done():
        return future.result()
    if inline():
        return _wait_blocking(future, timeout)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: trio (anyio supports no other backend)
        return await _wait_anyio(future, timeout)
    return await _wait_asyncio(loop, future, timeout)


async def _wait_asyncio(
    loop: asyncio.AbstractEventLoop, future: concurrent.futures.Future[T], timeout: float
) -> T:
    # Plain asyncio (one loop future, one timer): anyio's event and cancel scope cost more
    # than the rest of the wait, twice per LLM call (issue 14).
    waiter: asyncio.Future[None] = loop.create_future()
    own_thread = threading.get_ident()

    def wake(_: concurrent.futures.Future[Any]) -> None:
        if threading.get_ident() == own_thread:  # completed on this loop's own thread
            _release(waiter)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(_release, waiter)

    future.add_done_callback(wake)
    timer = loop.call_later(max(0.0, timeout), _release, waiter)
    try:
        await waiter
    finally:
        timer.cancel()
        if not future.done():
            # Drop our callback: a future that outlives many waiters must not pin theirs.
            with contextlib.suppress(ValueError):
                future._done_callbacks.remove(wake)  # type: ignore[attr-defined]
    if not future.done():
        raise TimeoutError
    return future.result()


def _wait_blocking(future: concurrent.futures.Future[T], timeout: float) -> T:
    # The sync caller's own thread: it would block on the background loop's answer anyway.
    # Never cancels ``future`` (as the loop-side waits).
    try:
        return future.result(timeout=max(0.0, timeout))
    except TimeoutError:
        if future.done():
            raise  # the work's own outcome, not our wait's
        raise TimeoutError from None


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _wait_anyio(future: concurrent.futures.Future[T], timeout: float) -> T:
    event = anyio.Event()
    wake = _waker(event)
    future.add_done_callback(wake)
    with anyio.move_on_after(max(0.0, timeout)):
        await event.wait()
    if not future.done():
        # Drop our callback: a future that outlives many waiters must not pin their events.
        with contextlib.suppress(ValueError):
            future._done_callbacks.remove(wake)  # type: ignore[attr-defined]
        raise TimeoutError
    return future.result()


def _waker(event: anyio.Event) -> Callable[[concurrent.futures.Future[Any]], None]:
    import trio

    token = trio.lowlevel.current_trio_token()

    def wake_trio(_: concurrent.futures.Future[Any]) -> None:
        with contextlib.suppress(Exception):  # the run has finished
            token.run_sync_soon(event.set)

    return wake_trio
