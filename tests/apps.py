"""The same tiny app for every adapter: an echo view that reports exactly what it received.

Every adapter's echo answers the same JSON, so guarantee tests are written once:
``{"method", "path", "query", "body_sha256", "body_len", "content_length", "intent",
"outcomes", "reasons", "pii"}``; ``/plain`` is never matched by a rule.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

ARTICLE_PATHS = [
    "/article",
    "/article-header",
    "/article-both",
    "/article-swr",
    "/article-masked",
    "/article-bare",
]  # no rule: bare
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
                    {"type": "pii_masking", "mask_for": ["providers", "app"]},
                    {"type": "intent", "schema": schema, "source": "json:/message"},
                ],
            },
            {
                "path": "/article",
                "methods": ["GET", "HEAD"],
                "budget_ms": budget_ms,
                "interceptors": [
                    {
                        "type": "enrichment",
                        "schema": "schemas.Summary",
                        "source": "json:/body",
                        "into": "json:/summary",
                    },
                ],
            },
            {
                "path": "/article-masked",
                "budget_ms": budget_ms,
                "interceptors": [{"type": "pii_masking", "targets": ["response"]}],
            },
            {
                "path": "/article-swr",
                "budget_ms": budget_ms,
                "interceptors": [
                    {
                        "type": "enrichment",
                        "schema": "schemas.Summary",
                        "source": "json:/body",
                        "into": "json:/summary",
                        "stale_while_revalidate_s": 5,
                    },
                ],
            },
            {
                "path": "/article-both",
                "budget_ms": budget_ms,
                "interceptors": [
                    {"type": "intent", "schema": schema, "source": "query:q"},
                    {"type": "enrichment", "schema": "schemas.Summary", "source": "json:/body"},
                ],
            },
            {
                "path": "/article-header",
                "budget_ms": budget_ms,
                "interceptors": [
                    {
                        "type": "enrichment",
                        "schema": "schemas.Summary",
                        "source": "json:/body",
                        "into": "header:x-llm-summary",
                    },
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
                    {"type": "pii_masking", "mask_for": ["providers", "app"]},
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
    import anyio
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

    async def sleep(request: Request) -> PlainTextResponse:
        # Timing tests' reference: the same load on a view that just waits (``?ms=``).
        await anyio.sleep(float(request.query_params.get("ms", "0")) / 1000)
        return PlainTextResponse("slept")

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
    routes.append(Route("/sleep", sleep))
    routes.append(Route("/wait-disconnect", wait_disconnect, methods=["POST"]))
    for path in ARTICLE_PATHS:
        routes.append(Route(path, ArticleASGI(), methods=["GET", "HEAD"]))
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
        if path in ARTICLE_PATHS:
            return article_wsgi(environ, start_response)  # type: ignore[no-any-return]
        if path == "/plain":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"plain"]
        if path == "/sleep":  # timing tests' reference: a view that just waits ``?ms=``
            time.sleep(float(dict(parse_qsl(environ.get("QUERY_STRING", ""))).get("ms", 0)) / 1000)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"slept"]
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

    @app.route("/sleep")
    def sleep() -> str:
        time.sleep(float(flask.request.args.get("ms", "0")) / 1000)
        return "slept"

    def echo() -> Any:
        request = flask.request
        body = request.get_data(cache=True)
        return describe(
            request.method, request.path, request.args.to_dict(), body,
            request.headers.get("Content-Length"), flask.g.llm, post=request.form.to_dict(),
        )  # fmt: skip

    for path in RULE_PATHS:
        app.add_url_rule(path, path, echo, methods=["GET", "POST", "PUT"])

    def flask_article() -> Any:
        status, headers, chunks = article(flask.request.args.get("kind", "json"))
        body: Any = iter(chunks) if len(chunks) > 1 else chunks[0]
        response = flask.Response(body, status=status, headers=headers)
        if len(chunks) > 1 or status == 204:
            response.headers.pop("Content-Length", None)
        return response

    for path in ARTICLE_PATHS:
        app.add_url_rule(path, path, flask_article, methods=["GET", "HEAD"])
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


def _django_article(request: Any) -> Any:
    from django.http import HttpResponse, StreamingHttpResponse

    status, headers, chunks = article(request.GET.get("kind", "json"))
    from django.core.handlers.asgi import ASGIRequest

    response: Any
    if len(chunks) > 1:
        if isinstance(request, ASGIRequest):  # Django wants async iterators under ASGI

            async def stream() -> Any:
                for chunk in chunks:
                    yield chunk

            response = StreamingHttpResponse(stream(), status=status)
        else:
            response = StreamingHttpResponse(iter(chunks), status=status)
    else:
        response = HttpResponse(chunks[0], status=status)
    for key, value in headers:
        response[key] = value
    if "Content-Type" not in dict(headers):
        del response["Content-Type"]
    return response


def _django_plain(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse("plain", content_type="text/plain")


def _django_sleep(request: Any) -> Any:
    from django.http import HttpResponse

    time.sleep(float(request.GET.get("ms", "0")) / 1000)
    return HttpResponse("slept", content_type="text/plain")


def __getattr__(name: str) -> Any:
    # ROOT_URLCONF = "apps": Django asks this module for urlpatterns.
    if name == "urlpatterns":
        from django.urls import path
        from django.views.decorators.csrf import csrf_exempt

        patterns = [path(p.lstrip("/"), csrf_exempt(_django_echo)) for p in RULE_PATHS]
        patterns += [path(p.lstrip("/"), _django_article) for p in ARTICLE_PATHS]
        patterns.append(path("plain", _django_plain))
        patterns.append(path("sleep", _django_sleep))
        return patterns
    raise AttributeError(name)


def build_django(config: Any, *, asgi: bool) -> Any:
    setup_django()
    from django.conf import settings

    from llm_middleware.django import engine_from_settings

    settings.LLM_MIDDLEWARE = config
    engine_from_settings.reset()  # assigned directly, not through override_settings
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


# -- responses for the enrichment tests: the same bytes from every adapter -----------------------

ARTICLE_BODY = "Llamas are domesticated South American camelids. " * 8
ARTICLE_KINDS = ["json", "stream", "sse", "gzip", "status204", "status500", "text", "big",
                 "etag", "problem"]  # fmt: skip


def article(kind: str) -> tuple[int, list[tuple[str, str]], list[bytes]]:
    """(status, headers, body chunks) for ``/article?kind=...``; several chunks = streamed
    (no Content-Length)."""
    import gzip

    doc = json.dumps({"id": 7, "title": "Llamas", "body": ARTICLE_BODY}).encode()
    json_headers = [("Content-Type", "application/json"), ("X-App", "kept")]
    if kind == "stream":
        return 200, json_headers, [doc[:40], doc[40:]]
    if kind == "sse":
        return 200, [("Content-Type", "text/event-stream")], [b"data: one\n\n", b"data: two\n\n"]
    if kind == "gzip":
        packed = gzip.compress(doc, mtime=0)
        return 200, [*json_headers, ("Content-Encoding", "gzip"),
                     ("Content-Length", str(len(packed)))], [packed]  # fmt: skip
    if kind == "status204":
        return 204, [("X-App", "kept")], [b""]
    if kind == "status500":
        body = b'{"error": "boom", "body": "Llamas"}'
        return 500, [*json_headers, ("Content-Length", str(len(body)))], [body]
    if kind == "text":
        body = ARTICLE_BODY.encode()
        return 200, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))], [body]
    if kind == "big":
        big = json.dumps({"id": 8, "body": "x" * 2_000_000}).encode()
        return 200, [*json_headers, ("Content-Length", str(len(big)))], [big]
    if kind == "etag":
        return 200, [*json_headers, ("ETag", '"v1"'), ("Content-Length", str(len(doc)))], [doc]
    if kind == "pii-json":
        body = json.dumps({"contact": "jane.doe@example.com", "id": 3,
                           "note": "call +1 415 555 0132"}).encode()  # fmt: skip
        return 200, [*json_headers, ("Content-Length", str(len(body)))], [body]
    if kind == "pii-text":
        body = b"write to jane.doe@example.com"
        return 200, [("Content-Type", "text/plain; charset=utf-8"),
                     ("Content-Length", str(len(body)))], [body]  # fmt: skip
    if kind == "problem":
        return 200, [("Content-Type", "application/problem+json"),
                     ("Content-Length", str(len(doc)))], [doc]  # fmt: skip
    return 200, [*json_headers, ("Content-Length", str(len(doc)))], [doc]


class ArticleASGI:
    """A raw ASGI endpoint (an instance, so Starlette's Route treats it as an ASGI app)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from urllib.parse import parse_qs

        kind = parse_qs(scope["query_string"].decode()).get("kind", ["json"])[0]
        status, headers, chunks = article(kind)
        raw = [(k.lower().encode(), v.encode()) for k, v in headers]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        for i, chunk in enumerate(chunks):
            more = i < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})


def article_wsgi(environ: dict[str, Any], start_response: Any) -> Any:
    from urllib.parse import parse_qs

    kind = parse_qs(environ.get("QUERY_STRING", "")).get("kind", ["json"])[0]
    status, headers, chunks = article(kind)
    start_response(f"{status} X", headers)
    if len(chunks) > 1:
        return iter(chunks)  # a generator-like iterable: streamed
    return chunks


def post_asgi(middleware: Any, path: str, body: bytes, content_type: str) -> None:
    """Drive an ASGI middleware with one complete POST, directly (no server), then close its
    HTTP client on the same loop."""
    import asyncio

    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
             "headers": [(b"content-type", content_type.encode()),
                         (b"content-length", str(len(body)).encode())]}  # fmt: skip

    async def run() -> None:
        queue = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> Any:
            return queue.pop(0)

        await middleware(scope, receive, None)
        await middleware.engine.aclose()

    asyncio.run(run())
