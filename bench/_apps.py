"""The apps the benchmarks measure, bare and wrapped, plus the server entry point.

``/plain`` is never matched by a rule; ``/search`` is matched by the single rule (intent
extraction from ``query:q``); ``/sleep?ms=N`` (unmatched) answers after N ms, the reference for
an ideal middleware that would cost exactly its budget. The views answer a tiny text body with a
Content-Length; ``/search`` also reports what the middleware did in ``x-llm-outcome`` and
``x-llm-added-ms`` headers (``-`` when bare).

The same three views exist for ASGI (Starlette), plain WSGI, Flask and Django (sync, WSGI
handler). Server entry points::

    python bench/_apps.py uvicorn asgi_wrapped --fd N      # _common.uvicorn_server
    gunicorn '_apps:flask_wrapped()' --bind fd://N ...     # _common.gunicorn_server

with the configuration in the environment: ``BENCH_PROVIDER_URL``, ``BENCH_BUDGET_MS`` and
``BENCH_EXTRA_CONFIG`` (JSON merged into the middleware config). Django's settings can be
configured once per process: in a server subprocess that is done by its factory; in-process,
:func:`django_handlers` configures them once and builds the bare and wrapped handlers from the
same settings (``WSGIHandler()`` reads ``settings.MIDDLEWARE`` when it is constructed).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import time
from typing import Any
from urllib.parse import parse_qs

from _common import quiet_structlog  # bench/ is sys.path[0] when a bench script runs
from pydantic import BaseModel, Field


class SearchIntent(BaseModel):
    """A product search."""

    category: str | None = Field(default=None, description="product category, e.g. shoes")
    color: str | None = Field(default=None, description="colour the user asked for")
    max_price: float | None = Field(default=None, description="highest price, a number")


#: What the fake provider answers (a valid ``SearchIntent``).
INTENT_ANSWER: dict[str, Any] = {"category": "shoes", "color": "red", "max_price": 50.0}


def middleware_config(provider_url: str, *, budget_ms: int = 200, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "providers": [{"kind": "openai", "base_url": provider_url, "model": "fake"}],
        "rules": [
            {
                "path": "/search",
                "budget_ms": budget_ms,
                "interceptors": [{"type": "intent", "schema": SearchIntent, "source": "query:q"}],
            }
        ],
    }
    config.update(extra)
    return config


def _config_from_env() -> dict[str, Any]:
    return middleware_config(
        os.environ["BENCH_PROVIDER_URL"],
        budget_ms=int(os.environ.get("BENCH_BUDGET_MS", "200")),
        **json.loads(os.environ.get("BENCH_EXTRA_CONFIG", "{}")),
    )


def _outcome_headers(result: Any) -> dict[str, str]:
    if result is None:
        return {"x-llm-outcome": "-", "x-llm-added-ms": "-"}
    outcomes = ",".join(f"{k}={v}" for k, v in result.outcomes.items())
    reasons = ",".join(f"{k}={v}" for k, v in result.reasons.items())
    return {
        "x-llm-outcome": f"{outcomes};{reasons}" if reasons else outcomes,
        "x-llm-added-ms": f"{result.added_ms:.3f}",
    }


# -- ASGI (Starlette) ----------------------------------------------------------------------------


def starlette_app() -> Any:
    """The bare app (no middleware)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def search(request: Request) -> PlainTextResponse:
        result = getattr(request.state, "llm", None)
        return PlainTextResponse("search", headers=_outcome_headers(result))

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    async def sleep(request: Request) -> PlainTextResponse:
        await asyncio.sleep(float(request.query_params.get("ms", "0")) / 1000.0)
        return PlainTextResponse("slept")

    return Starlette(
        routes=[Route("/search", search), Route("/plain", plain), Route("/sleep", sleep)]
    )


def wrap_asgi(app: Any, config: dict[str, Any]) -> Any:
    """The same app object, wrapped (outermost) by the middleware."""
    from llm_middleware import LLMMiddleware

    return LLMMiddleware(app, config=config)


