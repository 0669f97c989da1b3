"""Settings read from the environment when the app is created."""

from __future__ import annotations

import os
from typing import Any


def llm_middleware_settings() -> dict[str, Any]:
    """``app.config["LLM_MIDDLEWARE"]``: the same keys as Django's ``LLM_MIDDLEWARE`` setting."""
    budget_ms = int(os.environ.get("LLM_BUDGET_MS", "6000"))
    return {
        "providers": [
            {
                "kind": "openai",
                "base_url": os.environ.get("LLM_BASE_URL", "http://127.0.0.1:8080/v1"),
                "model": os.environ.get("LLM_MODEL", "local"),
                "dialect": os.environ.get("LLM_DIALECT", "json_object"),
                "api_key_env": "LLM_API_KEY",  # the variable's name; unset for a local server
            }
        ],
        "rules": [
            {
                "path": "/search",
                "methods": ["GET"],
                "budget_ms": budget_ms,
                "interceptors": [
                    {
                        "type": "intent",
                        "schema": "shop_flask.intents.SearchIntent",
                        "source": "query:q",
                        # Intent fields -> the query parameters the legacy view reads.
                        "rewrite": {
                            "category": "query:category",
                            "color": "query:color",
                            "max_price": "query:max_price",
                        },
                    }
                ],
            },
            {
                # No LLM here: masking only, before the view sees the body.
                "path": "/tickets",
                "methods": ["POST"],
                "interceptors": [{"type": "pii_masking", "mask_for": ["providers", "app"]}],
            },
            {
                "path": "/articles/{id:int}",
                "methods": ["GET"],
                "budget_ms": budget_ms,
                "interceptors": [
                    {
                        "type": "enrichment",
                        "schema": "shop_flask.intents.Summary",
                        "source": "json:/body",
                        "into": "json:/summary",
                    }
                ],
            },
        ],
    }
