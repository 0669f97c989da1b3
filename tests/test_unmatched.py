"""Guarantee 1: an unmatched request costs one rule lookup: its body is not read, its scope or
environ is handed on as it came, nothing is allocated for it. And the DNS-stall case of the
budget guarantee."""

from __future__ import annotations

import asyncio
import io
import socket
import time
import tracemalloc
from typing import Any

import pytest

from apps import make_config, setup_django
from fault_server import FaultServer
from llm_middleware import LLMMiddleware
from llm_middleware.wsgi import LLMWSGIMiddleware


class Untouchable(io.RawIOBase):
    """A request body that must not be read."""

    def read(self, *args: Any) -> bytes:
        raise AssertionError("the middleware read an unmatched request's body")

    readline = readinto = read  # type: ignore[assignment]


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_asgi_unmatched_is_handed_on_untouched(fault_server: FaultServer) -> None:
    seen: list[tuple[Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive))

    middleware = LLMMiddleware(app, config=make_config(fault_server.url))
    scope = {"type": "http", "method": "POST", "path": "/elsewhere", "headers": [],
             "query_string": b""}  # fmt: skip

    async def receive() -> Any:
        raise AssertionError("the middleware read an unmatched request's body")

    asyncio.run(middleware(scope, receive, None))  # type: ignore[arg-type]
    assert seen == [(scope, receive)] and scope.keys() == {
        "type",
        "method",
        "path",
        "headers",
        "query_string",
    }


def test_asgi_unmatched_retains_nothing(fault_server: FaultServer) -> None:
    middleware = LLMMiddleware(_asgi_app, config=make_config(fault_server.url))
    bare_scope = {"type": "http", "method": "GET", "path": "/plain", "headers": [],
                  "query_string": b"", "root_path": ""}  # fmt: skip

    async def noop_send(message: Any) -> None:
        pass

    async def loop(app: Any, n: int) -> None:
        for _ in range(n):
            await app(bare_scope, None, noop_send)

    async def measure() -> tuple[int, int]:
        await loop(middleware, 100)  # warm caches
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            await loop(middleware, 2000)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        grown = [
            s for s in after.compare_to(before, "filename")
            if "llm_middleware" in str(s.traceback) and s.size_diff > 0
        ]  # fmt: skip
        return len(grown), sum(s.size_diff for s in grown)

    count, size = asyncio.run(measure())
    assert (count, size) == (0, 0)


def test_wsgi_unmatched_is_handed_on_untouched(fault_server: FaultServer) -> None:
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ)
        return [b""]

    middleware = LLMWSGIMiddleware(app, make_config(fault_server.url))
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/elsewhere", "CONTENT_LENGTH": "5",
               "wsgi.input": Untouchable()}  # fmt: skip
    snapshot = dict(environ)
    middleware(environ, lambda *a: None)
    assert seen == [snapshot] and seen[0] is environ


def test_django_unmatched_body_is_not_read(fault_server: FaultServer) -> None:
    setup_django()
    from django.test import RequestFactory, override_settings

    from llm_middleware.django import LLMMiddleware as DjangoMiddleware

    request = RequestFactory().post("/elsewhere", b"{}", content_type="application/json")
    with override_settings(LLM_MIDDLEWARE=make_config(fault_server.url)):
        DjangoMiddleware(lambda r: r)(request)
    assert request._read_started is False and request.llm is None


