"""Intent extraction: natural-language input -> a validated pydantic object for the view."""

from __future__ import annotations

from ..config import IntentExtraction
from ..exchange import SourceError, read_source
from ..llm.prompts import default_prompt, schema_json
from .base import RequestContext

MAX_INPUT_CHARS = 8_000


class IntentInterceptor:
    uses_llm = True
    runs_first = False

    def __init__(self, config: IntentExtraction, name: str) -> None:
        self.config = config
        self.name = name
        self.schema = config.schema_
        self.prompt = config.prompt or default_prompt(self.schema, "intent")
        schema_json(self.schema)  # built once at start-up, not on the first request
        self.needs_body = config.source.split(":", 1)[0] in ("form", "json", "body")

    async def on_request(self, ctx: RequestContext) -> str:
        text = read_source(ctx.exchange, self.config.source)
        if len(text) > MAX_INPUT_CHARS:
            raise SourceError("input_too_long", f"{len(text)} characters")
        obj, cached = await ctx.llm.structured(
            self.schema, self.prompt, ctx.privacy.protect(text), ctx.deadline, ctx.stats
        )
        obj = ctx.restore_model(obj)
        ctx.result.intents[self.name] = obj
        if ctx.result.intent is None:
            ctx.result.intent = obj
        return "cached" if cached else "ok"