class GCPauses:
    """Records every garbage collection's pause (``BENCH_GC_STATS=1``), served as JSON at
    ``/_bench/gc`` by :class:`Instrumented` (a full collection blocks the event loop);
    ``/_bench/gc?collect=1`` also collects everything (untimed) once the pauses are read."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float, int]] = []  # (generation, ms, objects freed)
        self._start = 0.0

    def install(self) -> None:
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            ms = (time.perf_counter() - self._start) * 1e3
            self.pauses.append((info["generation"], ms, info["collected"]))

    def json(self, *, collect: bool = False) -> bytes:
        """The pauses since the last call; with ``collect``, then a full collection (untimed),
        and ``tracked`` counts what survived it: the live heap the next cell starts from."""
        pauses, self.pauses = self.pauses, []
        if collect:
            gc.collect()
            self.pauses = []
        data = {"pauses": pauses, "gc_counts": gc.get_count(), "tracked": len(gc.get_objects())}
        return json.dumps(data).encode()


class Instrumented:
    """Outermost ASGI wrapper for the budget server: ``x-app-ms`` on every response (time from
    entering the app to the response start) and ``/_bench/gc`` when ``gc_pauses`` is set."""

    def __init__(self, app: Any, gc_pauses: GCPauses | None = None) -> None:
        self.app = app
        self.gc_pauses = gc_pauses

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.gc_pauses is not None and scope["path"] == "/_bench/gc":
            # collect=1: start the next cell from a clean heap
            body = self.gc_pauses.json(collect=scope["query_string"] == b"collect=1")
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        start = time.perf_counter()

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                elapsed = f"{(time.perf_counter() - start) * 1e3:.3f}".encode()
                message = {**message, "headers": [*message["headers"], (b"x-app-ms", elapsed)]}
            await send(message)

        await self.app(scope, receive, timed_send)


def asgi_bare() -> Any:
    quiet_structlog()
    return starlette_app()


def asgi_wrapped() -> Any:
    quiet_structlog()
    return wrap_asgi(starlette_app(), _config_from_env())


def asgi_wrapped_instrumented() -> Any:
    pauses = None
    if os.environ.get("BENCH_GC_STATS") == "1":
        pauses = GCPauses()
        pauses.install()
    return Instrumented(asgi_wrapped(), pauses)


# -- WSGI (plain) --------------------------------------------------------------------------------


def _sleep_ms(query_string: str) -> None:
    time.sleep(float(parse_qs(query_string).get("ms", ["0"])[0]) / 1000.0)


def wsgi_app() -> Any:
    """The bare app: a plain WSGI callable."""
    from llm_middleware.wsgi import RESULT_KEY

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/plain":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
            return [b"plain"]
        if path == "/search":
            headers = [("Content-Type", "text/plain"), ("Content-Length", "6")]
            headers += _outcome_headers(environ.get(RESULT_KEY)).items()
            start_response("200 OK", headers)
            return [b"search"]
        if path == "/sleep":
            _sleep_ms(environ.get("QUERY_STRING", ""))
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
            return [b"slept"]
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]

    return app


def wrap_wsgi(app: Any, config: dict[str, Any]) -> Any:
    from llm_middleware.wsgi import LLMWSGIMiddleware

    return LLMWSGIMiddleware(app, config)


class NoopWSGIMiddleware:
    """The cheapest possible WSGI middleware: the floor any wrapper pays in-process."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.app(environ, start_response)


# -- Flask ---------------------------------------------------------------------------------------


def flask_app() -> Any:
    """A new bare Flask app (the extension mutates the app it wraps: build one per variant)."""
    import flask

    app = flask.Flask("bench_flask")

    @app.route("/plain")
    def plain() -> str:
        return "plain"

    @app.route("/search")
    def search() -> Any:
        return flask.Response("search", headers=_outcome_headers(flask.g.get("llm")))

    @app.route("/sleep")
    def sleep() -> str:
        _sleep_ms(flask.request.query_string.decode("latin-1"))
        return "slept"

    return app


def wrap_flask(app: Any, config: dict[str, Any]) -> Any:
    from llm_middleware.flask import LLMMiddleware

    LLMMiddleware(app, config=config)
    return app


# -- Django (sync, WSGI handler) -------------------------------------------------------------------

DJANGO_MIDDLEWARE = "llm_middleware.django.LLMMiddleware"
DJANGO_NOOP = "_apps.NoopDjangoMiddleware"


def setup_django(config: dict[str, Any], middleware: list[str]) -> None:
    """Once per process; ``ROOT_URLCONF`` is this module (see ``__getattr__``)."""
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="_apps",
        INSTALLED_APPS=[],
        MIDDLEWARE=middleware,
        USE_TZ=True,
        LLM_MIDDLEWARE=config,
    )
    django.setup(set_prefix=False)


def django_handler(middleware: list[str]) -> Any:
    """A WSGI handler with ``middleware`` (read now, at construction) and the settings'
    ``LLM_MIDDLEWARE``."""
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    settings.MIDDLEWARE = middleware
    return WSGIHandler()


def django_handlers(config: dict[str, Any]) -> dict[str, Any]:
    """In-process: the bare, wrapped and no-op-middleware handlers over the same settings."""
    setup_django(config, [])
    return {
        "bare": django_handler([]),
        "wrapped": django_handler([DJANGO_MIDDLEWARE]),
        "noop": django_handler([DJANGO_NOOP]),
    }


class NoopDjangoMiddleware:
    """The cheapest possible Django middleware: the floor any middleware pays in-process."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)


# -- Django (async, ASGI handler) ----------------------------------------------------------------

DJANGO_NOOP_ASYNC = "_apps.NoopAsyncDjangoMiddleware"


class NoopAsyncDjangoMiddleware:
    """The cheapest async Django middleware (as Django's docs write one): the floor any
    middleware pays in an async handler."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        from asgiref.sync import markcoroutinefunction

        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: Any) -> Any:
        return await self.get_response(request)


def django_asgi_handler(middleware: list[str]) -> Any:
    """An ASGI handler (async mode: the middleware chain is awaited) with ``middleware``, whose
    requests resolve to async views (``request.urlconf``: no thread hop for the view)."""
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler

    settings.MIDDLEWARE = middleware
    handler = ASGIHandler()
    handler.request_class = _async_views_request_class()
    return handler