@pytest.mark.parametrize("budget_ms", [150])
def test_budget_holds_through_a_dns_stall(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch, budget_ms: int
) -> None:
    real = socket.getaddrinfo

    def stalling(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host  # anyio passes IDNA bytes
        if name == "stalled-dns.test":
            time.sleep(0.6)  # a resolver that answers late (in a worker thread)
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", stalling)
    url = fault_server.url.replace("127.0.0.1", "stalled-dns.test")
    results: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        results.append(scope["state"]["llm"])

    middleware = LLMMiddleware(app, config=make_config(url, budget_ms=budget_ms))
    scope = {"type": "http", "method": "GET", "path": "/search", "headers": [],
             "query_string": b"q=red+shoes", "root_path": ""}  # fmt: skip

    async def run() -> float:
        started = time.monotonic()
        await middleware(scope, None, None)  # type: ignore[arg-type]
        elapsed = (time.monotonic() - started) * 1000
        await middleware.engine.aclose()
        return elapsed

    elapsed_ms = asyncio.run(run())
    assert results[0].outcomes == {"intent": "timeout"}
    assert results[0].added_ms <= budget_ms + 5
    assert elapsed_ms <= budget_ms + 50
    assert fault_server.requests == []


def test_exact_only_matcher_agrees_with_match() -> None:
    from llm_middleware.routing import Router

    entries = [
        ("/a", frozenset({"GET"}), "a-get"),
        ("/a", None, "a-any"),
        ("/b", frozenset({"POST"}), "b-post"),
    ]
    exact_only = Router(entries)
    assert exact_only.matcher() != exact_only.match  # the one-lookup fast path
    with_pattern = Router([*entries, ("/c/{id}", None, "c")])
    assert with_pattern.matcher() == with_pattern.match
    for method in ("GET", "POST", "PUT"):
        for path in ("/a", "/b", "/c/1", "/", "/a/"):
            for router in (exact_only, with_pattern):
                assert router.matcher()(method, path) == router.match(method, path)


def test_prefilter_agrees_with_match() -> None:
    # The adapters' hot path skips ``match`` when the prefilter says no rule can match.
    from llm_middleware.routing import Router

    exact = [("/a", frozenset({"GET"}), "a"), ("/caf\u00e9", None, "cafe")]
    routers = {
        "exact only": Router(exact),
        "patterns": Router([*exact, ("/items/{id:int}", None, "item"), ("/api/**", None, "api")]),
        "uncombinable": Router([*exact, (r"re:^/c/(x)\1$", None, "backref")]),
    }
    paths = ["/a", "/a/", "/b", "/caf\u00e9", "/items/7", "/items/x", "/api/v1/x", "/c/xx", "/"]
    for name, router in routers.items():
        known, search = router.prefilter()
        for path in paths:
            can_skip = path not in known and (search is None or search(path) is None)
            for method in ("GET", "POST"):
                if can_skip:
                    assert router.match(method, path) is None, (name, method, path)
        if name == "exact only":
            assert search is None
    # Positive: the prefilter does skip unmatched paths (it is not "always ask").
    known, search = routers["patterns"].prefilter()
    assert "/b" not in known and search is not None and search("/b") is None
    assert search("/items/7") is not None


def _prefilter_config(provider_url: str) -> dict[str, Any]:
    intent = [{"type": "intent", "schema": "schemas.SearchIntent", "source": "query:q"}]
    return {
        "providers": [{"kind": "openai", "base_url": provider_url, "model": "fake"}],
        "rules": [
            {"path": "/exact", "budget_ms": 200, "interceptors": intent},
            {"path": "/items/{id:int}", "budget_ms": 200, "interceptors": intent},
            {"path": "/caf\u00e9", "budget_ms": 200, "interceptors": intent},
        ],
    }


def test_asgi_prefilter_keeps_matches(fault_server: FaultServer) -> None:
    from llm_middleware.asgi import SCOPE_MARK

    seen: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(SCOPE_MARK in scope)
        await _asgi_app(scope, receive, send)

    middleware = LLMMiddleware(app, config=_prefilter_config(fault_server.url))

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    async def run(path: str, root_path: str = "") -> bool:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": root_path,
                 "headers": [], "query_string": b""}  # fmt: skip
        await middleware(scope, receive, send)
        return seen[-1]

    async def main() -> list[bool]:
        return [
            await run("/exact"),
            await run("/items/3"),
            await run("/api/exact", root_path="/api"),  # matched inside its mount point
            await run("/items/x"),
            await run("/exact/"),
            await run("/elsewhere"),
        ]

    assert asyncio.run(main()) == [True, True, True, False, False, False]
    assert fault_server.requests == []  # (no text to read: the intent did not call out)


