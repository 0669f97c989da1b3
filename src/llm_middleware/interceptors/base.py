"""What every interceptor gets: the exchange, the deadline, the shared LLM client."""

from __future__ import annotations

import json
from typing import Any, Protocol

from pydantic import BaseModel

from ..deadline import Deadline
from ..exchange import RequestExchange, ResponseExchange, SourceError
from ..llm import CallStats, LLMClient
from ..result import LLMResult


class Privacy(Protocol):
    """Set on the context by the PII interceptor: masks text bound for a provider and restores
    placeholders in what comes back. Without PII masking on the rule it is the identity."""

    async def protect_value(
        self, value: Any, source: str = "", max_chars: int | None = None
    ) -> str:
        """A value read from ``source`` (``query:q``, ``json:/a``...) as text for a prompt,
        masked: field-name rules on the source's name, the detector on text, JSON keys and
        numbers. Text is cut to ``max_chars`` *before* detection; a structured value whose
        JSON is longer raises ``SourceError("input_too_long")``."""
        ...

    def restore(self, value: Any) -> Any: ...


def cut_text(text: str, max_chars: int | None) -> str:
    return text if max_chars is None else text[:max_chars]


class _NoPrivacy:
    async def protect_value(
        self, value: Any, source: str = "", max_chars: int | None = None
    ) -> str:
        if isinstance(value, str):
            return cut_text(value, max_chars)
        text = json.dumps(value, ensure_ascii=False)
        if max_chars is not None and len(text) > max_chars:
            raise SourceError("input_too_long", f"{len(text)} characters")
        return text

    def restore(self, value: Any) -> Any:
        return value


NO_PRIVACY: Privacy = _NoPrivacy()


class RequestContext:
    """Lives from the request side to the response side of one request."""

    __slots__ = ("exchange", "deadline", "result", "stats", "llm", "privacy", "privacy_failed")

    def __init__(
        self,
        exchange: RequestExchange,
        deadline: Deadline,
        result: LLMResult,
        stats: CallStats,
        llm: LLMClient,
    ) -> None:
        self.exchange = exchange
        self.deadline = deadline
        self.result = result
        self.stats = stats
        self.llm = llm
        self.privacy: Privacy = NO_PRIVACY
        self.privacy_failed = False

    def restore_model(self, obj: BaseModel) -> BaseModel:
        if self.privacy is NO_PRIVACY:
            return obj
        data = self.privacy.restore(obj.model_dump(mode="python"))
        return type(obj).model_validate(data)


class Interceptor(Protocol):
    name: str
    needs_body: bool
    uses_llm: bool
    runs_first: bool
    handles_request: bool
    handles_response: bool
    on_error_status: bool  # response side: also 4xx/5xx responses

    async def on_request(self, ctx: RequestContext) -> str:
        """Do the work; return ``"ok"``, ``"cached"`` or ``"skipped"``. Raise ``SourceError`` or
        ``LLMError`` (or anything: the engine records it) to pass through."""
        ...

    def accepts(self, content_type: str) -> bool:
        """Response side: whether a complete response of this type is worth buffering."""
        ...

    async def on_response(self, ctx: RequestContext, response: ResponseExchange) -> str:
        """Response side: same contract as ``on_request``; write ``response.new_body`` /
        ``response.set_headers``."""
        ...
