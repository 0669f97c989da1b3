"""LLM access: providers, prompts and the client every interceptor shares."""

from __future__ import annotations

from .client import CallStats, LLMClient
from .errors import CircuitOpen, LLMError, LLMInvalidOutput, LLMTimeout, LLMTransportError, Shed

__all__ = [
    "CallStats",
    "CircuitOpen",
    "LLMClient",
    "LLMError",
    "LLMInvalidOutput",
    "LLMTimeout",
    "LLMTransportError",
    "Shed",
]
