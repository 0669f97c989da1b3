"""What the sync adapters share: run the engine for one request with a hard deadline."""

from __future__ import annotations

from .bridge import BACKGROUND
from .deadline import Deadline
from .engine import CompiledRule, Engine
from .exchange import RequestExchange, ResponseExchange
from .inline import try_inline
from .llm import CallStats
from .result import LLMResult

# The engine ends its own waits at the deadline; this is the backstop if it does not.
_BACKSTOP_S = 0.004


def process_request_sync(
    engine: Engine, rule: CompiledRule, exchange: RequestExchange, deadline: Deadline
) -> tuple[LLMResult, bytes | None, str | None]:
    """Return the result and the body / query string to hand on (``None``: unchanged).

    Changes are read only from a run that finished: a run cancelled at the deadline may still
    touch ``exchange`` on the loop thread, so nothing of it is applied."""
    done, inline_result = try_inline(lambda: engine.process_request(rule, exchange, deadline))
    if done and inline_result is not None:  # a cache hit or masking only: no hop at all
        return inline_result, exchange.new_body, exchange.new_query_string
    exchange.new_body = exchange.new_query_string = None  # undo the partial inline run
    try:
        result = BACKGROUND.run(
            engine.process_request(rule, exchange, deadline), deadline.remaining() + _BACKSTOP_S
        )
    except TimeoutError:
        result = LLMResult(rule=rule.label)
        for icpt in rule.interceptors:
            result.record(icpt.name, "timeout", "deadline")
        result.added_ms = deadline.elapsed_ms()
        engine.log(rule, exchange.method, result, CallStats())  # the cancelled run cannot
        return result, None, None
    return result, exchange.new_body, exchange.new_query_string


def process_response_sync(
    engine: Engine, rule: CompiledRule, result: LLMResult, response: ResponseExchange
) -> ResponseExchange:
    """The response side for sync callers, bounded by what the request side left."""
    remaining = max(0.0, rule.budget_s - result.added_ms / 1000.0)
    done, _ = try_inline(lambda: engine.process_response(rule, result, response))
    if done:
        return response
    response.new_body = None
    response.set_headers.clear()
    try:
        BACKGROUND.run(engine.process_response(rule, result, response), remaining + _BACKSTOP_S)
    except TimeoutError:
        for icpt in rule.response_interceptors:
            result.record(icpt.name, "timeout", "deadline")
        return ResponseExchange(response.status, response.headers, response.body)
    return response
