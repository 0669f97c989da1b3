"""Wire formats: OpenAI-compatible chat completions (two structured-output dialects) and
Anthropic Messages (structured output through a forced tool call)."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from typing import Any

from ..config import Anthropic, OpenAICompatible
from .errors import LLMConfigError, LLMInvalidOutput, LLMTransportError

ProviderConfig = OpenAICompatible | Anthropic

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class WireRequest:
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    #: The JSON of ``body``'s keys after ``messages``, encoded once per provider and schema
    #: (``_tail``), when ``body`` was built with them; the body is encoded whole otherwise.
    tail: bytes | None = None

    @property
    def content(self) -> bytes:
        """The JSON body as sent (compact, UTF-8)."""
        if self.tail is None:
            return _dumps(self.body).encode()
        head = {key: self.body[key] for key in ("model", "messages")}
        return _dumps(head)[:-1].encode() + self.tail


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_TAILS: dict[tuple[int, int], tuple[ProviderConfig, dict[str, Any], dict[str, Any], bytes]] = {}
_TAILS_MAX = 256
_TAILS_LOCK = threading.Lock()


def _tail(provider: ProviderConfig, schema: dict[str, Any], rest: dict[str, Any]) -> bytes:
    """``rest`` (the keys after ``messages``) as the end of a JSON object: ``,"k":v...}``.
    Depends only on the provider (frozen) and the schema's JSON (cached per schema class):
    kept per pair of objects, the entry holding both so their ids are not reused."""
    key = (id(provider), id(schema))
    found = _TAILS.get(key)
    if found is not None and found[0] is provider and found[1] is schema and found[2] == rest:
        return found[3]
    encoded = ("," + _dumps(rest)[1:] if rest else "}").encode()
    with _TAILS_LOCK:
        if len(_TAILS) >= _TAILS_MAX:
            _TAILS.clear()
        _TAILS[key] = (provider, schema, rest, encoded)
    return encoded


@dataclass(frozen=True, slots=True)
class WireAnswer:
    data: Any  # parsed JSON value the model produced
    raw_text: str  # what to echo back in a corrective retry
    prompt_tokens: int
    completion_tokens: int


def build_request(
    provider: ProviderConfig,
    messages: list[dict[str, str]],
    schema_name: str,
    schema: dict[str, Any],
) -> WireRequest:
    headers = {"content-type": "application/json", **provider.headers}
    key = provider.api_key()
    if key and _CONTROL_RE.search(key):
        # A header value with CR/LF could smuggle headers (or be echoed by an error): refuse
        # it, naming where it came from, never the value.
        raise LLMConfigError(
            f"the API key from {provider.api_key_env} contains control characters",
            reason="bad_api_key",
        )
    if isinstance(provider, Anthropic):
        if key:
            headers["x-api-key"] = key
        headers["anthropic-version"] = provider.anthropic_version
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        body: dict[str, Any] = {
            "model": provider.model,
            "max_tokens": provider.max_tokens,
            "system": system,
            "messages": [m for m in messages if m["role"] != "system"],
            "tools": [
                {
                    "name": "output",
                    "description": f"Record the {schema_name} object.",
                    "input_schema": schema,
                }
            ],
            "tool_choice": {"type": "tool", "name": "output"},
        }
        if provider.temperature is not None:
            body["temperature"] = provider.temperature
        return WireRequest(provider.base_url.rstrip("/") + "/v1/messages", headers, body)

    if key:
        headers["authorization"] = f"Bearer {key}"
    rest: dict[str, Any] = {}
    if provider.temperature is not None:
        rest["temperature"] = provider.temperature
    if provider.max_tokens is not None:
        rest["max_tokens"] = provider.max_tokens
    if provider.dialect == "json_schema":
        rest["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": _safe_name(schema_name), "schema": schema},
        }
    elif provider.dialect == "json_object":
        rest["response_format"] = {"type": "json_object", "schema": schema}
    body = {"model": provider.model, "messages": messages, **rest}
    url = provider.base_url.rstrip("/") + "/chat/completions"
    return WireRequest(url, headers, body, _tail(provider, schema, rest))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "output"


def parse_answer(provider: ProviderConfig, payload: bytes) -> WireAnswer:
    try:
        envelope = json.loads(payload)
    except ValueError:
        raise LLMTransportError("provider answer is not JSON", reason="bad_envelope") from None
    if not isinstance(envelope, dict):
        raise LLMTransportError("provider answer is not a JSON object", reason="bad_envelope")
    usage = envelope.get("usage") if isinstance(envelope.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    if isinstance(provider, Anthropic):
        prompt_tokens = _int(usage.get("input_tokens"))
        completion_tokens = _int(usage.get("output_tokens"))
        blocks = envelope.get("content")
        if not isinstance(blocks, list):
            raise LLMTransportError("no content blocks in answer", reason="bad_envelope")
        for block in blocks:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                data = block.get("input")
                return WireAnswer(data, json.dumps(data), prompt_tokens, completion_tokens)
        text = "".join(
            b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"
        )
        return WireAnswer(_parse_json_text(text), text, prompt_tokens, completion_tokens)

    prompt_tokens = _int(usage.get("prompt_tokens"))
    completion_tokens = _int(usage.get("completion_tokens"))
    try:
        content = envelope["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise LLMTransportError("no choices[0].message.content", reason="bad_envelope") from None
    if not isinstance(content, str):
        raise LLMInvalidOutput("message content is not text", reason="not_json")
    return WireAnswer(_parse_json_text(content), content, prompt_tokens, completion_tokens)


def _parse_json_text(text: str) -> Any:
    fenced = _FENCE_RE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        return json.loads(text)
    except ValueError:
        raise LLMInvalidOutput("model output is not JSON", reason="not_json") from None


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0
