from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from apps import build_django, build_flask, build_starlette, build_wsgi, make_config
from fault_server import FaultServer
from servers import GUARANTEE_BUDGET_MS, OWN_SLACK_MS, Serve, serve_asgi_thread, serve_wsgi_thread


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A started scripted fake LLM server (OpenAI wire) on 127.0.0.1; stopped at teardown."""
    with FaultServer("openai") as server:
        yield server


@pytest.fixture
def anthropic_fault_server() -> Iterator[FaultServer]:
    """A started scripted fake LLM server (Anthropic Messages wire) on 127.0.0.1."""
    with FaultServer("anthropic") as server:
        yield server


@pytest.fixture(params=list(OWN_SLACK_MS))
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def serve(fault_server: FaultServer, adapter: str) -> Iterator[Serve]:
    engines: list[Any] = []

    @contextlib.contextmanager
    def start(provider_url: str | None = None, **overrides: Any) -> Iterator[str]:
        overrides.setdefault("budget_ms", GUARANTEE_BUDGET_MS)
        config = make_config(provider_url or fault_server.url, **overrides)
        if adapter == "asgi":
            with serve_asgi_thread(build_starlette(config)) as base:
                yield base
            return
        if adapter == "django-async":
            app = build_django(config, asgi=True)
            with serve_asgi_thread(app, lifespan="off") as base:
                yield base
                _close_django_engine()  # on uvicorn's loop, before it stops
            return
        if adapter == "django-sync":
            app = build_django(config, asgi=False)
        else:
            app = build_wsgi(config) if adapter == "wsgi" else build_flask(config)
            engines.append(
                app.engine if adapter == "wsgi" else app.extensions["llm_middleware"].engine
            )
        with serve_wsgi_thread(app) as base:
            yield base
        if adapter == "django-sync":
            _close_django_engine()

    yield start
    for engine in engines:
        engine.close()


def _close_django_engine() -> None:
    from llm_middleware.django import engine_from_settings

    engine_from_settings.get().close()
