"""A monotonic deadline shared by every step of one request."""

from __future__ import annotations

from time import monotonic


class Deadline:
    """Created once per matched request from the rule's ``budget_ms``; every interceptor,
    attempt and retry asks it for the time that is left instead of carrying its own timeout.

    Waits end ``reserve_s`` before the budget does, so that cancelling them, recording the
    outcome and handing the request on also fit inside the budget."""

    __slots__ = ("start", "end")

    def __init__(
        self, budget_s: float, *, start: float | None = None, reserve_s: float = 0.003
    ) -> None:
        self.start = monotonic() if start is None else start
        self.end = self.start + max(0.0, budget_s - min(reserve_s, budget_s * 0.05))

    def remaining(self) -> float:
        return max(0.0, self.end - monotonic())

    def elapsed_ms(self) -> float:
        return (monotonic() - self.start) * 1000.0

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining() * 1000:.1f}ms)"