def test_wsgi_prefilter_keeps_matches(fault_server: FaultServer) -> None:
    from llm_middleware.wsgi import RESULT_KEY

    seen: list[bool] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(RESULT_KEY in environ)
        start_response("200 OK", [])
        return [b""]

    middleware = LLMWSGIMiddleware(app, _prefilter_config(fault_server.url))

    def run(path_info: str) -> bool:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path_info, "QUERY_STRING": "",
                   "wsgi.input": io.BytesIO(b"")}  # fmt: skip
        middleware(environ, lambda *a: None)
        return seen[-1]

    # PEP 3333: PATH_INFO carries the UTF-8 bytes as latin-1 characters.
    cafe = "/caf\u00e9".encode().decode("latin-1")
    assert [run("/exact"), run("/items/3"), run(cafe), run("/items/x"), run("/elsewhere")] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_django_prefilter_keeps_matches(fault_server: FaultServer) -> None:
    setup_django()
    from django.test import RequestFactory, override_settings

    from llm_middleware.django import LLMMiddleware as DjangoMiddleware

    factory = RequestFactory()
    with override_settings(LLM_MIDDLEWARE=_prefilter_config(fault_server.url)):
        middleware = DjangoMiddleware(lambda r: r)
        matched = [factory.get("/exact"), factory.get("/items/3")]
        unmatched = [factory.get("/items/x"), factory.get("/elsewhere")]
        for request in matched + unmatched:
            middleware(request)
    for request in matched:
        assert request.llm is not None  # the engine ran: a result is attached
    for request in unmatched:
        assert request.llm is None


# -- the adapters' unmatched fast paths route exactly as their general routes ---------------------

_ABSENT = object()


@pytest.mark.parametrize(
    ("path", "root_path", "matched"),
    [
        ("/exact", "", True),
        ("/exact", _ABSENT, True),  # root_path is optional in the ASGI spec
        ("/api/exact", "/api", True),  # mounted: matched inside its mount point
        ("/api/items/3", "/api", True),
        ("/api/caf\u00e9", "/api", True),  # ASGI paths are already decoded
        ("/caf\u00e9", _ABSENT, True),
        ("/api/exact", _ABSENT, False),  # not mounted: the whole path counts
        ("/other/exact", "/api", False),  # outside the mount point: the whole path counts
        ("/api/items/x", "/api", False),
        ("/cafe", "", False),
        ("/elsewhere", _ABSENT, False),
    ],
)
def test_asgi_fast_path_routes_inside_root_path(
    fault_server: FaultServer, path: str, root_path: object, matched: bool
) -> None:
    from llm_middleware.asgi import SCOPE_MARK

    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    middleware = LLMMiddleware(app, config=_prefilter_config(fault_server.url))
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": path, "headers": [],
                             "query_string": b""}  # fmt: skip
    if root_path is not _ABSENT:
        scope["root_path"] = root_path

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    asyncio.run(middleware(scope, receive, None))  # type: ignore[arg-type]
    assert len(seen) == 1 and (SCOPE_MARK in seen[0]) is matched
    assert (seen[0] is scope) is not matched  # unmatched: the very scope, untouched


def test_asgi_call_stays_a_coroutine_function(fault_server: FaultServer) -> None:
    import inspect

    middleware = LLMMiddleware(_asgi_app, config=make_config(fault_server.url))
    assert inspect.iscoroutinefunction(middleware.__call__)  # how servers detect ASGI 3


def test_asgi_non_http_scopes_on_a_rule_path_pass_through(fault_server: FaultServer) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    middleware = LLMMiddleware(app, config=_prefilter_config(fault_server.url))
    websocket = {"type": "websocket", "path": "/exact", "root_path": "", "headers": []}
    custom = {"type": "custom"}  # no path at all

    async def never() -> Any:
        raise AssertionError("read a non-http scope's messages")

    for scope in (websocket, custom):
        asyncio.run(middleware(scope, never, None))  # type: ignore[arg-type]
    assert seen == [websocket, custom] and seen[0] is websocket and seen[1] is custom
    assert websocket.keys() == {"type", "path", "root_path", "headers"}


def test_wsgi_raw_prefilter_holds_the_latin1_forms() -> None:
    from llm_middleware.wsgi import _raw_prefilter

    paths, search = _raw_prefilter(frozenset({"/", "/caf\u00e9", "/x"}), None)
    assert paths == {"/", "", "/caf\u00e9", "/caf\u00c3\u00a9", "/x"} and search is None
    paths, search = _raw_prefilter(frozenset({"/x"}), None)
    assert paths == {"/x"} and search is None
    # U+FFFD is what undecodable bytes become: such a rule keeps the decoding.
    _, search = _raw_prefilter(frozenset({"/caf\ufffd"}), None)
    assert search is not None and search("/caf\ufffd") is None


