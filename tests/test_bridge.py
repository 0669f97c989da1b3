"""``bridge.wait_future``: a backend-neutral wait on work done by another thread."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

import anyio
import pytest

from llm_middleware.bridge import wait_future

BACKENDS = ["asyncio", "trio"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_result_from_another_thread(backend: str) -> None:
    future: concurrent.futures.Future[int] = concurrent.futures.Future()
    threading.Timer(0.02, future.set_result, args=(42,)).start()

    async def main() -> int:
        return await wait_future(future, 5.0)

    assert anyio.run(main, backend=backend) == 42


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeout_leaves_the_future_running(backend: str) -> None:
    future: concurrent.futures.Future[int] = concurrent.futures.Future()

    async def main() -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await wait_future(future, 0.05)
        return time.monotonic() - started

    waited = anyio.run(main, backend=backend)
    assert waited >= 0.05
    assert not future.cancelled() and not future.done()
    assert future._done_callbacks == []  # type: ignore[attr-defined]  # the waiter's is gone
    future.set_result(1)  # completing it later wakes nobody and raises nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_exception_is_raised_in_the_waiter(backend: str) -> None:
    future: concurrent.futures.Future[int] = concurrent.futures.Future()
    future.set_exception(ValueError("boom"))

    async def main() -> int:
        return await wait_future(future, 1.0)

    with pytest.raises(ValueError, match="boom"):
        anyio.run(main, backend=backend)


def test_completion_after_the_loop_closed_is_harmless() -> None:
    future: concurrent.futures.Future[int] = concurrent.futures.Future()

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await wait_future(future, 0.01)
        # A second waiter whose callback stays registered when the loop ends.
        future.add_done_callback(lambda f: None)

    anyio.run(main, backend="asyncio")
    future.set_result(1)


def test_completion_on_the_waiters_own_loop_thread() -> None:
    # The sync adapters' engine runs on the background loop and waits there for a future that
    # the same loop completes: woken directly, without a hop through the self-pipe.
    import asyncio

    future: concurrent.futures.Future[int] = concurrent.futures.Future()

    async def main() -> tuple[int, float]:
        started = time.monotonic()
        asyncio.get_running_loop().call_later(0.02, future.set_result, 7)
        return await wait_future(future, 5.0), time.monotonic() - started

    value, waited = asyncio.run(main())
    assert value == 7 and 0.02 <= waited < 2.0


def test_a_cancelled_waiter_leaves_the_future_alone() -> None:
    import asyncio

    future: concurrent.futures.Future[int] = concurrent.futures.Future()

    async def main() -> None:
        waiter = asyncio.create_task(wait_future(future, 5.0))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())
    assert not future.cancelled() and not future.done()
    assert future._done_callbacks == []  # type: ignore[attr-defined]
    future.set_result(1)


def _run_inline(make: Any) -> tuple[bool, Any]:
    from llm_middleware.inline import try_inline

    return try_inline(make)


def test_inline_wait_blocks_the_thread_until_the_result() -> None:
    # A sync adapter's inline run: no loop; the wait blocks and the coroutine never suspends.
    future: concurrent.futures.Future[int] = concurrent.futures.Future()
    started = time.monotonic()  # before the timer starts: the result cannot come sooner
    threading.Timer(0.03, future.set_result, args=(7,)).start()
    done, value = _run_inline(lambda: wait_future(future, 5.0))
    assert (done, value) == (True, 7)
    assert time.monotonic() - started >= 0.03


def test_inline_wait_times_out_without_cancelling() -> None:
    future: concurrent.futures.Future[int] = concurrent.futures.Future()

    async def wait() -> str:
        try:
            await wait_future(future, 0.05)
        except TimeoutError:
            return "timeout"
        return "result"

    started = time.monotonic()
    done, value = _run_inline(wait)
    assert (done, value) == (True, "timeout")
    assert time.monotonic() - started >= 0.05
    assert not future.cancelled() and not future.done()
    assert future._done_callbacks == []  # type: ignore[attr-defined]
    future.set_result(1)


def test_inline_on_the_background_loop_thread_needs_the_loop() -> None:
    # Blocking the background loop's own thread would stall the work waited for: there an
    # inline run stops (NeedsLoop) instead, and the caller runs it on the loop.
    from llm_middleware.bridge import BACKGROUND
    from llm_middleware.inline import need_loop

    async def step() -> str:
        need_loop()
        return "ran inline"

    async def on_loop() -> tuple[bool, Any]:
        return _run_inline(step)

    assert _run_inline(step) == (True, "ran inline")
    assert BACKGROUND.run(on_loop(), 5.0) == (False, None)
