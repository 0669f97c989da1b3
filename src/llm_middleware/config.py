"""Configuration: one pydantic schema for dicts, settings, TOML and objects."""

from __future__ import annotations

import importlib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "Anthropic",
    "Config",
    "ConfigError",
    "IntentExtraction",
    "OpenAICompatible",
    "PIIMasking",
    "Prompt",
    "PromptExample",
    "ResponseEnrichment",
    "Rule",
    "load_config",
]

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
_SOURCE_RE = re.compile(r"^(query:.+|form:.+|json:(/.*)?|header:.+|body)$")
# RFC 9110 token: what a header name (and an interceptor name, which goes into Server-Timing)
# may contain.
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _check_token(value: str | None) -> str | None:
    if value is not None and not _TOKEN_RE.match(value):
        raise ValueError(f"{value!r} is not a valid name: letters, digits and -._~ only")
    return value


def _check_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"{value!r} is not an http(s):// URL")
    return value


Name = Annotated[str | None, AfterValidator(_check_token)]
HttpUrl = Annotated[str, AfterValidator(_check_url)]


class ConfigError(ValueError):
    """Raised at start-up for an invalid configuration; the message names rule and field.
    ``errors`` holds ``(location, message)`` pairs, e.g. ``("rules[1].budget_ms", "...")``."""

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors if errors is not None else [("(root)", message)]


def import_string(dotted: str) -> Any:
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"{dotted!r} is not a dotted path like 'package.module.Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None


def _import_schema(value: Any) -> Any:
    if isinstance(value, str):
        value = import_string(value)
    if not (isinstance(value, type) and issubclass(value, BaseModel)):
        raise ValueError(f"schema must be a pydantic model class or its dotted path, got {value!r}")
    return value


