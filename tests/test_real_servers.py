"""Budget, passthrough and fork safety on production servers in subprocesses: gunicorn sync
workers (plain and ``--preload``) for WSGI, Flask and Django, uvicorn for Django ASGI."""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import time

import httpx
import pytest

from apps import make_config
from fault_server import FaultServer, hang_after_headers, reply
from servers import SchedulerDelay, gunicorn_subprocess, own_slack_ms, uvicorn_subprocess

pytestmark = pytest.mark.slow

BUDGET_MS = 200
GOOD = {"category": "shoes", "color": "red", "max_price": 100}


def _env(fault_server: FaultServer, **extra: str) -> dict[str, str]:
    # The breaker would open after a few hangs (as it should): keep every request waiting.
    config = make_config(fault_server.url, budget_ms=BUDGET_MS, breaker_failures=10_000)
    return {"LLM_TEST_CONFIG": json.dumps(config), **extra}


def _post(client: httpx.Client, path: str, i: int) -> tuple[float, dict[str, object]]:
    body = json.dumps({"q": f"red shoes {i}", "n": i}).encode()
    started = time.monotonic()
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    elapsed = (time.monotonic() - started) * 1000
    assert response.status_code == 200
    data: dict[str, object] = response.json()
    assert data["body_len"] == len(body)
    return elapsed, data


def _slept(client: httpx.Client) -> float:
    started = time.monotonic()
    assert client.get("/sleep", params={"ms": BUDGET_MS}).text == "slept"
    return (time.monotonic() - started) * 1000


def _check_budget(base: str, adapter: str, concurrency: int) -> None:
    with (
        httpx.Client(base_url=base, timeout=10) as client,
        SchedulerDelay() as delay,  # stalls of this machine while the test runs
    ):
        bare = statistics.median(_post(client, "/echo", i)[0] for i in range(6))
        # Each middleware request is paired with the reference: a view of the same server that
        # sleeps the budget, measured the same way and just before it.
        sequential = [(_slept(client), *_post(client, "/json-echo", i)) for i in range(4)]
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            # The reference: the same concurrent load on a view that sleeps the budget.
            reference = list(pool.map(lambda _: _slept(client), range(12)))
            concurrent_ = list(pool.map(lambda i: _post(client, "/json-echo", 10 + i), range(12)))
    # How late the server itself woke from sleeping the budget: its load, not ours.
    late = max(0.0, max(ref for ref, _, _ in sequential) - bare - BUDGET_MS)
    herd_slack = max(0.0, max(reference) - bare - BUDGET_MS)
    slack_ms = own_slack_ms(adapter, delay) + late
    for slept, wall_ms, data in sequential:
        assert data["outcomes"] == {"intent": "timeout"}
        assert data["added_ms"] <= BUDGET_MS + slack_ms  # type: ignore[operator]
        assert wall_ms <= slept + slack_ms
    for wall_ms, data in concurrent_:
        # Deadlines firing together resume one after another (see test_uvicorn_subprocess);
        # a worker busy with a request queues the next one: that is the server's, not ours.
        assert data["outcomes"] == {"intent": "timeout"}
        assert data["added_ms"] <= BUDGET_MS + slack_ms + herd_slack  # type: ignore[operator]
        assert wall_ms <= max(reference) + slack_ms + herd_slack


@pytest.mark.parametrize("adapter", ["wsgi", "flask", "django"])
@pytest.mark.parametrize("preload", [False, True], ids=["plain", "preload"])
def test_gunicorn_budget_with_hanging_provider(
    fault_server: FaultServer, adapter: str, preload: bool
) -> None:
    fault_server.default = hang_after_headers()
    env = _env(fault_server, LLM_TEST_ADAPTER=adapter)
    with gunicorn_subprocess("apps:subprocess_wsgi()", env, preload=preload) as base:
        _check_budget(base, "django-sync" if adapter == "django" else adapter, concurrency=2)


def test_uvicorn_django_asgi_budget(fault_server: FaultServer) -> None:
    fault_server.default = hang_after_headers()
    with uvicorn_subprocess("apps:subprocess_django_asgi", _env(fault_server)) as base:
        _check_budget(base, "django-async", concurrency=6)


@pytest.mark.parametrize("adapter", ["wsgi", "django"])
def test_preload_fork_after_the_loop_started_in_the_master(
    fault_server: FaultServer, adapter: str
) -> None:
    # The master ran a matched request (background loop thread + HTTP client) before forking;
    # the workers must build their own instead of waiting on a loop thread that did not fork.
    fault_server.default = reply(GOOD)
    env = _env(fault_server, LLM_TEST_ADAPTER=adapter, LLM_TEST_WARM="1")
    with (
        gunicorn_subprocess("apps:subprocess_wsgi()", env, preload=True) as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        outcomes = [
            client.get("/search", params={"q": f"red shoes {i}"}).json()["outcomes"]
            for i in range(6)
        ]
    assert outcomes == [{"intent": "ok"}] * 6
