"""Django system checks: every configuration error, with a stable id.

- ``llm_middleware.E001``: ``LLM_MIDDLEWARE`` is not a mapping (or ``Config``).
- ``llm_middleware.E002``: a provider entry is invalid.
- ``llm_middleware.E003``: a rule is invalid (path, methods, budget, interceptor, schema...).
- ``llm_middleware.E004``: another top-level key is invalid.
- ``llm_middleware.W001``: the middleware comes after ``CsrfViewMiddleware``, which reads
  ``request.POST`` first, so request bodies can no longer be read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from .config import Config, ConfigError
from .engine import Engine

MIDDLEWARE_PATH = "llm_middleware.django.LLMMiddleware"
CSRF_PATH = "django.middleware.csrf.CsrfViewMiddleware"
HINT = "See the configuration reference in llm_middleware's README."


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if not hasattr(settings, "LLM_MIDDLEWARE"):
        return messages
    value = settings.LLM_MIDDLEWARE
    if not isinstance(value, Mapping | Config):
        return [
            Error(
                f"LLM_MIDDLEWARE must be a dict, not {type(value).__name__}.",
                hint=HINT,
                id="llm_middleware.E001",
            )
        ]
    try:
        Engine(value)
    except ConfigError as exc:
        for where, message in exc.errors:
            if where.startswith("providers"):
                code = "E002"
            elif where.startswith("rules"):
                code = "E003"
            else:
                code = "E004"
            messages.append(
                Error(f"LLM_MIDDLEWARE {where}: {message}", hint=HINT, id=f"llm_middleware.{code}")
            )
    if (
        MIDDLEWARE_PATH in middleware
        and CSRF_PATH in middleware
        and middleware.index(MIDDLEWARE_PATH) > middleware.index(CSRF_PATH)
    ):
        messages.append(
            Warning(
                f"{MIDDLEWARE_PATH} comes after {CSRF_PATH}, which reads request.POST "
                "first: request bodies can then no longer be read or masked.",
                hint=f"Move {MIDDLEWARE_PATH} above {CSRF_PATH} in MIDDLEWARE.",
                id="llm_middleware.W001",
            )
        )
    return messages
