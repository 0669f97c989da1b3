"""The apps the benchmarks measure, bare and wrapped, plus the server entry point.

``/plain`` is never matched by a rule; ``/search`` is matched by the single rule (intent
extraction from ``query:q``); ``/sleep?ms=N`` (unmatched) answers after N ms, the reference for
an ideal middleware that would cost exactly its budget. The views answer a tiny text body;
``/search`` also reports what the middleware did in ``x-llm-outcome`` and ``x-llm-added-ms``
headers (``-`` when bare).

Server entry point (used by ``_common.uvicorn_server``)::

    python bench/_apps.py uvicorn asgi_wrapped --fd N

with the configuration in the environment: ``BENCH_PROVIDER_URL``, ``BENCH_BUDGET_MS`` and
``BENCH_EXTRA_CONFIG`` (JSON merged into the middleware config). A WSGI variant adds its
factories here and a ``gunicorn`` launcher in ``_common``.
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
        self.pauses: list[tuple[int, float]] = []  # (generation, ms)
        self._start = 0.0

    def install(self) -> None:
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((info["generation"], (time.perf_counter() - self._start) * 1e3))

    def json(self) -> bytes:
        data = {
            "pauses": self.pauses,
            "gc_counts": gc.get_count(),
            "tracked": len(gc.get_objects()),
        }
        self.pauses = []
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
            body = self.gc_pauses.json()
            if scope["query_string"] == b"collect=1":  # start the next cell from a clean heap
                gc.collect()
                self.gc_pauses.pauses = []
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
