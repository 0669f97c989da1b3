"""The example apps under ``examples/``, served for real on loopback against the fault server.

FastAPI and Flask run in this process (uvicorn / werkzeug threads). Django runs in subprocesses
(gunicorn on its WSGI app, uvicorn on its ASGI app, and ``manage.py check``): the suite already
configures Django settings in-process (``apps.setup_django``), and settings can be configured
only once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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
# Where the provider hangs or fails: the most a request may wait.
BUDGET_MS = 300
# Where the provider answers at once: generous, so a loaded machine cannot turn a good answer
# into a timeout (such a request still takes only as long as the answer).
ANSWER_BUDGET_MS = 5000
# Wall-clock slack over the budget for one request through a real server on a shared machine.
SLACK_S = 1.0

RED_SHOES_UNDER_100 = {"category": "shoes", "color": "red", "max_price": 100}
SUMMARY = {"summary": "How running shoes should fit.", "tags": ["running", "shoes"]}
EMAIL = "ann@example.com"
PHONE = "+1 415 555 0132"
TICKET = {
    "subject": "Late order",
    "message": f"Order 1234 has not arrived. Write to {EMAIL} or call {PHONE}.",
    "email": EMAIL,
}
# The same address twice gets one placeholder; counts are per occurrence.
MASKED_TICKET = {
    "subject": "Late order",
    "message": "Order 1234 has not arrived. Write to <EMAIL_ADDRESS_1> or call <PHONE_NUMBER_1>.",
    "email": "<EMAIL_ADDRESS_1>",
}
MASKED_COUNTS = {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1}


@dataclass(frozen=True)
class Shop:
    kind: str  # "fastapi", "flask", "django" (gunicorn) or "django-asgi" (uvicorn)
    url: str
    llm: FaultServer
    app: Any = None  # the app object when it runs in this process (FastAPI, Flask)


def example_env(provider: FaultServer, budget_ms: int) -> dict[str, str]:
    return {
        "LLM_BASE_URL": provider.url,
        "LLM_MODEL": "fake",
        "LLM_DIALECT": "json_object",
        "LLM_BUDGET_MS": str(budget_ms),
    }


@contextlib.contextmanager
def serve_fastapi(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Any]]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(EXAMPLES / "fastapi_app"))
    from shop_fastapi.app import create_app

    app = create_app()
    # The middleware closes its HTTP client on lifespan shutdown.
    with serve_asgi_thread(app) as url:
        yield url, app


@contextlib.contextmanager
def serve_flask(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(EXAMPLES / "flask_app"))
    from shop_flask import create_app

    app = create_app()
    try:
        with serve_wsgi_thread(app) as url:
            yield url, app
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
def budget_ms() -> int:
    """The shops' LLM_BUDGET_MS; ``tight_budget`` tests override it."""
    return ANSWER_BUDGET_MS


tight_budget = pytest.mark.parametrize("budget_ms", [BUDGET_MS], ids=["budget300"])


@pytest.fixture
def shop(
    request: pytest.FixtureRequest,
    fault_server: FaultServer,
    monkeypatch: pytest.MonkeyPatch,
    budget_ms: int,
) -> Iterator[Shop]:
    env = example_env(fault_server, budget_ms)
    kind = str(request.param)
    if kind in ("fastapi", "flask"):
        serve = serve_fastapi if kind == "fastapi" else serve_flask
        with serve(env, monkeypatch) as (url, app):
            yield Shop(kind, url, fault_server, app)
        return
    with serve_django(env, asgi=kind == "django-asgi") as url:
        yield Shop(kind, url, fault_server)


