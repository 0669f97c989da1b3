"""What the sync adapters share: run the engine for one request with a hard deadline."""

from __future__ import annotations

from .bridge import BACKGROUND
from .deadline import Deadline
from .engine import CompiledRule, Engine
from .exchange import RequestExchange
from .result import LLMResult

# The engine ends its own waits at the deadline; this is the backstop if it does not.
_BACKSTOP_S = 0.004


def process_request_sync(
    engine: Engine, rule: CompiledRule, exchange: RequestExchange, deadline: Deadline
) -> tuple[LLMResult, bytes | None, str | None]:
    """Return the result and the body / query string to hand on (``None``: unchanged).

    Changes are read only from a run that finished: a run cancelled at the deadline may still
    touch ``exchange`` on the loop thread, so nothing of it is applied."""
    try:
        result = BACKGROUND.run(
            engine.process_request(rule, exchange, deadline), deadline.remaining() + _BACKSTOP_S
        )
    except TimeoutError:
        result = LLMResult(rule=rule.label)
        for icpt in rule.interceptors:
            result.record(icpt.name, "timeout", "deadline")
        result.added_ms = deadline.elapsed_ms()
        return result, None, None
    return result, exchange.new_body, exchange.new_query_string