def django_asgi_handlers() -> dict[str, Any]:
    """In-process, after :func:`django_handlers` configured the settings: the bare, wrapped and
    no-op-middleware ASGI handlers."""
    return {
        "bare": django_asgi_handler([]),
        "wrapped": django_asgi_handler([DJANGO_MIDDLEWARE]),
        "noop": django_asgi_handler([DJANGO_NOOP_ASYNC]),
    }


_ASYNC_REQUEST_CLASS: list[Any] = []


def _async_views_request_class() -> Any:
    if not _ASYNC_REQUEST_CLASS:
        from django.core.handlers.asgi import ASGIRequest
        from django.urls import path

        # An object with ``urlpatterns`` is a URLconf; a class is hashable (get_resolver caches).
        urls = type(
            "AsyncViewsURLConf",
            (),
            {
                "urlpatterns": [
                    path("plain", _django_plain_async),
                    path("search", _django_search_async),
                ]
            },
        )
        _ASYNC_REQUEST_CLASS.append(type("AsyncViewsRequest", (ASGIRequest,), {"urlconf": urls}))
    return _ASYNC_REQUEST_CLASS[0]


async def _django_plain_async(request: Any) -> Any:
    return _django_response(b"plain")


async def _django_search_async(request: Any) -> Any:
    return _django_search(request)


def _django_response(body: bytes, headers: dict[str, str] | None = None) -> Any:
    from django.http import HttpResponse

    response = HttpResponse(body, content_type="text/plain")
    response["Content-Length"] = str(len(body))  # else gunicorn answers chunked
    for key, value in (headers or {}).items():
        response[key] = value
    return response


def _django_plain(request: Any) -> Any:
    return _django_response(b"plain")


def _django_search(request: Any) -> Any:
    return _django_response(b"search", _outcome_headers(getattr(request, "llm", None)))


def _django_sleep(request: Any) -> Any:
    _sleep_ms(request.META.get("QUERY_STRING", ""))
    return _django_response(b"slept")


def __getattr__(name: str) -> Any:
    # ROOT_URLCONF = "_apps": Django asks this module for urlpatterns.
    if name == "urlpatterns":
        from django.urls import path

        return [
            path("plain", _django_plain),
            path("search", _django_search),
            path("sleep", _django_sleep),
        ]
    raise AttributeError(name)


class InstrumentedWSGI:
    """Outermost WSGI wrapper for the budget server, as :class:`Instrumented` for ASGI:
    ``x-app-ms`` (time from entering the app to ``start_response``) and ``/_bench/gc``."""

    def __init__(self, app: Any, gc_pauses: GCPauses | None = None) -> None:
        self.app = app
        self.gc_pauses = gc_pauses

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.gc_pauses is not None and environ.get("PATH_INFO") == "/_bench/gc":
            body = self.gc_pauses.json(collect=environ.get("QUERY_STRING") == "collect=1")
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        start = time.perf_counter()

        def timed_start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
            elapsed = f"{(time.perf_counter() - start) * 1e3:.3f}"
            return start_response(status, [*headers, ("x-app-ms", elapsed)], exc_info)

        return self.app(environ, timed_start_response)


def _instrumented_wsgi(app: Any) -> Any:
    pauses = None
    if os.environ.get("BENCH_GC_STATS") == "1":
        pauses = GCPauses()
        pauses.install()
    return InstrumentedWSGI(app, pauses)


def wsgi_bare() -> Any:
    quiet_structlog()
    return wsgi_app()


def wsgi_wrapped() -> Any:
    quiet_structlog()
    return wrap_wsgi(wsgi_app(), _config_from_env())


def flask_bare() -> Any:
    quiet_structlog()
    return flask_app()


def flask_wrapped() -> Any:
    quiet_structlog()
    return wrap_flask(flask_app(), _config_from_env())


def django_bare() -> Any:
    quiet_structlog()
    setup_django(_config_from_env(), [])
    return django_handler([])


def django_wrapped() -> Any:
    quiet_structlog()
    setup_django(_config_from_env(), [DJANGO_MIDDLEWARE])
    return django_handler([DJANGO_MIDDLEWARE])


def wsgi_wrapped_instrumented() -> Any:
    return _instrumented_wsgi(wsgi_wrapped())


def flask_wrapped_instrumented() -> Any:
    return _instrumented_wsgi(flask_wrapped())


def django_wrapped_instrumented() -> Any:
    return _instrumented_wsgi(django_wrapped())


FACTORIES = {
    "asgi_bare": asgi_bare,
    "asgi_wrapped": asgi_wrapped,
    "asgi_wrapped_instrumented": asgi_wrapped_instrumented,
}


def serve_uvicorn(factory: str, fd: int) -> None:
    import uvicorn

    sock = socket.socket(fileno=fd)  # family detected from the inherited TCP socket
    config = uvicorn.Config(
        FACTORIES[factory](),
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("server", choices=["uvicorn"])
    parser.add_argument("factory", choices=sorted(FACTORIES))
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    serve_uvicorn(args.factory, args.fd)


if __name__ == "__main__":
    main()
