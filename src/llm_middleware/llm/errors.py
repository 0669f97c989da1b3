"""Failures of an LLM call. Each maps to one outcome name in ``LLMResult.outcomes``."""

from __future__ import annotations


class LLMError(Exception):
    outcome = "error"

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or type(self).__name__


class LLMTimeout(LLMError):
    outcome = "timeout"


class LLMInvalidOutput(LLMError):
    """The provider answered, but not with JSON valid under the schema (even once corrected)."""

    outcome = "invalid"


class LLMTransportError(LLMError):
    """Connection refused/reset, HTTP error status, malformed envelope, oversize answer."""

    outcome = "error"


class LLMConfigError(LLMError):
    """A provider that cannot be called as configured (e.g. an API key with control
    characters): refused before anything is sent."""

    outcome = "error"


class CircuitOpen(LLMError):
    outcome = "circuit_open"


class Shed(LLMError):
    """Too many LLM calls in flight in this process: pass through at once."""

    outcome = "shed"
