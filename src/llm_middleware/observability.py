"""One structlog event per matched request; never request values, never secrets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from .llm import CallStats
    from .result import LLMResult

logger: Any = structlog.get_logger("llm_middleware")


def log_request(
    *,
    rule: str,
    method: str,
    mode: str,
    result: LLMResult,
    stats: CallStats,
) -> None:
    failed = any(o not in ("ok", "cached", "skipped", "shadow") for o in result.outcomes.values())
    log = logger.warning if failed else logger.info
    log(
        "llm_middleware.request",
        rule=rule,
        method=method,
        mode=mode,
        outcomes=dict(result.outcomes),
        reasons=dict(result.reasons),
        added_ms=round(result.added_ms, 2),
        llm_calls=stats.llm_calls,
        cache_hits=stats.cache_hits,
        retries=stats.retries,
        prompt_tokens=stats.prompt_tokens,
        completion_tokens=stats.completion_tokens,
        models=sorted(set(stats.models)),
        prompt_versions=sorted(set(stats.prompt_versions)),
        pii=dict(result.pii),
    )


def log_internal_error(where: str, exc: BaseException) -> None:
    # The exception's message may quote request data: log its type and location only.
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    location = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
    logger.error(
        "llm_middleware.internal_error", where=where, error=type(exc).__name__, location=location
    )


def server_timing(result: LLMResult) -> str:
    outcomes = ",".join(f"{k}={v}" for k, v in result.outcomes.items())
    return f'llm;dur={result.added_ms:.1f};desc="{outcomes}"'
