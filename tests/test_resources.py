"""Bounded resources: no thread, task or connection left behind under load and faults; WSGI
iterables are closed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from apps import build_starlette, build_wsgi, make_config
from fault_server import FaultServer, hang_after_headers, hang_before_headers, reply
from llm_middleware.bridge import BACKGROUND
from llm_middleware.wsgi import LLMWSGIMiddleware
from servers import Serve, serve_asgi_thread, serve_wsgi_thread

GOOD = {"category": "shoes", "color": "red", "max_price": 100}


def _background_tasks() -> int:
    loop = BACKGROUND.loop()
    return asyncio.run_coroutine_threadsafe(_count_tasks(), loop).result(2)


async def _count_tasks() -> int:
    return len(asyncio.all_tasks()) - 1  # not this one


def _settle(predicate: Any, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_no_leaks_after_a_burst_against_a_hanging_provider(fault_server: FaultServer) -> None:
    fault_server.default = hang_after_headers()
    app = build_wsgi(
        make_config(fault_server.url, budget_ms=100, max_in_flight=8, breaker_failures=10_000)
    )
    with serve_wsgi_thread(app) as base:
        httpx.post(base + "/json-echo", json={"q": "warm-up"})  # starts the one loop thread
        threads_before = threading.active_count()
        with httpx.Client(base_url=base, timeout=10) as client:

            def one(i: int) -> str:
                response = client.post("/json-echo", json={"q": f"q{i}"})
                return str(response.json()["outcomes"]["intent"])

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                outcomes = list(pool.map(one, range(64)))
        assert set(outcomes) <= {"timeout", "shed"} and "timeout" in outcomes
        assert _settle(lambda: app.engine.llm.in_flight == 0)
        assert _settle(lambda: _background_tasks() == 0)
        # Client connections (and the server's thread for each) are closed; nothing of ours
        # is left but the one loop thread that existed before the burst.
        assert _settle(lambda: threading.active_count() <= threads_before)
    app.engine.close()
    # Connections to the provider were closed when their calls were abandoned.
    assert fault_server.connections <= 64


def test_shed_when_over_the_in_flight_cap(serve: Serve, fault_server: FaultServer) -> None:
    # On every adapter: two calls hang in flight, the other four pass through at once.
    fault_server.default = hang_after_headers()
    with (
        serve(max_in_flight=2) as base,
        httpx.Client(base_url=base, timeout=10) as client,
        concurrent.futures.ThreadPoolExecutor(6) as pool,
    ):
        results = list(
            pool.map(lambda i: client.get("/search", params={"q": f"q{i}"}).json(), range(6))
        )
    outcomes = sorted(r["outcomes"]["intent"] for r in results)
    assert outcomes.count("timeout") == 2
    assert outcomes.count("shed") == 4
    assert all(r["added_ms"] < 50 for r in results if r["outcomes"]["intent"] == "shed")


class ClosingIterable:
    def __init__(self) -> None:
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield b"hello"

    def close(self) -> None:
        self.closed = True


def test_wsgi_iterable_reaches_the_server_and_is_closed(fault_server: FaultServer) -> None:
    iterables: list[ClosingIterable] = []

    def inner(environ: dict[str, Any], start_response: Any) -> ClosingIterable:
        start_response("200 OK", [("Content-Type", "text/plain")])
        iterables.append(ClosingIterable())
        return iterables[-1]

    app = LLMWSGIMiddleware(inner, make_config(fault_server.url, budget_ms=100))
    with serve_wsgi_thread(app) as base:
        assert httpx.get(base + "/search", params={"q": "x"}).text == "hello"
        assert httpx.get(base + "/plain").text == "hello"
    app.engine.close()
    assert [it.closed for it in iterables] == [True, True]


def test_wsgi_bug_in_our_code_restores_the_body(
    fault_server: FaultServer, monkeypatch: Any
) -> None:
    seen: list[bytes] = []

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
        start_response("200 OK", [])
        return [b""]

    app = LLMWSGIMiddleware(inner, make_config(fault_server.url))

    def broken(*args: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr("llm_middleware.wsgi.process_request_sync", broken)
    body = b'{"q": "red shoes"}'
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/json-echo", "QUERY_STRING": "",
               "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}  # fmt: skip
    app(environ, lambda *a: None)
    assert seen == [body]


# -- the pool leak of httpcore #1093 -----------------------------------------------------------


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_deadlines_under_pool_contention_leave_the_llm_path_alive(
    fault_server: FaultServer, adapter: str
) -> None:
    # Many deadlines expire while calls hang before or after the headers and others wait on
    # the in-flight cap and the pool. Cancelling a request inside httpcore leaks its pool slot
    # for good (httpcore #1093, #830): after enough of them no call gets a connection. Calls
    # must instead end by httpx's own timeouts, so that afterwards the LLM path answers.
    fault_server.script(*[hang_before_headers(), hang_after_headers(), reply(GOOD)] * 100)
    fault_server.default = reply(GOOD)
    config = make_config(fault_server.url, budget_ms=1000, max_in_flight=6, breaker_failures=10_000)
    assert config["rules"][0]["path"] == "/search"
    config["rules"][0]["budget_ms"] = 60  # the load; the probes get a second (/header-echo)
    app = build_starlette(config) if adapter == "asgi" else build_wsgi(config)
    server = serve_asgi_thread if adapter == "asgi" else serve_wsgi_thread
    with server(app) as base, httpx.Client(base_url=base, timeout=10) as client:

        def one(text: str) -> str:
            return str(client.get("/search", params={"q": text}).json()["outcomes"]["intent"])

        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            load = list(pool.map(one, (f"load {i}" for i in range(300))))
        assert "timeout" in load
        # The provider now answers at once; the abandoned calls end by their own bounds.
        fault_server.reset()
        fault_server.default = reply(GOOD)
        time.sleep(0.3)
        probes = [
            client.get("/header-echo", headers={"x-query": f"probe {i}"}).json()["outcomes"]
            for i in range(8)
        ]
    if adapter == "wsgi":
        app.engine.close()
    assert probes == [{"intent": "ok"}] * 8, (probes, Counter(load))
