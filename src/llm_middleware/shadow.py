"""Shadow comparison records: what the LLM produced next to what the request carried.

On a shadowed rule, an intent interceptor with ``compare > 0`` writes, for that share of
requests, one record per request: the intent's fields, the values the client itself sent at the
interceptor's ``rewrite`` targets (``query:color`` ...) and whether they agree, so a team can
compute agreement before switching the rule to ``enforce``.

Every string in a record is masked: with the rule's own placeholders when the rule masks PII
(the same ``<EMAIL_ADDRESS_1>`` the provider saw), with ``[ENTITY]`` redaction otherwise, and
every value masked on the request is scrubbed again. Records go to a structlog event
(``llm_middleware.shadow_compare``) or, with ``compare_sink: "path.jsonl"``, to a JSON Lines file.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from typing import Any

from .config import IntentExtraction
from .exchange import RequestExchange, SourceError, read_source_value
from .grounding import normalise, plural_variants
from .interceptors.base import NO_PRIVACY, RequestContext
from .pii import PIIDetector, Vault, mask_text, scrub

__all__ = ["comparison_records", "emit"]

_sink_lock = threading.Lock()
_detector: PIIDetector | None = None

# Sampling draws from its own generator: the global one is the app's (and Hypothesis checks
# that nothing else advances it), and forked workers must not sample in lockstep.
_SAMPLER = random.Random()
os.register_at_fork(after_in_child=_SAMPLER.seed)


def _default_detector() -> PIIDetector:
    global _detector
    if _detector is None:
        _detector = PIIDetector()
    return _detector


def _masker(ctx: RequestContext) -> Any:
    vault = Vault()

    def mask(value: Any) -> Any:
        if isinstance(value, str):
            protect = getattr(ctx.privacy, "protect", None)  # the rule's own vault, sync
            if ctx.privacy is not NO_PRIVACY and protect is not None:
                text = protect(value)
            else:
                text = mask_text(value, _default_detector(), vault, "redact")
            return scrub(text, ctx.result.pii_values)
        if isinstance(value, dict):
            return {str(mask(k)): mask(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [mask(v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            if isinstance(value, int | float) and not isinstance(value, bool):
                # A number can be PII too (a card number sent as a JSON number).
                masked = mask(str(value))
                return value if masked == str(value) else masked
            return value
        return mask(str(value))

    return mask


def _agree(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return abs(float(a) - float(b)) <= 0.01
    except (TypeError, ValueError):
        pass
    na, nb = normalise(str(a)), normalise(str(b))
    return na == nb or na in plural_variants(nb)


def comparison_records(
    rule: str,
    interceptors: list[tuple[str, IntentExtraction]],
    ctx: RequestContext,
    original: RequestExchange,
) -> list[tuple[dict[str, Any], str | None]]:
    """(record, sink) for each sampled intent interceptor that has something to compare."""
    out: list[tuple[dict[str, Any], str | None]] = []
    mask = _masker(ctx)
    for name, config in interceptors:
        if config.compare <= 0 or _SAMPLER.random() >= config.compare:
            continue
        intent = ctx.result.intents.get(name)
        produced = intent.model_dump(mode="json") if intent is not None else None
        carried: dict[str, Any] = {}
        for field, target in config.rewrite.items():
            try:
                carried[field] = read_source_value(original, target)
            except SourceError:
                carried[field] = None
        agree = {
            field: _agree((produced or {}).get(field), value) for field, value in carried.items()
        }
        record = {
            "ts": round(time.time(), 3),
            "rule": rule,
            "interceptor": name,
            "outcome": ctx.result.outcomes.get(name),
            "reason": ctx.result.reasons.get(name),
            "llm": mask(produced),
            "request": mask(carried),
            "agree": agree,
        }
        out.append((record, config.compare_sink))
    return out


def emit(record: dict[str, Any], sink: str | None, logger: Any) -> None:
    """To the JSONL file ``sink`` (appended, one line, under a lock) or a structlog event."""
    if sink:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with _sink_lock, open(sink, "a", encoding="utf-8") as fh:
            fh.write(line)
    else:
        logger.info("llm_middleware.shadow_compare", **record)
