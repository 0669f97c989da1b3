"""Path-matched LLM interceptors for existing web apps, each under a strict time budget."""

from __future__ import annotations

from .asgi import LLMMiddleware
from .config import (
    Anthropic,
    Config,
    ConfigError,
    IntentExtraction,
    OpenAICompatible,
    PIIMasking,
    Prompt,
    ResponseEnrichment,
    Rule,
    load_config,
)
from .engine import Engine
from .result import LLMResult

__all__ = [
    "Anthropic",
    "Config",
    "ConfigError",
    "Engine",
    "IntentExtraction",
    "LLMMiddleware",
    "LLMResult",
    "OpenAICompatible",
    "PIIMasking",
    "Prompt",
    "ResponseEnrichment",
    "Rule",
    "load_config",
]

__version__ = "0.1.0"
