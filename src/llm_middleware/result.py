"""What a view sees: ``request.state.llm`` / ``request.llm`` / ``g.llm`` / ``environ[...]``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

OUTCOMES = frozenset(
    {"ok", "cached", "timeout", "error", "invalid", "circuit_open", "shed", "skipped", "shadow"}
)


@dataclass(slots=True)
class LLMResult:
    """Per-request results. ``outcomes`` maps each interceptor's name (``"intent"``,
    ``"pii_masking"``, ``"enrichment"``, or the rule's ``name``) to one of ``OUTCOMES``;
    ``reasons`` says why for anything but ``ok``/``cached``. ``pii`` holds entity types and
    counts of what was masked, never values."""

    rule: str
    intent: BaseModel | None = None
    intents: dict[str, BaseModel] = field(default_factory=dict)
    enrichment: BaseModel | None = None
    enrichments: dict[str, BaseModel] = field(default_factory=dict)
    pii: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    added_ms: float = 0.0
    # What was masked, for the log scrubber only: never shown, compared or logged.
    pii_values: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    # The engine's per-request state, kept for the response side.
    context: Any = field(default=None, repr=False, compare=False)

    def intent_as(self, schema: type[M]) -> M | None:
        """The intent, typed: ``request.state.llm.intent_as(SearchIntent)``."""
        for intent in self.intents.values():
            if isinstance(intent, schema):
                return intent
        return None

    def enrichment_as(self, schema: type[M]) -> M | None:
        for value in self.enrichments.values():
            if isinstance(value, schema):
                return value
        return None

    def record(self, name: str, outcome: str, reason: str | None = None) -> None:
        self.outcomes[name] = outcome
        if reason:
            self.reasons[name] = reason
        else:
            self.reasons.pop(name, None)

    @property
    def ok(self) -> bool:
        """True when every interceptor applied (fresh or from cache)."""
        return all(o in ("ok", "cached") for o in self.outcomes.values())
