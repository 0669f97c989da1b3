"""Response enrichment: LLM-made fields (summary, tags, translation...) added to a complete JSON
response, into a JSON pointer of it or a header."""

from __future__ import annotations

import json

from ..config import ResponseEnrichment
from ..exchange import (
    ResponseExchange,
    SourceError,
    is_json_type,
    json_pointer_get,
    json_pointer_set,
)
from ..llm.prompts import default_prompt, schema_json
from .base import RequestContext


def dumps_like(document: object, original: bytes) -> bytes:
    """Serialise in the original's style: compact stays compact (FastAPI, Starlette)."""
    compact = b", " not in original and b": " not in original
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(document, ensure_ascii=False, separators=separators).encode()


# Long documents are cut, not refused: a summary of the first 12k characters beats none.
MAX_INPUT_CHARS = 12_000


class EnrichmentInterceptor:
    uses_llm = True
    runs_first = False
    needs_body = False
    handles_request = False
    handles_response = True

    def __init__(self, config: ResponseEnrichment, name: str) -> None:
        self.config = config
        self.name = name
        self.schema = config.schema_
        self.prompt = config.prompt or default_prompt(self.schema, "enrichment")
        self.on_error_status = config.on_error_status
        self.source = config.source.partition(":")[2]
        kind, _, self.target = config.into.partition(":")
        self.into_header = kind == "header"
        schema_json(self.schema)  # built once at start-up, not on the first request

    def accepts(self, content_type: str) -> bool:
        return is_json_type(content_type)

    async def on_request(self, ctx: RequestContext) -> str:
        raise NotImplementedError  # handles_request is False: never called

    async def on_response(self, ctx: RequestContext, response: ResponseExchange) -> str:
        document = response.json()
        try:
            value = json_pointer_get(document, self.source)
        except (KeyError, TypeError):
            raise SourceError("source_missing", f"no JSON value at {self.source!r}") from None
        if value is None or value == "":
            raise SourceError("source_missing", "empty value")
        # Cut before masking: detection costs time in proportion to what it reads.
        text = await ctx.privacy.protect_value(value, self.config.source, MAX_INPUT_CHARS)
        obj, cached = await ctx.llm.structured(
            self.schema,
            self.prompt,
            text[:MAX_INPUT_CHARS],
            ctx.deadline,
            ctx.stats,
            keep_going_s=self.config.stale_while_revalidate_s,
        )
        obj = ctx.restore_model(obj)
        if self.into_header:
            # ASCII-only JSON: header values are latin-1 on the wire.
            value = json.dumps(obj.model_dump(mode="json"), separators=(",", ":"))
            if len(value) > self.config.max_header_bytes:
                raise SourceError(
                    "header_too_large", f"{len(value)} > {self.config.max_header_bytes} bytes"
                )
            response.set_headers[self.target] = value
        else:
            json_pointer_set(document, self.target, obj.model_dump(mode="json"), overwrite=True)
            response.new_body = dumps_like(document, response.body)
            response._json = (response.new_body, document)
        ctx.result.enrichments[self.name] = obj
        if ctx.result.enrichment is None:
            ctx.result.enrichment = obj
        return "cached" if cached else "ok"
