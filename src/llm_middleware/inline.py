"""Running the engine inline in a sync caller's thread.

A cache hit, or a rule that only masks small inputs, completes without ever suspending. An LLM
call or a masking job runs on the background loop or a worker pool anyway: the inline run
starts it there and waits for its future blocking the request thread (a sync caller's thread
is there to wait), so the engine runs once, in the request thread, with no hop of its own.
Only a step that needs the event loop itself (shadow work) stops the inline run: the sync
adapters then run the request again on the background loop."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

_INLINE: ContextVar[bool] = ContextVar("llm_middleware_inline", default=False)


class NeedsLoop(BaseException):
    """Raised inside an inline run at the first step that needs the event loop. A
    BaseException, so that the engine's own passthrough handlers do not record it."""


def inline() -> bool:
    """True while the engine runs inline (no event loop): I/O steps raise ``NeedsLoop``."""
    return _INLINE.get()


def need_loop() -> None:
    """Called before waiting on another thread's future (``bridge.wait_future``). Inline, the
    wait blocks the request thread; only on the background loop's own thread (where blocking
    would stall the very work waited for) the inline run stops with ``NeedsLoop``."""
    if _INLINE.get():
        from .bridge import BACKGROUND

        if BACKGROUND.on_thread():
            raise NeedsLoop


def need_event_loop() -> None:
    """Called before a step that needs a running event loop: an inline run stops here."""
    if _INLINE.get():
        raise NeedsLoop


def try_inline(make: Callable[[], Coroutine[Any, Any, T]]) -> tuple[bool, T | None]:
    """``(True, value)`` if the coroutine completed without suspending, else ``(False, None)``
    (it is closed; the caller undoes its side effects and runs it on the loop)."""
    coro = make()
    token = _INLINE.set(True)
    try:
        coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    except NeedsLoop:
        return False, None
    finally:
        _INLINE.reset(token)
        coro.close()
    return False, None  # it suspended on something: not a step we can run here
