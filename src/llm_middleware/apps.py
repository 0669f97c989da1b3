"""Django app: add ``"llm_middleware"`` to ``INSTALLED_APPS`` for the system checks."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class LLMMiddlewareConfig(AppConfig):  # type: ignore[misc]
    name = "llm_middleware"
    verbose_name = "LLM middleware"

    def ready(self) -> None:
        from .checks import check_settings

        checks.register(check_settings)
