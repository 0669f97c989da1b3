"""``bridge.wait_future``: a backend-neutral wait on work done by another thread."""

from __future__ import annotations

import concurrent.futures
import threading
import time

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