@pytest.mark.parametrize(
    ("rules", "environ", "matched"),
    [
        (["/caf\u00e9"], {"PATH_INFO": "/caf\u00e9".encode().decode("latin-1")}, True),
        (["/caf\u00e9"], {"PATH_INFO": "/caf\u00e9"}, False),  # not UTF-8: decodes to U+FFFD
        (["/caf\ufffd"], {"PATH_INFO": "/caf\u00e9"}, True),
        (["/caf\u00e9"], {"PATH_INFO": "/cafe"}, False),
        (["/"], {"PATH_INFO": ""}, True),  # empty at the application's root
        (["/"], {}, True),  # or absent
        (["/exact"], {}, False),
        (["/exact"], {"PATH_INFO": "/exact", "SCRIPT_NAME": "/mount"}, True),  # inside the mount
        (["/exact"], {"PATH_INFO": "/mount/exact", "SCRIPT_NAME": ""}, False),
        (["/items/{id}"], {"PATH_INFO": "/items/caf\u00e9".encode().decode("latin-1")}, True),
        (["/items/{id}"], {"PATH_INFO": "/other/caf\u00e9".encode().decode("latin-1")}, False),
        (["/**"], {"PATH_INFO": ""}, True),
        (["re:^/v[0-9]+/x$"], {"PATH_INFO": "/v2/x"}, True),  # a regex without a literal prefix
        (["re:^/v[0-9]+/x$"], {"PATH_INFO": "/v/x"}, False),
        # Not a str (a server against PEP 3333): handed to the app, nothing raised.
        (["re:^/v[0-9]+/x$"], {"PATH_INFO": None}, False),
        (["/exact"], {"PATH_INFO": None}, False),
        (["re:^/v[0-9]+/x$", "/exact"], {"PATH_INFO": ["/exact"]}, False),
        (["re:^/v[0-9]+/x$"], {"PATH_INFO": b"/v1/x"}, False),
        # Not latin-1 (already decoded by the server): routed as it is, nothing raised.
        (["re:^/v[0-9]+/x$"], {"PATH_INFO": "/\u00fc\u20ac"}, False),
        (["re:^/v[0-9]+/x$"], {"PATH_INFO": "/v1/x\udcff"}, False),
        (["re:^/v[0-9]+/\u20ac$"], {"PATH_INFO": "/v1/\u20ac"}, True),
    ],
)
def test_wsgi_fast_path_routes_as_the_decoded_path(
    fault_server: FaultServer, rules: list[str], environ: dict[str, Any], matched: bool
) -> None:
    from llm_middleware.wsgi import RESULT_KEY

    seen: list[bool] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(RESULT_KEY in environ)
        return [b""]

    intent = [{"type": "intent", "schema": "schemas.SearchIntent", "source": "query:q"}]
    config = {
        "providers": [{"kind": "openai", "base_url": fault_server.url, "model": "fake"}],
        "rules": [{"path": path, "budget_ms": 200, "interceptors": intent} for path in rules],
    }
    middleware = LLMWSGIMiddleware(app, config)
    try:
        middleware({"REQUEST_METHOD": "GET", "QUERY_STRING": "", **environ}, lambda *a: None)
    finally:
        middleware.close()
    assert seen == [matched]


def test_wsgi_wrapped_twice_runs_once(fault_server: FaultServer) -> None:
    from fault_server import reply

    fault_server.default = reply({"category": "shoes", "color": "red", "max_price": 10})
    results: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        from llm_middleware.wsgi import RESULT_KEY

        results.append(environ[RESULT_KEY])
        start_response("200 OK", [])
        return [b""]

    inner = LLMWSGIMiddleware(app, make_config(fault_server.url))
    outer = LLMWSGIMiddleware(inner, make_config(fault_server.url))
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/search", "QUERY_STRING": "q=twice",
               "wsgi.input": io.BytesIO(b"")}  # fmt: skip
    try:
        outer(environ, lambda *a: None)
    finally:
        inner.close()
        outer.close()
    assert len(fault_server.requests) == 1 and results[0].outcomes == {"intent": "ok"}