SchemaClass = Annotated[type[BaseModel], BeforeValidator(_import_schema)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class OpenAICompatible(_Model):
    """An OpenAI-compatible chat completions endpoint (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM)."""

    kind: Literal["openai"] = "openai"
    base_url: HttpUrl
    model: str
    api_key_env: str | None = None
    # "json_schema": response_format={"type": "json_schema", ...} (OpenAI, vLLM, Ollama).
    # "json_object": {"type": "json_object", "schema": {...}} (llama-cpp-python's server).
    # "none": no response_format; the schema is only described in the prompt.
    dialect: Literal["json_schema", "json_object", "none"] = "json_schema"
    timeout_ms: int = Field(default=30_000, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    temperature: float | None = 0.0
    max_tokens: int | None = Field(default=512, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    @property
    def label(self) -> str:
        return f"openai:{self.model}@{self.base_url}"


class Anthropic(_Model):
    """Anthropic Messages API; structured output through a tool with an input schema."""

    kind: Literal["anthropic"] = "anthropic"
    base_url: HttpUrl = "https://api.anthropic.com"
    model: str
    api_key_env: str | None = "ANTHROPIC_API_KEY"
    anthropic_version: str = "2023-06-01"
    timeout_ms: int = Field(default=30_000, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    temperature: float | None = 0.0
    max_tokens: int = Field(default=512, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    @property
    def label(self) -> str:
        return f"anthropic:{self.model}@{self.base_url}"


Provider = Annotated[OpenAICompatible | Anthropic, Field(discriminator="kind")]


class PromptExample(_Model):
    input: str
    output: dict[str, Any]


class Prompt(_Model):
    """A versioned prompt. ``{input}`` in ``user`` is replaced by the delimited input text,
    ``{schema}`` (in either) by the JSON schema of the expected output."""

    name: str
    version: str = "1"
    system: str
    user: str = "{input}"
    # Few-shot examples, sent as earlier user/assistant turns: {"input": "...", "output": {...}}.
    # The cache key covers the whole prompt (text, examples, schema), not only the version.
    examples: list[PromptExample] = Field(default_factory=list)


class IntentExtraction(_Model):
    type: Literal["intent"] = "intent"
    name: Name = None
    schema_: SchemaClass = Field(alias="schema")
    source: str = "query:q"
    prompt: Prompt | None = None
    # Intent field -> "query:NAME" or "json:/pointer": written into the request itself so an
    # unchanged view that filters by those parameters benefits. A value the client sent is
    # kept unless rewrite_overwrite.
    rewrite: dict[str, str] = Field(default_factory=dict)
    rewrite_overwrite: bool = False
    # Grounding: True checks every field, a list checks those; a field the input does not
    # support is dropped (see llm_middleware.grounding). synonyms: {field: {value: [words]}}.
    grounded: bool | list[str] = False
    synonyms: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    # Number fields: words or symbols one of which must stand next to the number ("under", "$").
    cues: dict[str, list[str]] = Field(default_factory=dict)
    # Literal/Enum fields with synonyms: the model may answer any declared synonym (still a
    # closed list for a provider that constrains output by the JSON schema), grounding maps it
    # to the canonical value. Small models copy words better than they classify. Needs
    # grounding on those fields.
    answer_synonyms: bool = False
    # Shadow mode: log what the LLM produced next to what the request carried, for this share
    # of shadowed requests (0 = off), to structlog or a JSONL file (masked values only).
    compare: float = Field(default=0.0, ge=0.0, le=1.0)
    compare_sink: str | None = None

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        return _check_location(value)

    @model_validator(mode="after")
    def _check_rewrite(self) -> IntentExtraction:
        fields = self.schema_.model_fields
        names = self.grounded if isinstance(self.grounded, list) else []
        for name in [*names, *self.synonyms, *self.cues]:
            if name not in fields:
                schema = self.schema_.__name__
                raise ValueError(f"grounded/synonyms/cues: no field {name!r} in {schema}")
        if self.answer_synonyms:
            checked = set(fields) if self.grounded is True else set(names)
            if not self.synonyms or not set(self.synonyms) <= checked:
                raise ValueError(
                    "answer_synonyms: declare synonyms and ground every field that has them"
                )
        for name, target in self.rewrite.items():
            if name not in fields:
                raise ValueError(f"rewrite: {self.schema_.__name__} has no field {name!r}")
            if not (target.startswith("query:") and len(target) > 6) and not target.startswith(
                "json:/"
            ):
                raise ValueError(
                    f"rewrite target {target!r} for {name!r}: use query:NAME or json:/pointer"
                )
        return self


class PIIMasking(_Model):
    type: Literal["pii_masking"] = "pii_masking"
    name: Name = None
    entities: list[str] | None = None
    # Names, places and addresses (PERSON, LOCATION, ADDRESS) through spaCy, the [ner] extra:
    # true for the default English pipeline, or an installed spaCy pipeline's name. Off by
    # default: a model costs milliseconds per text where the patterns cost microseconds.
    ner: bool | str = False
    # Phone candidates must also be valid numbers of one of these regions (ISO codes such as
    # "US", "GB"), checked with libphonenumber: the [phones] extra. Off by default.
    phone_regions: list[str] | None = None

    @model_validator(mode="after")
    def _check_detection(self) -> PIIMasking:
        from .pii import PIIDetector
        from .pii.ner import NER_LABELS

        def no_names(text: str) -> list[tuple[str, int, int, float]]:
            return []

        try:
            detector = PIIDetector(
                self.entities, ner=no_names if self.ner else None, phone_regions=self.phone_regions
            )
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if self.ner and self.entities is not None:
            patterns = PIIDetector().entities
            unknown = set(detector.entities) - set(patterns) - set(NER_LABELS.values())
            if unknown:
                raise ValueError(f"no detector for entity types: {', '.join(sorted(unknown))}")
        return self

    strategy: Literal["placeholder", "redact", "hash", "partial"] = "placeholder"
    # Field names (JSON keys at any depth, form and query fields) whose values reach the app
    # unmasked, e.g. an "email" the view must validate and use. Still masked for providers.
    keep_fields: list[str] = Field(default_factory=list)
    # Names the environment variable that holds the HMAC key; required by strategy "hash".
    salt_env: str | None = None
    targets: list[Literal["query", "body", "response"]] = ["query", "body"]
    # Who gets masked values: "providers" always (prompts, whatever their source); with "app",
    # the query and body the app sees are masked too. The default leaves the app its own fields
    # (logins, CSRF tokens), so masking a route never breaks it.
    mask_for: list[Literal["providers", "app"]] = ["providers"]
    # When masking cannot run (body too large, streaming, undecodable, out of time): let the
    # request through as it came ("passthrough", the default: the app then sees the raw body)
    # or answer 413/415/422 without calling the app ("reject").
    on_masking_failure: Literal["passthrough", "reject"] = "passthrough"

    @field_validator("mask_for")
    @classmethod
    def _check_mask_for(cls, value: list[str]) -> list[str]:
        if "providers" not in value:
            raise ValueError('mask_for must include "providers"')
        return value

    @model_validator(mode="after")
    def _hash_needs_key(self) -> PIIMasking:
        if self.strategy == "hash" and not self.salt_env:
            raise ValueError(
                'strategy "hash" is a keyed HMAC: set salt_env to the name of the environment '
                "variable that holds the key"
            )
        return self


class ResponseEnrichment(_Model):
    type: Literal["enrichment"] = "enrichment"
    name: Name = None
    schema_: SchemaClass = Field(alias="schema")
    source: str = "json:"
    into: str = "json:/llm"
    prompt: Prompt | None = None
    on_error_status: bool = False  # also enrich 4xx/5xx JSON responses
    # Opt-in: when the budget runs out, the LLM call may go on in the background for this many
    # seconds (holding an in-flight slot), and its cached result enriches the next identical
    # response at once. 0 = off.
    stale_while_revalidate_s: float = Field(default=0.0, ge=0.0, le=300.0)
    # into "header:NAME": a larger value is not written (outcome skipped, header_too_large).
    max_header_bytes: int = Field(default=4096, gt=0, le=65_536)

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        if not value.startswith("json:"):
            raise ValueError(f"{value!r}: enrichment reads the JSON response: use json:/pointer")
        return _check_location(value)

    @field_validator("into")
    @classmethod
    def _check_into(cls, value: str) -> str:
        if value.startswith("header:") and _TOKEN_RE.match(value[7:]):
            return value
        if not value.startswith("json:/"):
            raise ValueError(f"{value!r}: write into json:/pointer or header:NAME")
        return value


InterceptorConfig = Annotated[
    IntentExtraction | PIIMasking | ResponseEnrichment, Field(discriminator="type")
]


def _check_location(value: str) -> str:
    if not _SOURCE_RE.match(value):
        raise ValueError(
            f"{value!r} is not a source; "
            "use query:NAME, form:NAME, json:/pointer, header:NAME or body"
        )
    if value.startswith("json:") and value != "json:" and not value.startswith("json:/"):
        raise ValueError(f"{value!r}: a JSON pointer starts with '/'")
    return value


class Rule(_Model):
    path: str
    methods: list[str] | None = None
    budget_ms: int = Field(default=800, gt=0, le=600_000)
    mode: Literal["enforce", "shadow", "off"] = "enforce"
    sample: float = Field(default=1.0, ge=0.0, le=1.0)
    max_body_bytes: int | None = Field(default=None, gt=0)
    interceptors: list[InterceptorConfig] = Field(default_factory=list)

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        upper = [m.upper() for m in value]
        unknown = sorted(set(upper) - HTTP_METHODS)
        if unknown:
            raise ValueError(f"unknown HTTP method(s): {', '.join(unknown)}")
        return upper

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        from .routing import compile_path  # routing imports config types only lazily

        compile_path(value)  # raises ValueError with a precise message
        return value


class Config(_Model):
    providers: list[Provider] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    max_response_bytes: int = Field(default=1_048_576, gt=0)
    max_llm_response_bytes: int = Field(default=1_048_576, gt=0)
    max_in_flight: int = Field(default=128, gt=0)
    cache_ttl_s: float = Field(default=300.0, ge=0)
    cache_size: int = Field(default=2048, ge=0)
    breaker_failures: int = Field(default=5, gt=0)
    breaker_reset_s: float = Field(default=30.0, gt=0)
    client_key_header: str | None = None
    server_timing: bool = False
    # Where views find the result: request.state.<name> / g.<name> / request.<name>.
    result_attr: str = Field(default="llm", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # Share of requests served wholly from cache that get a log line (failures always do).
    log_cached_sample: float = Field(default=0.01, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _needs_provider(self) -> Config:
        for index, rule in enumerate(self.rules):
            uses_llm = any(not isinstance(i, PIIMasking) for i in rule.interceptors)
            if uses_llm and not self.providers and rule.mode != "off":
                raise ValueError(
                    f"rules[{index}] ({rule.path}) uses an LLM interceptor "
                    "but no providers are configured"
                )
        return self


def _error_list(exc: ValidationError, data: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = err["loc"]
        parts: list[str] = []
        for item in loc:
            if isinstance(item, int):
                parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
            elif item in {"intent", "pii_masking", "enrichment", "openai", "anthropic"}:
                continue  # discriminator tags pydantic inserts into the location
            else:
                parts.append(str(item))
        where = ".".join(parts) or "(root)"
        rule_path = _rule_path(loc, data)
        message = str(err["msg"])
        if rule_path:
            message += f" (rule path {rule_path!r})"
        out.append((where, message))
    return out


def _rule_path(loc: tuple[int | str, ...], data: Any) -> str | None:
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rules = data.get("rules") if isinstance(data, Mapping) else getattr(data, "rules", None)
        try:
            rule = rules[loc[1]]  # type: ignore[index]
        except (TypeError, IndexError, KeyError):
            return None
        path = rule.get("path") if isinstance(rule, Mapping) else getattr(rule, "path", None)
        return path if isinstance(path, str) else None
    return None


def load_config(
    config: Config | Mapping[str, Any] | str | Path | None = None, **kwargs: Any
) -> Config:
    """Validate a ``Config``, a mapping, a TOML file path, or keyword arguments."""
    if isinstance(config, Config) and not kwargs:
        return config
    data: dict[str, Any]
    if config is None:
        data = {}
    elif isinstance(config, Config):
        data = dict(config)
    elif isinstance(config, str | Path):
        with open(config, "rb") as fh:
            raw = tomllib.load(fh)
        data = dict(raw.get("llm_middleware", raw))
    elif isinstance(config, Mapping):
        data = {str(k).lower(): v for k, v in config.items()}
    else:
        raise ConfigError(f"config must be a Config, a mapping or a TOML path, not {config!r}")
    data.update(kwargs)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        errors = _error_list(exc, data)
        lines = ["invalid LLM_MIDDLEWARE configuration:"]
        lines += [f"  {where}: {message}" for where, message in errors]
        raise ConfigError("\n".join(lines), errors) from None