def view_output(shop: Shop, path: str) -> bytes:
    """The body the shop's own view makes for ``GET path``, without the middleware."""
    if shop.kind == "fastapi":
        from fastapi import FastAPI
        from shop_fastapi.app import router

        bare = FastAPI()
        bare.include_router(router)

        async def get() -> bytes:
            transport = httpx.ASGITransport(app=bare)
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
                response = await client.get(path)
            assert response.status_code == 200
            return response.content

        return asyncio.run(get())
    if shop.kind == "flask":
        from werkzeug.test import Client

        inner = shop.app.extensions["llm_middleware"].app  # Flask's own wsgi_app, unwrapped
        bare_response = Client(inner).get(path)
        assert bare_response.status_code == 200
        return bare_response.get_data()
    # Django: its test client in a subprocess (settings can be configured once per process),
    # with the LLM middleware taken out of MIDDLEWARE.
    script = (
        "import sys, django\n"
        "django.setup()\n"
        "from django.conf import settings\n"
        "from django.test import Client, override_settings\n"
        "bare = [m for m in settings.MIDDLEWARE if not m.startswith('llm_middleware.')]\n"
        "with override_settings(MIDDLEWARE=bare):\n"
        "    response = Client().get(sys.argv[1], HTTP_HOST='127.0.0.1')\n"
        "assert response.status_code == 200, response.status_code\n"
        "sys.stdout.buffer.write(response.content)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, path],
        cwd=DJANGO_DIR,
        env={**clean_environ(), "DJANGO_SETTINGS_MODULE": "shop_django.settings"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def search(shop: Shop, **params: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    response = httpx.get(f"{shop.url}/search", params=params, timeout=10)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body, elapsed


def ids(body: dict[str, Any]) -> list[int]:
    return [product["id"] for product in body["results"]]


# -- search: the intent rewritten into the query parameters the legacy view reads -------------


@each_shop_and_django_asgi
def test_search_filters_by_the_intent(shop: Shop) -> None:
    shop.llm.script(reply(RED_SHOES_UNDER_100))

    body, _ = search(shop, q="red shoes under 100")  # no filter parameters at all

    assert body["llm"]["outcomes"] == {"intent": "ok"}
    assert body["llm"]["intent"] == RED_SHOES_UNDER_100  # llm.intent_as(SearchIntent)
    assert body["filters"] == RED_SHOES_UNDER_100  # what the view read from the query
    assert ids(body) == [1, 5]  # the red shoes at most 100
    [sent] = shop.llm.requests
    assert sent.json["model"] == "fake"
    assert "red shoes under 100" in sent.json["messages"][-1]["content"]


@each_shop
def test_query_parameters_win_over_the_intent(shop: Shop) -> None:
    shop.llm.script(reply(RED_SHOES_UNDER_100))

    body, _ = search(shop, q="red shoes under 100", color="black", max_price="150")

    assert body["llm"]["outcomes"] == {"intent": "ok"}
    assert body["llm"]["intent"] == RED_SHOES_UNDER_100
    # category from the intent; color and max_price as the shopper gave them
    assert body["filters"] == {"category": "shoes", "color": "black", "max_price": 150}
    assert ids(body) == [2]


@each_shop_and_django_asgi
@tight_budget
def test_search_within_budget_when_the_provider_hangs(shop: Shop) -> None:
    shop.llm.default = hang_before_headers()  # every attempt, retries included

    body, elapsed = search(shop, q="red shoes under 100", category="hat")

    assert body["llm"]["outcomes"] == {"intent": "timeout"}
    assert body["llm"]["intent"] is None
    assert body["filters"] == {"category": "hat", "color": None, "max_price": None}
    assert ids(body) == [6, 7]  # legacy filtering, as without the middleware
    assert elapsed < BUDGET_MS / 1000 + SLACK_S


@each_shop_and_django_asgi
@tight_budget
def test_search_falls_back_when_the_provider_fails(shop: Shop) -> None:
    shop.llm.default = status(503)

    body, elapsed = search(shop, q="red shoes under 100", color="yellow")

    assert body["llm"]["outcomes"] == {"intent": "error"}
    assert body["llm"]["intent"] is None
    assert body["filters"] == {"category": None, "color": "yellow", "max_price": None}
    assert ids(body) == [7, 8]
    assert elapsed < BUDGET_MS / 1000 + SLACK_S


@each_shop
def test_search_without_q_is_plain_legacy(shop: Shop) -> None:
    body, _ = search(shop, category="jacket")

    assert body["llm"]["outcomes"] == {"intent": "skipped"}
    assert ids(body) == [8]
    assert shop.llm.requests == []


# -- tickets: personal data masked before the view stores or logs it ----------------------------


@each_shop_and_django_asgi
def test_ticket_is_stored_and_logged_masked(shop: Shop, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=f"shop_{shop.kind.partition('-')[0]}")
    with httpx.Client(base_url=shop.url, timeout=10) as client:
        created = client.post("/tickets", json=TICKET)
        assert created.status_code == 201, created.text
        ticket = created.json()
        assert ticket == {**MASKED_TICKET, "id": ticket["id"], "masked": MASKED_COUNTS}

        fetched = client.get(f"/tickets/{ticket['id']}")
        assert fetched.status_code == 200
        assert fetched.json() == {**MASKED_TICKET, "id": ticket["id"]}

        assert client.get("/tickets/999999").status_code == 404
    for raw in (EMAIL, PHONE, "ann@"):
        assert raw not in created.text + fetched.text
    assert shop.llm.requests == []  # masking only: nothing on /tickets goes to a provider
    if shop.app is not None:  # in this process: what the view logged is masked too
        logged = [r.getMessage() for r in caplog.records if r.name.startswith("shop_")]
        expected = f"ticket {ticket['id']} from <EMAIL_ADDRESS_1>: {MASKED_TICKET['message']}"
        assert logged == [expected]
        assert EMAIL not in caplog.text


@each_shop
def test_invalid_ticket_is_rejected(shop: Shop) -> None:
    response = httpx.post(
        f"{shop.url}/tickets", json={**TICKET, "email": "not-an-email"}, timeout=10
    )
    assert response.status_code in (400, 422)  # 422: FastAPI's convention
    assert "email" in response.text
    assert EMAIL not in response.text  # the error page echoes the masked input, if any


# -- articles: a summary added to the JSON response the view made ------------------------------


def get_article(shop: Shop, path: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.get(shop.url + path, timeout=10)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    return response, elapsed


@each_shop_and_django_asgi
def test_article_is_enriched_with_a_summary(shop: Shop) -> None:
    shop.llm.script(reply(SUMMARY))

    response, _ = get_article(shop, "/articles/1")

    article = response.json()
    assert article.pop("summary") == SUMMARY
    assert article == json.loads(view_output(shop, "/articles/1"))
    assert article["id"] == 1 and article["title"] == "Choosing running shoes"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["content-type"].startswith("application/json")
    [sent] = shop.llm.requests
    assert "thumb's width" in sent.json["messages"][-1]["content"]  # the article's body


@each_shop_and_django_asgi
@tight_budget
def test_article_is_untouched_when_the_provider_hangs(shop: Shop) -> None:
    shop.llm.default = hang_before_headers()

    response, elapsed = get_article(shop, "/articles/2")

    assert response.content == view_output(shop, "/articles/2")  # byte for byte
    assert "summary" not in response.json()
    assert response.headers["content-length"] == str(len(response.content))
    assert elapsed < BUDGET_MS / 1000 + SLACK_S


@each_shop
def test_missing_article_is_a_plain_404(shop: Shop) -> None:
    shop.llm.default = reply(SUMMARY)

    response = httpx.get(f"{shop.url}/articles/999", timeout=10)

    assert response.status_code == 404
    assert "summary" not in response.text
    assert shop.llm.requests == []  # error responses are not enriched


# -- a broken configuration stops start-up -------------------------------------------------------


def test_fastapi_config_is_validated_when_the_app_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llm_middleware import ConfigError

    monkeypatch.setenv("LLM_BUDGET_MS", str(BUDGET_MS))  # the module builds an app on import
    monkeypatch.syspath_prepend(str(EXAMPLES / "fastapi_app"))
    from shop_fastapi.app import create_app

    monkeypatch.setenv("LLM_BUDGET_MS", "0")
    with pytest.raises(ConfigError, match=r"rules\[0\]\.budget_ms"):
        create_app()


@pytest.mark.slow
@pytest.mark.parametrize("entry_point", ["shop_django.wsgi", "shop_django.asgi"])
def test_django_refuses_to_start_with_a_broken_rule(entry_point: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {entry_point}"],
        cwd=DJANGO_DIR,
        env={**clean_environ(), "LLM_BUDGET_MS": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "ImproperlyConfigured" in result.stderr
    assert "rules[0].budget_ms" in result.stderr


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


# -- the demo (`llm-middleware demo`): its app, against the fault server ------------------------


@contextlib.contextmanager
def serve_demo(provider: FaultServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("LLM_DEMO_PROVIDER_URL", provider.url)
    monkeypatch.setenv("LLM_DEMO_BUDGET_MS", str(ANSWER_BUDGET_MS))
    from llm_middleware.demo import create_app

    with serve_asgi_thread(create_app()) as url:
        yield url


def test_demo_search_uses_a_grounded_intent(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model invents a colour and a price; grounding keeps only what the text says.
    fault_server.default = reply({"category": "shoes", "color": "red", "max_price": 10.99})
    with serve_demo(fault_server, monkeypatch) as base:
        data = httpx.get(base + "/search", params={"q": "black trainers"}, timeout=10).json()
    assert data["intent"] == {"category": "shoes", "color": None, "max_price": None}
    assert data["outcomes"] == {"intent": "ok"}
    assert data["filters"] == {"category": "shoes", "color": None, "max_price": None}
    assert data["results"] and {r["category"] for r in data["results"]} == {"shoes"}


def test_demo_search_maps_the_shoppers_word_to_the_category(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model answers with the shopper's own word (answer_synonyms); the view and the
    # legacy filters get the category, and the model was offered the words as a closed list.
    fault_server.default = reply({"category": "beanie", "color": "grey", "max_price": None})
    with serve_demo(fault_server, monkeypatch) as base:
        data = httpx.get(base + "/search", params={"q": "a grey beanie"}, timeout=10).json()
        wrong = httpx.get(base + "/search", params={"q": "a grey coat"}, timeout=10).json()
    assert data["intent"] == {"category": "hats", "color": "grey", "max_price": None}
    assert data["filters"]["category"] == "hats"
    assert [r["name"] for r in data["results"]] == ["Wool Beanie"]
    # A word the text does not contain is dropped, never mapped.
    assert wrong["intent"] == {"category": None, "color": "grey", "max_price": None}
    assert wrong["reasons"]["intent"] == "ungrounded:category=not_in_input"
    schema = fault_server.requests[0].json["response_format"]["schema"]
    [words] = [s["enum"] for s in schema["properties"]["category"]["anyOf"] if "enum" in s]
    assert {"shoes", "beanie", "trainer", "coat"} <= set(words)


def test_demo_prompt_examples_are_answers_the_rule_accepts() -> None:
    """Every few-shot answer of the demo's prompt is one the model may give (the answer schema
    with synonyms) and survives grounding on its own input, so the examples teach nothing the
    grammar or grounding would refuse."""
    from llm_middleware.demo import SEARCH_PROMPT_WORDS, SEARCH_SYNONYMS, SearchIntent
    from llm_middleware.grounding import Grounder, answer_schema

    wide = answer_schema(SearchIntent, SEARCH_SYNONYMS)
    grounder = Grounder(SearchIntent, None, SEARCH_SYNONYMS)
    for example in SEARCH_PROMPT_WORDS["examples"]:
        answer = wide.model_validate(example["output"])
        result = grounder.ground(answer, example["input"])
        assert not result.dropped, (example, result.dropped)
        SearchIntent.model_validate(result.obj.model_dump())


def test_demo_catalogue_has_six_categories_with_colours_and_prices() -> None:
    from llm_middleware.demo import CATALOG

    assert len(CATALOG) >= 30
    assert {p["category"] for p in CATALOG} >= {
        "shoes", "hats", "jackets", "bags", "shirts", "dresses"}  # fmt: skip
    assert len({p["color"] for p in CATALOG}) >= 8 and all(p["price"] > 0 for p in CATALOG)


def test_demo_bad_max_price_is_a_clear_400(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_server.default = reply({"category": None, "color": None, "max_price": None})
    with serve_demo(fault_server, monkeypatch) as base:
        bad = httpx.get(base + "/search", params={"q": "hats", "max_price": "abc"}, timeout=10)
        plain = httpx.get(base + "/search", params={"category": "hats"}, timeout=10).json()
    assert bad.status_code == 400 and bad.json() == {"error": "max_price must be a number"}
    assert plain["outcomes"] == {"intent": "skipped"} and plain["reasons"] == {
        "intent": "source_missing"
    }
    assert {r["category"] for r in plain["results"]} == {"hats"}


def test_demo_tickets_are_masked_and_articles_enriched(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_server.default = reply(SUMMARY)
    with serve_demo(fault_server, monkeypatch) as base:
        ticket = httpx.post(base + "/tickets", json=TICKET, timeout=10)
        article = httpx.get(base + "/articles/1", timeout=10).json()
    assert ticket.status_code == 201
    assert ticket.json()["message"] == MASKED_TICKET["message"]
    assert ticket.json()["masked"] == MASKED_COUNTS
    assert article["summary"] == SUMMARY and article["id"] == 1


def test_demo_refuses_a_port_in_use() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "llm_middleware.cli", "demo", "--provider-url",
             "http://127.0.0.1:9/v1", "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"port {port} on 127.0.0.1 is in use" in done.stdout
    assert "ready" not in done.stdout
