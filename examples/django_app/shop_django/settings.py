"""Settings for the Django example shop: no database, no sessions, no templates.

The LLM features are all here: ``llm_middleware`` in ``INSTALLED_APPS`` (for its system checks),
its middleware in ``MIDDLEWARE`` and the ``LLM_MIDDLEWARE`` dict.
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "llm_middleware",  # registers the llm_middleware.* system checks
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before CsrfViewMiddleware, which reads request.POST (else: warning llm_middleware.W001).
    "llm_middleware.django.LLMMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "shop_django.urls"
WSGI_APPLICATION = "shop_django.wsgi.application"

TIME_ZONE = "UTC"
USE_TZ = True

# Ticket views log at INFO: shown on the console (with the addresses already masked).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"shop_django": {"handlers": ["console"], "level": "INFO"}},
}

# Lower case: not a Django setting, just a value shared by the rules below.
llm_budget_ms = int(os.environ.get("LLM_BUDGET_MS", "6000"))

LLM_MIDDLEWARE = {
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
            "budget_ms": llm_budget_ms,
            "interceptors": [
                {
                    "type": "intent",
                    # A dotted path; LLM_SEARCH_SCHEMA swaps in another model without a code change.
                    "schema": os.environ.get(
                        "LLM_SEARCH_SCHEMA", "shop_django.intents.SearchIntent"
                    ),
                    "source": "query:q",
                    # Intent fields -> the query parameters the legacy view reads (request.GET).
                    "rewrite": {
                        "category": "query:category",
                        "color": "query:color",
                        "max_price": "query:max_price",
                    },
                }
            ],
        },
        {
            # No LLM here: masking only, before the view sees request.body.
            "path": "/tickets",
            "methods": ["POST"],
            "interceptors": [{"type": "pii_masking", "mask_for": ["providers", "app"]}],
        },
        {
            "path": "/articles/{id:int}",
            "methods": ["GET"],
            "budget_ms": llm_budget_ms,
            "interceptors": [
                {
                    "type": "enrichment",
                    "schema": "shop_django.intents.Summary",
                    "source": "json:/body",
                    "into": "json:/summary",
                }
            ],
        },
    ],
}
