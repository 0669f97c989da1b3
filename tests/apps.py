"""The same tiny app for every adapter: an echo view that reports exactly what it received.

Every adapter's echo answers the same JSON, so guarantee tests are written once:
``{"method", "path", "query", "body_sha256", "body_len", "content_length", "intent",
"outcomes", "reasons", "pii"}``; ``/plain`` is never matched by a rule.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

RULE_PATHS = [
    "/search", "/echo", "/json-echo", "/form-echo", "/body-echo", "/header-echo", "/pii-echo",
    "/pii-form-echo", "/rewrite-search", "/rewrite-json",
]  # fmt: skip


def make_config(provider_url: str, *, budget_ms: int = 300, **overrides: Any) -> dict[str, Any]:
    """One rule per source kind, all on the provider at ``provider_url``."""
    schema = "schemas.SearchIntent"

    def rule(path: str, source: str, methods: list[str] | None = None) -> dict[str, Any]:
        return {
            "path": path,
            "methods": methods,
            "budget_ms": budget_ms,
            "interceptors": [{"type": "intent", "schema": schema, "source": source}],
        }

    config: dict[str, Any] = {
        "providers": [
            {
                "kind": "openai",
                "base_url": provider_url,
                "model": "fake",
                "max_retries": 1,
            }
        ],
        "rules": [
            rule("/search", "query:q", ["GET"]),
            rule("/json-echo", "json:/q", ["POST", "PUT"]),
            rule("/form-echo", "form:q", ["POST"]),
            rule("/body-echo", "body", ["POST"]),
            rule("/header-echo", "header:x-query"),
            rule("/wait-disconnect", "json:/q", ["POST"]),
            {
                "path": "/pii-echo",
                "budget_ms": budget_ms,
                "interceptors": [
                    {"type": "pii_masking"},
                    {"type": "intent", "schema": schema, "source": "json:/message"},
                ],
            },
            {
                "path": "/rewrite-search",
                "budget_ms": budget_ms,
                "interceptors": [
                    {
                        "type": "intent",
                        "schema": schema,
                        "source": "query:q",
                        "rewrite": {"max_price": "query:max_price", "category": "query:category"},
                    },
                ],
            },
            {
                "path": "/rewrite-json",
                "budget_ms": budget_ms,
                "interceptors": [
                    {
                        "type": "intent",
                        "schema": schema,
                        "source": "json:/q",
                        "rewrite": {
                            "max_price": "json:/filters/max_price",
                            "color": "json:/filters/color",
                        },
                    },
                ],
            },
            {
                "path": "/pii-form-echo",
                "budget_ms": budget_ms,
                "interceptors": [
                    {"type": "pii_masking"},
                    {"type": "intent", "schema": schema, "source": "form:message"},
                ],
            },
        ],
    }
    config.update(overrides)
    return config


def describe(
    method: str,
    path: str,
    query: dict[str, str],
    body: bytes,
    content_length: str | None,
    result: Any,
    **extra: Any,
) -> dict[str, Any]:
    return {
        **extra,
        "method": method,
        "path": path,
        "query": query,
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body": body.decode("utf-8", "replace"),
        "body_len": len(body),
        "content_length": content_length,
        "intent": result.intent.model_dump() if result is not None and result.intent else None,
        "outcomes": dict(result.outcomes) if result is not None else None,
        "reasons": dict(result.reasons) if result is not None else None,
        "pii": dict(result.pii) if result is not None else None,
        "added_ms": result.added_ms if result is not None else None,
    }


# -- ASGI (Starlette) ----------------------------------------------------------------------------


def build_starlette(config: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from llm_middleware import LLMMiddleware

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        result = getattr(request.state, "llm", None)
        return JSONResponse(
            describe(
                request.method,
                request.url.path,
                dict(request.query_params),
                body,
                request.headers.get("content-length"),
                result,
            )
        )

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    async def wait_disconnect(request: Request) -> PlainTextResponse:
        # Reads the body, then blocks on receive() until the client goes away, as a streaming
        # endpoint does; a replayed receive that never delivers http.disconnect hangs here.
        body = await request.body()
        while (await request.receive())["type"] != "http.disconnect":
            pass
        marker = os.environ.get("LLM_TEST_MARKER")
        if marker:
            with open(marker, "w") as fh:
                fh.write(
                    json.dumps({"body_len": len(body), "outcomes": request.state.llm.outcomes})
                )
        return PlainTextResponse("gone")

    routes = [Route(p, echo, methods=["GET", "POST", "PUT"]) for p in RULE_PATHS]
    routes.append(Route("/plain", plain))
    routes.append(Route("/wait-disconnect", wait_disconnect, methods=["POST"]))
    app = Starlette(routes=routes)
    app.add_middleware(LLMMiddleware, config=config)
    return app


def subprocess_starlette() -> Any:
    """uvicorn --factory entry point for subprocess servers: config JSON from the environment."""
    return build_starlette(json.loads(os.environ["LLM_TEST_CONFIG"]))


# -- WSGI (plain) --------------------------------------------------------------------------------


def build_wsgi(config: Any) -> Any:
    from urllib.parse import parse_qsl

    from llm_middleware.wsgi import RESULT_KEY, LLMWSGIMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/plain":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"plain"]
        length = environ.get("CONTENT_LENGTH")
        stream = environ["wsgi.input"]
        body = stream.read(int(length)) if length else (
            stream.read() if environ.get("wsgi.input_terminated") else b""
        )  # fmt: skip
        data = describe(
            environ["REQUEST_METHOD"], path, dict(parse_qsl(environ.get("QUERY_STRING", ""))),
            body, length or None, environ.get(RESULT_KEY),
        )  # fmt: skip
        payload = json.dumps(data).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(payload)))])  # fmt: skip
        return [payload]

    return LLMWSGIMiddleware(app, config)


# -- Flask ---------------------------------------------------------------------------------------


def build_flask(config: Any) -> Any:
    import flask

    from llm_middleware.flask import LLMMiddleware

    app = flask.Flask("llm_test_app")
    app.config["LLM_MIDDLEWARE"] = config

    @app.route("/plain")
    def plain() -> str:
        return "plain"

    def echo() -> Any:
        request = flask.request
        body = request.get_data(cache=True)
        return describe(
            request.method, request.path, request.args.to_dict(), body,
            request.headers.get("Content-Length"), flask.g.llm, post=request.form.to_dict(),
        )  # fmt: skip

    for path in RULE_PATHS:
        app.add_url_rule(path, path, echo, methods=["GET", "POST", "PUT"])
    LLMMiddleware(app)
    return app


# -- Django (one settings module for the process; LLM_MIDDLEWARE swapped per test) ----------------


def setup_django() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="tests-only",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF="apps",
            INSTALLED_APPS=["llm_middleware"],
            MIDDLEWARE=["llm_middleware.django.LLMMiddleware"],
            USE_TZ=True,
            LLM_MIDDLEWARE={},
        )
        django.setup()


def _django_echo(request: Any) -> Any:
    from django.http import JsonResponse

    body = request.body
    return JsonResponse(
        describe(
            request.method,
            request.path,
            request.GET.dict(),
            body,
            request.META.get("CONTENT_LENGTH") or None,
            getattr(request, "llm", None),
            post=request.POST.dict(),
        )  # fmt: skip
    )


def _django_plain(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse("plain", content_type="text/plain")


def __getattr__(name: str) -> Any:
    # ROOT_URLCONF = "apps": Django asks this module for urlpatterns.
    if name == "urlpatterns":
        from django.urls import path
        from django.views.decorators.csrf import csrf_exempt

        patterns = [path(p.lstrip("/"), csrf_exempt(_django_echo)) for p in RULE_PATHS]
        patterns.append(path("plain", _django_plain))
        return patterns
    raise AttributeError(name)


def build_django(config: Any, *, asgi: bool) -> Any:
    setup_django()
    from django.conf import settings

    settings.LLM_MIDDLEWARE = config
    if asgi:
        from django.core.asgi import get_asgi_application

        return get_asgi_application()
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


# -- subprocess entry points (gunicorn / uvicorn) -----------------------------------------------


def subprocess_wsgi() -> Any:
    """gunicorn ``apps:subprocess_wsgi()``: adapter from ``LLM_TEST_ADAPTER``; with
    ``LLM_TEST_WARM`` set, one matched request runs in the master before it forks, so the
    background loop and the HTTP client exist there (as with ``--preload`` in production)."""
    config = json.loads(os.environ["LLM_TEST_CONFIG"])
    adapter = os.environ.get("LLM_TEST_ADAPTER", "wsgi")
    if adapter == "django":
        app = build_django(config, asgi=False)
    elif adapter == "flask":
        app = build_flask(config)
    else:
        app = build_wsgi(config)
    if os.environ.get("LLM_TEST_WARM"):
        import io

        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/search", "QUERY_STRING": "q=warm",
                   "wsgi.input": io.BytesIO(b""), "SERVER_NAME": "t", "SERVER_PORT": "80",
                   "wsgi.url_scheme": "http", "REMOTE_ADDR": "127.0.0.1"}  # fmt: skip
        body = app(environ, lambda status, headers, exc_info=None: None)
        b"".join(body)
        getattr(body, "close", lambda: None)()
    return app


def subprocess_django_asgi() -> Any:
    return build_django(json.loads(os.environ["LLM_TEST_CONFIG"]), asgi=True)
