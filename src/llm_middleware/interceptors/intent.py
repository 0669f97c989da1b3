"""Intent extraction: natural-language input -> a validated pydantic object for the view."""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import unquote_plus, urlencode

from pydantic import BaseModel, ValidationError

from ..config import IntentExtraction
from ..exchange import (
    RequestExchange,
    ResponseExchange,
    SourceError,
    json_pointer_set,
    read_source_value,
)
from ..grounding import Grounder, UngroundedError, answer_schema
from ..llm import LLMInvalidOutput
from ..llm.prompts import default_prompt, schema_json
from .base import RequestContext

MAX_INPUT_CHARS = 8_000


class IntentInterceptor:
    uses_llm = True
    runs_first = False
    handles_request = True
    handles_response = False
    on_error_status = False

    def __init__(self, config: IntentExtraction, name: str) -> None:
        self.config = config
        self.name = name
        self.schema = config.schema_
        self.prompt = config.prompt or default_prompt(self.schema, "intent")
        # The schema the model answers in: the view's own, or with declared synonyms allowed.
        self.answer_schema = (
            answer_schema(self.schema, config.synonyms) if config.answer_synonyms else self.schema
        )
        schema_json(self.answer_schema)  # built once at start-up, not on the first request
        self.grounder: Grounder | None = None
        if config.grounded:
            fields = config.grounded if isinstance(config.grounded, list) else None
            self.grounder = Grounder(self.schema, fields, config.synonyms, config.cues)
        self.needs_body = config.source.split(":", 1)[0] in ("form", "json", "body") or any(
            target.startswith("json:") for target in config.rewrite.values()
        )

    def accepts(self, content_type: str) -> bool:
        return False

    async def on_response(self, ctx: RequestContext, response: ResponseExchange) -> str:
        raise NotImplementedError  # handles_response is False: never called

    async def on_request(self, ctx: RequestContext) -> str:
        source = self.config.source
        raw = read_source_value(ctx.exchange, source)
        # Cut one past the cap before masking (detection cost bounded), refused below.
        text = await ctx.privacy.protect_value(raw, source, MAX_INPUT_CHARS + 1)
        if len(text) > MAX_INPUT_CHARS:
            raise SourceError("input_too_long", f"{len(text)} characters")
        obj, cached = await ctx.llm.structured(
            self.answer_schema, self.prompt, text, ctx.deadline, ctx.stats
        )
        obj = ctx.restore_model(obj)
        if self.grounder is not None:
            # Checked against what the client sent (placeholders are restored in obj).
            plain = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
            try:
                grounded = self.grounder.ground(obj, plain)
            except UngroundedError as exc:
                raise LLMInvalidOutput(str(exc), reason="ungrounded_required_field") from None
            obj = grounded.obj
            if type(obj) is not self.schema:  # synonyms now canonical: the view's schema
                try:
                    obj = self.schema.model_validate(obj.model_dump(mode="python"))
                except ValidationError:
                    raise LLMInvalidOutput(
                        "answer not valid for the view's schema", reason="schema_mismatch"
                    ) from None
            if grounded.reason:
                ctx.result.reasons[self.name] = grounded.reason
        ctx.result.intents[self.name] = obj
        if ctx.result.intent is None:
            ctx.result.intent = obj
        if self.config.rewrite:
            try:
                rewrite_request(
                    ctx.exchange, obj, self.config.rewrite, self.config.rewrite_overwrite
                )
            except SourceError as exc:  # the intent stands; the request is left as it came
                ctx.result.reasons[self.name] = f"rewrite_skipped:{exc.reason}"
        return "cached" if cached else "ok"


def rewrite_request(
    exchange: RequestExchange, intent: BaseModel, targets: dict[str, str], overwrite: bool
) -> None:
    """Write intent fields into the query string / JSON body; values the client set are kept
    unless ``overwrite``. Fields the model left empty are not written."""
    values = intent.model_dump(mode="json")
    query_updates: dict[str, str] = {}
    json_updates: dict[str, Any] = {}
    for field, target in targets.items():
        value = values.get(field)
        if value is None or value == "":
            continue
        kind, _, where = target.partition(":")
        if kind == "query":
            query_updates[where] = _as_param(value)
        else:
            json_updates[where] = value
    if query_updates:
        # Edit the raw query string: the client's pairs keep their exact bytes.
        raw = exchange.current_query_string
        kept: list[str] = []
        present: set[str] = set()
        for part in raw.split("&") if raw else []:
            name = unquote_plus(part.split("=", 1)[0], errors="replace")
            if overwrite and name in query_updates:
                continue
            present.add(name)
            kept.append(part)
        added = {k: v for k, v in query_updates.items() if k not in present}
        if added:
            exchange.new_query_string = "&".join([*kept, urlencode(added)])
    if json_updates:
        document = copy.deepcopy(exchange.body_json())
        changed = False
        for pointer, value in json_updates.items():
            changed |= json_pointer_set(document, pointer, value, overwrite=overwrite)
        if changed:
            exchange.new_body = json.dumps(document, ensure_ascii=False).encode()


def _as_param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 100.0 -> "100": legacy int() parsing keeps working
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
