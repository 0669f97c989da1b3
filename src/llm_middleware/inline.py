"""Running the engine inline in a sync caller's thread when it needs no I/O.

A cache hit, or a rule that only masks small inputs, completes without ever suspending: the
sync adapters try that first in the request thread, and hop to the background loop only when
the run reaches a point that needs it (an LLM call, a worker thread, a task)."""

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
