"""Sync callers (WSGI, Flask, Django sync) drive the async core on one background event loop
per process, waiting at most the time the request's budget has left."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

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

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop; after ``timeout`` seconds cancel it and raise TimeoutError."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop())
        try:
            return future.result(timeout=max(0.0, timeout))
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError from None

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop())

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
