"""The example apps under ``examples/``, served for real on loopback against the fault server.

FastAPI and Flask run in this process (uvicorn / werkzeug threads). Django runs in subprocesses
(gunicorn on its WSGI app, uvicorn on its ASGI app, and ``manage.py check``): the suite already
configures Django settings in-process (``apps.setup_django``), and settings can be configured
only once per process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fault_server import FaultServer, hang_before_headers, reply, status
from servers import serve_asgi_thread, serve_subprocess, serve_wsgi_thread

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DJANGO_DIR = EXAMPLES / "django_app"
BUDGET_MS = 300
# Wall-clock slack over the budget for one request through a real server on a shared machine.
SLACK_S = 1.0

RED_SHOES_UNDER_100 = {"category": "shoes", "color": "red", "max_price": 100}
TICKET = {
    "subject": "Late order",
    "message": "Order 1234 has not arrived yet.",
    "email": "ann@example.com",
}


@dataclass(frozen=True)
class Shop:
    url: str
    llm: FaultServer


def example_env(provider: FaultServer) -> dict[str, str]:
    return {
        "LLM_BASE_URL": provider.url,
        "LLM_MODEL": "fake",
        "LLM_DIALECT": "json_object",
        "LLM_BUDGET_MS": str(BUDGET_MS),
    }


@contextlib.contextmanager
def serve_fastapi(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(EXAMPLES / "fastapi_app"))
    from shop_fastapi.app import create_app

    # The middleware closes its HTTP client on lifespan shutdown.
    with serve_asgi_thread(create_app()) as url:
        yield url


@contextlib.contextmanager
def serve_flask(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(EXAMPLES / "flask_app"))
    from shop_flask import create_app

    app = create_app()
    try:
        with serve_wsgi_thread(app) as url:
            yield url
    finally:
        app.extensions["llm_middleware"].engine.close()


def _gunicorn_argv() -> list[str]:
    import gunicorn

    argv = [sys.executable, "-m", "gunicorn", "--chdir", str(DJANGO_DIR), "shop_django.wsgi",
            "--workers", "1", "--graceful-timeout", "2", "--log-level", "warning"]  # fmt: skip
    if gunicorn.version_info >= (27,):
        argv.append("--no-control-socket")  # else every gunicorn shares ~/.gunicorn/gunicorn.ctl
    return argv


def serve_django(env: dict[str, str], *, asgi: bool) -> contextlib.AbstractContextManager[str]:
    """gunicorn on ``shop_django.wsgi`` (sync middleware) or uvicorn on ``shop_django.asgi``
    (async middleware)."""
    env = {**env, "DJANGO_SETTINGS_MODULE": "shop_django.settings", "DJANGO_DEBUG": "0"}
    if asgi:
        argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(DJANGO_DIR),
                "shop_django.asgi:application", "--lifespan", "off", "--log-level", "warning",
                "--no-access-log"]  # fmt: skip
        return serve_subprocess(argv, env, fd_flag="--fd={fd}")
    return serve_subprocess(_gunicorn_argv(), env, fd_flag="--bind=fd://{fd}")


SHOPS = ["fastapi", "flask", pytest.param("django", marks=pytest.mark.slow)]
# Django's ASGI entry point too (the middleware in async mode), where the LLM outcome matters.
SHOPS_AND_DJANGO_ASGI = [*SHOPS, pytest.param("django-asgi", marks=pytest.mark.slow)]
each_shop = pytest.mark.parametrize("shop", SHOPS, indirect=True)
each_shop_and_django_asgi = pytest.mark.parametrize("shop", SHOPS_AND_DJANGO_ASGI, indirect=True)


@pytest.fixture
def shop(
    request: pytest.FixtureRequest, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Shop]:
    env = example_env(fault_server)
    server: contextlib.AbstractContextManager[str]
    if request.param == "fastapi":
        server = serve_fastapi(env, monkeypatch)
    elif request.param == "flask":
        server = serve_flask(env, monkeypatch)
    else:
        server = serve_django(env, asgi=request.param == "django-asgi")
    with server as url:
        yield Shop(url, fault_server)


def search(shop: Shop, **params: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    response = httpx.get(f"{shop.url}/search", params=params, timeout=10)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body, elapsed


def ids(body: dict[str, Any]) -> list[int]:
    return [product["id"] for product in body["results"]]


# -- search ---------------------------------------------------------------------------------------


@each_shop_and_django_asgi
def test_search_filters_by_the_intent(shop: Shop) -> None:
    shop.llm.script(reply(RED_SHOES_UNDER_100))

    body, _ = search(shop, q="red shoes under 100")

    assert body["llm"]["outcomes"] == {"intent": "ok"}
    assert body["llm"]["intent"] == RED_SHOES_UNDER_100
    assert body["filters"] == RED_SHOES_UNDER_100
    assert ids(body) == [1, 5]  # the red shoes at most 100
    [sent] = shop.llm.requests
    assert sent.json["model"] == "fake"
    assert "red shoes under 100" in sent.json["messages"][-1]["content"]


@each_shop
def test_query_parameters_win_over_the_intent(shop: Shop) -> None:
    shop.llm.script(reply(RED_SHOES_UNDER_100))

    body, _ = search(shop, q="red shoes under 100", color="black", max_price="150")

    assert body["llm"]["outcomes"] == {"intent": "ok"}
    assert body["filters"] == {"category": "shoes", "color": "black", "max_price": 150}
    assert ids(body) == [2]


@each_shop_and_django_asgi
def test_search_within_budget_when_the_provider_hangs(shop: Shop) -> None:
    shop.llm.default = hang_before_headers()  # every attempt, retries included

    body, elapsed = search(shop, q="red shoes under 100", category="hat")

    assert body["llm"]["outcomes"] == {"intent": "timeout"}
    assert body["llm"]["intent"] is None
    assert body["filters"] == {"category": "hat", "color": None, "max_price": None}
    assert ids(body) == [6, 7]  # legacy filtering, as without the middleware
    assert elapsed < BUDGET_MS / 1000 + SLACK_S


@each_shop_and_django_asgi
def test_search_falls_back_when_the_provider_fails(shop: Shop) -> None:
    shop.llm.default = status(503)

    body, elapsed = search(shop, q="red shoes under 100", color="yellow")

    assert body["llm"]["outcomes"] == {"intent": "error"}
    assert body["llm"]["intent"] is None
    assert ids(body) == [7, 8]
    assert elapsed < BUDGET_MS / 1000 + SLACK_S


@each_shop
def test_search_without_q_is_plain_legacy(shop: Shop) -> None:
    body, _ = search(shop, category="jacket")

    assert body["llm"]["outcomes"] == {"intent": "skipped"}
    assert ids(body) == [8]
    assert shop.llm.requests == []


# -- tickets --------------------------------------------------------------------------------------


@each_shop
def test_ticket_round_trip(shop: Shop) -> None:
    with httpx.Client(base_url=shop.url, timeout=10) as client:
        created = client.post("/tickets", json=TICKET)
        assert created.status_code == 201, created.text
        ticket = created.json()
        assert ticket == {**TICKET, "id": ticket["id"]}

        fetched = client.get(f"/tickets/{ticket['id']}")
        assert fetched.status_code == 200
        assert fetched.json() == ticket

        assert client.get("/tickets/999999").status_code == 404
    assert shop.llm.requests == []  # no rule on /tickets: nothing goes to a provider


@each_shop
def test_invalid_ticket_is_rejected(shop: Shop) -> None:
    response = httpx.post(
        f"{shop.url}/tickets", json={**TICKET, "email": "not-an-email"}, timeout=10
    )
    assert response.status_code in (400, 422)  # 422: FastAPI's convention
    assert "email" in response.text


# -- Django system checks -------------------------------------------------------------------------


def clean_environ() -> dict[str, str]:
    """This process's environment without the examples' own settings (a developer's shell
    may set them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "DJANGO_"))}


def manage_check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DJANGO_DIR / "manage.py"), "check"],
        env={**clean_environ(), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_django_check_passes() -> None:
    result = manage_check()
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout
    assert "llm_middleware" not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"LLM_BUDGET_MS": "0"}, "rules[0].budget_ms"),
        ({"LLM_SEARCH_SCHEMA": "shop_django.intents.Missing"}, "rules[0].interceptors[0].schema"),
    ],
    ids=["budget_ms=0", "missing_schema"],
)
def test_django_check_reports_a_broken_rule(env: dict[str, str], field: str) -> None:
    result = manage_check(**env)
    assert result.returncode == 1
    assert "(llm_middleware.E003)" in result.stderr
    assert field in result.stderr
