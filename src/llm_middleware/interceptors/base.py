"""What every interceptor gets: the exchange, the deadline, the shared LLM client."""

from __future__ import annotations

import json
from typing import Any, Protocol

from pydantic import BaseModel

from ..deadline import Deadline
from ..exchange import RequestExchange, ResponseExchange
from ..llm import CallStats, LLMClient
from ..result import LLMResult


class Privacy(Protocol):
    """Set on the context by the PII interceptor: masks text bound for a provider and restores
    placeholders in what comes back. Without PII masking on the rule it is the identity."""

    def protect_value(self, value: Any) -> str:
        """A JSON value as text for a prompt, masked like a request body would be (field-name
        rules included)."""
        ...

    def restore(self, value: Any) -> Any: ...


class _NoPrivacy:
    def protect_value(self, value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

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
