"""LLM access: providers, prompts and the client every interceptor shares."""

from __future__ import annotations

from .client import CallStats, LLMClient
from .errors import (
    CircuitOpen,
    LLMConfigError,
    LLMError,
    LLMInvalidOutput,
    LLMTimeout,
    LLMTransportError,
    Shed,
)

__all__ = [
    "CallStats",
    "CircuitOpen",
    "LLMConfigError",
    "LLMClient",
    "LLMError",
    "LLMInvalidOutput",
    "LLMTimeout",
    "LLMTransportError",
    "Shed",
]
