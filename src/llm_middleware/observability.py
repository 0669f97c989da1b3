"""One structlog event per matched request; never request values, never secrets."""

from __future__ import annotations

from collections.abc import MutableMapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

import structlog

from .pii import scrub

if TYPE_CHECKING:
    from .llm import CallStats
    from .result import LLMResult

logger: Any = structlog.get_logger("llm_middleware")


_cached_skipped = 0  # cache-hit lines not written since the last one that was (approximate)


def log_request(
    *,
    rule: str,
    method: str,
    mode: str,
    result: LLMResult,
    stats: CallStats,
    cached_sample: float = 1.0,
) -> None:
    """One event per matched request. A request served wholly from cache is logged with
    probability ``cached_sample`` (deterministically: one line in ``1/cached_sample``, carrying
    ``sampled`` = how many requests it stands for); anything else that failed or called a
    provider is always logged."""
    global _cached_skipped
    outcomes = result.outcomes
    failed = False
    for outcome in outcomes.values():
        if outcome not in _QUIET_OUTCOMES:
            failed = True
            break
    sampled = 1
    if not failed and cached_sample < 1.0 and stats.cache_hits and not stats.llm_calls:
        # No lock: a lost update under threads only shifts which line gets written.
        skipped = _cached_skipped + 1
        if cached_sample <= 0.0 or skipped * cached_sample < 1.0:
            _cached_skipped = skipped
            return
        _cached_skipped = 0
        sampled = skipped
    log = logger.warning if failed else logger.info
    log(
        "llm_middleware.request",
        rule=rule,
        method=method,
        mode=mode,
        outcomes=dict(outcomes),
        reasons=dict(result.reasons),
        added_ms=round(result.added_ms, 2),
        llm_calls=stats.llm_calls,
        cache_hits=stats.cache_hits,
        retries=stats.retries,
        prompt_tokens=stats.prompt_tokens,
        completion_tokens=stats.completion_tokens,
        models=sorted(set(stats.models)) if stats.models else [],
        prompt_versions=sorted(set(stats.prompt_versions)) if stats.prompt_versions else [],
        pii=dict(result.pii),
        sampled=sampled,
    )


_QUIET_OUTCOMES = frozenset({"ok", "cached", "skipped", "shadow"})


def log_internal_error(where: str, exc: BaseException) -> None:
    # The exception's message may quote request data: log its type and location only.
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    location = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
    logger.error(
        "llm_middleware.internal_error", where=where, error=type(exc).__name__, location=location
    )


_name_clashes: set[tuple[str, str]] = set()


def publish_result(namespace: MutableMapping[str, Any], name: str, result: Any, where: str) -> bool:
    """Put the result under ``name`` unless the app already holds a value there: the app's
    value is kept and the clash logged once per place and name. Returns whether it was put."""
    if name in namespace:
        if (where, name) not in _name_clashes:
            _name_clashes.add((where, name))
            logger.warning(
                "llm_middleware.result_name_taken",
                where=where,
                name=name,
                hint="the app's value is kept; set result_attr to another name",
            )
        return False
    namespace[name] = result
    return True


def server_timing(result: LLMResult) -> str:
    outcomes = ",".join(f"{k}={v}" for k, v in result.outcomes.items())
    return f'llm;dur={result.added_ms:.1f};desc="{outcomes}"'


# -- keeping masked values out of the host app's logs ---------------------------------------------

_current_pii: ContextVar[frozenset[str]] = ContextVar("llm_middleware_pii", default=frozenset())


def set_request_pii(values: frozenset[str]) -> Token[frozenset[str]]:
    """Adapters call this before the app runs on a matched request (and reset it after)."""
    return _current_pii.set(values)


def reset_request_pii(token: Token[frozenset[str]]) -> None:
    _current_pii.reset(token)


def scrub_pii(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: replaces every value masked on the current request by
    ``[REDACTED]`` in every field of every event, whoever logs it. Put it last before the
    renderer::

        structlog.configure(processors=[..., llm_middleware.observability.scrub_pii, renderer])
    """
    values = _current_pii.get()
    if not values:
        return event_dict
    return {key: _scrub(value, values) for key, value in event_dict.items()}


def _scrub(value: Any, values: frozenset[str]) -> Any:
    if isinstance(value, str):
        return scrub(value, values)
    if isinstance(value, int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, values) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v, values) for v in value]
    text = repr(value)  # an object the renderer would print: check what it would show
    return scrub(text, values) if any(v in text for v in values) else value
