"""Django specifics: lazy settings, system check ids, sync/async modes, body handling."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from apps import make_config, setup_django
from fault_server import FaultServer, reply

setup_django()

from asgiref.sync import iscoroutinefunction  # noqa: E402
from django.core.checks import Error, Warning  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import AsyncRequestFactory, RequestFactory, override_settings  # noqa: E402

from llm_middleware.checks import check_settings  # noqa: E402
from llm_middleware.django import LLMMiddleware, engine_from_settings  # noqa: E402

GOOD = {"category": "shoes", "color": "red", "max_price": 100}


@pytest.fixture
def config(fault_server: FaultServer) -> Any:
    fault_server.default = reply(GOOD)
    return make_config(fault_server.url)


@contextlib.contextmanager
def settings(config: Any) -> Iterator[None]:
    with override_settings(LLM_MIDDLEWARE=config):
        try:
            yield
        finally:
            engine_from_settings.get().close()


def sync_view(seen: list[HttpRequest]) -> Any:
    def view(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse("ok")

    return view


def test_sync_mode_sets_request_llm(config: Any) -> None:
    seen: list[HttpRequest] = []
    middleware = LLMMiddleware(sync_view(seen))
    assert not iscoroutinefunction(middleware)
    with settings(config):
        middleware(RequestFactory().get("/search", {"q": "red shoes"}))
    assert seen[0].llm.intent.model_dump() == {"category": "shoes", "color": "red",  # type: ignore[attr-defined]
                                               "max_price": 100.0}  # fmt: skip


def test_sync_mode_waits_for_the_call_in_the_request_thread(
    config: Any, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cache miss: the provider call runs on the background loop, the engine stays in the
    # request thread (no trip of the request to the loop); a hit after it the same.
    from llm_middleware import bridge

    hops: list[Any] = []
    real = bridge.BACKGROUND.run
    monkeypatch.setattr(bridge.BACKGROUND, "run", lambda *a: hops.append(a) or real(*a))
    seen: list[HttpRequest] = []
    middleware = LLMMiddleware(sync_view(seen))
    with settings(config):
        for _ in range(2):
            middleware(RequestFactory().get("/search", {"q": "blue shoes"}))
    assert [r.llm.outcomes for r in seen] == [{"intent": "ok"}, {"intent": "cached"}]  # type: ignore[attr-defined]
    assert hops == []
    assert len(fault_server.requests) == 1


def test_async_mode_awaits_the_core_on_the_callers_loop(config: Any) -> None:
    threads: list[threading.Thread] = []

    async def view(request: HttpRequest) -> HttpResponse:
        threads.append(threading.current_thread())
        return HttpResponse(json.dumps(request.llm.outcomes))  # type: ignore[attr-defined]

    middleware = LLMMiddleware(view)
    assert iscoroutinefunction(middleware)

    async def run() -> HttpResponse:
        with override_settings(LLM_MIDDLEWARE=config):
            response: HttpResponse = await middleware(
                AsyncRequestFactory().get("/search", {"q": "red shoes"})
            )
            await engine_from_settings.get().aclose()
        return response

    response = asyncio.run(run())
    assert json.loads(response.content) == {"intent": "ok"}
    assert threads == [threading.main_thread()]  # no hop to a worker thread


def test_override_settings_takes_effect_without_restart(config: Any) -> None:
    seen: list[HttpRequest] = []
    middleware = LLMMiddleware(sync_view(seen))
    with override_settings(LLM_MIDDLEWARE={"rules": []}):
        middleware(RequestFactory().get("/search", {"q": "x"}))
    with settings(config):
        middleware(RequestFactory().get("/search", {"q": "x"}))
    assert seen[0].llm is None  # unmatched: None, as in Flask's g.llm
    assert seen[1].llm.outcomes == {"intent": "ok"}  # type: ignore[attr-defined]


def test_listed_twice_runs_once(config: Any, fault_server: FaultServer) -> None:
    seen: list[HttpRequest] = []
    with settings(config):
        LLMMiddleware(LLMMiddleware(sync_view(seen)))(
            RequestFactory().get("/search", {"q": "twice"})
        )
    assert len(fault_server.requests) == 1


def test_body_already_read_by_earlier_middleware_is_a_clear_skip(config: Any) -> None:
    seen: list[HttpRequest] = []
    request = RequestFactory().post("/body-echo", "red shoes", content_type="text/plain")
    assert request.read() == b"red shoes"  # an earlier middleware consumed the stream
    with settings(config):
        LLMMiddleware(sync_view(seen))(request)
    assert seen[0].llm.reasons == {"intent": "body_already_read"}  # type: ignore[attr-defined]


def test_urlencoded_post_already_parsed_is_still_read(config: Any) -> None:
    seen: list[HttpRequest] = []
    request = RequestFactory().post(
        "/form-echo", "q=red+shoes", content_type="application/x-www-form-urlencoded"
    )
    assert request.POST["q"] == "red shoes"  # CsrfViewMiddleware before us does this
    with settings(config):
        LLMMiddleware(sync_view(seen))(request)
    assert seen[0].llm.outcomes == {"intent": "ok"}  # type: ignore[attr-defined]
    assert seen[0].POST["q"] == "red shoes"


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        ([1, 2], ["llm_middleware.E001"]),
        ({"providers": [{"kind": "openai"}]}, ["llm_middleware.E002"] * 2),
        ({"rules": [{"path": "/a", "budget_ms": 0}]}, ["llm_middleware.E003"]),
        ({"rules": [{"path": "/a", "interceptors": [{"type": "intent", "schema": "no.Such"}]}],
          "providers": [{"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}]},
         ["llm_middleware.E003"]),
        ({"max_in_flight": 0}, ["llm_middleware.E004"]),
        ({"rules": []}, []),
    ],
)  # fmt: skip
def test_system_checks_have_stable_ids(value: Any, ids: list[str]) -> None:
    with override_settings(LLM_MIDDLEWARE=value):
        messages = check_settings()
    assert [m.id for m in messages] == ids
    assert all(isinstance(m, Error) for m in messages)
    if ids and ids[0] != "llm_middleware.E001":
        assert all("LLM_MIDDLEWARE " in m.msg for m in messages)


def test_middleware_after_csrf_is_a_warning() -> None:
    order = ["django.middleware.csrf.CsrfViewMiddleware", "llm_middleware.django.LLMMiddleware"]
    with override_settings(MIDDLEWARE=order, LLM_MIDDLEWARE={"rules": []}):
        messages = check_settings()
    assert [m.id for m in messages] == ["llm_middleware.W001"]
    assert isinstance(messages[0], Warning)


def test_checks_are_registered_by_the_app_config() -> None:
    from django.core import checks

    assert check_settings in checks.registry.registry.registered_checks


# -- the unmatched fast path (sync and async modes) ----------------------------------------------


def _run(middleware: Any, request: HttpRequest) -> Any:
    if iscoroutinefunction(middleware):
        return asyncio.run(middleware(request))
    return middleware(request)


def _view(mode: str, seen: list[HttpRequest]) -> Any:
    if mode == "sync":
        return sync_view(seen)

    async def view(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse("ok")

    return view


def _factory(mode: str) -> Any:
    return RequestFactory() if mode == "sync" else AsyncRequestFactory()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_unmatched_sets_request_llm_and_keeps_an_earlier_value(config: Any, mode: str) -> None:
    seen: list[HttpRequest] = []
    earlier = object()
    with settings(config):
        middleware = LLMMiddleware(_view(mode, seen))
        # Twice each: the first request of a class takes the general route, later ones the
        # fast path.
        for _ in range(2):
            _run(middleware, _factory(mode).get("/elsewhere"))
            owned = _factory(mode).get("/elsewhere")
            owned.llm = earlier  # type: ignore[attr-defined]
            _run(middleware, owned)
            _run(middleware, _factory(mode).get("/search", {"q": "red shoes"}))
    assert [getattr(r, "llm", "unset") for r in seen[0::3]] == [None, None]
    assert [r.llm for r in seen[1::3]] == [earlier, earlier]  # type: ignore[attr-defined]
    assert [r.llm.outcomes for r in seen[2::3]] == [  # type: ignore[attr-defined]
        {"intent": "ok"},
        {"intent": "cached"},
    ]


def _request(mode: str, path: str) -> HttpRequest:
    """A GET request as a server hands it over (AsyncRequestFactory leaves a non-ASCII path
    as latin-1 characters, where an ASGI server sends the decoded path)."""
    if mode == "sync":
        return RequestFactory().get(path)
    from urllib.parse import unquote

    from django.core.handlers.asgi import ASGIRequest

    scope = {"type": "http", "method": "GET", "path": unquote(path), "root_path": "",
             "query_string": b"", "headers": [(b"host", b"testserver")]}  # fmt: skip
    return ASGIRequest(scope, io.BytesIO(b""))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_unmatched_routes_like_the_matcher(config: Any, mode: str) -> None:
    seen: list[HttpRequest] = []
    config = {**config, "rules": [
        *config["rules"],
        {"path": "/caf\u00e9", "interceptors": config["rules"][0]["interceptors"]},
        {"path": "/items/{id:int}", "interceptors": config["rules"][0]["interceptors"]},
    ]}  # fmt: skip
    paths = {
        "/caf%C3%A9": True,  # path_info is decoded
        "/items/3": True,
        "/items/x": False,
        "/cafe": False,
        "/elsewhere": False,
    }
    with settings(config):
        middleware = LLMMiddleware(_view(mode, seen))
        for _ in range(2):
            for path in paths:
                _run(middleware, _request(mode, path))
    assert [r.llm is not None for r in seen] == list(paths.values()) * 2  # type: ignore[attr-defined]


def test_async_mode_is_the_coroutine_function_itself(config: Any) -> None:
    import inspect

    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    with settings(config):
        async_middleware = LLMMiddleware(view)
        sync_middleware = LLMMiddleware(sync_view([]))
    assert isinstance(async_middleware, LLMMiddleware) and iscoroutinefunction(async_middleware)
    assert inspect.iscoroutinefunction(type(async_middleware).__call__)
    assert type(sync_middleware) is LLMMiddleware and not iscoroutinefunction(sync_middleware)


def test_a_subclass_keeps_its_class_in_async_mode(config: Any) -> None:
    seen: list[HttpRequest] = []

    class Mine(LLMMiddleware):
        pass

    with settings(config):
        middleware = Mine(_view("async", seen))
        assert type(middleware) is Mine and iscoroutinefunction(middleware)
        for path in ("/elsewhere", "/elsewhere", "/search"):
            _run(middleware, AsyncRequestFactory().get(path, {"q": "red shoes"}))
    assert [r.llm is None for r in seen] == [True, True, False]  # type: ignore[attr-defined]


def test_a_subclass_may_take_other_arguments_and_be_copied(config: Any) -> None:
    import copy

    class Configured(LLMMiddleware):
        def __init__(self, get_response: Any = None, *, label: str = "") -> None:
            self.label = label
            super().__init__(get_response or sync_view([]))

    with settings(config):
        sync = Configured(sync_view([]), label="sync")
        defaulted = Configured()
        by_keyword = LLMMiddleware(get_response=sync_view([]))
    assert (type(sync), sync.label) == (Configured, "sync") and type(defaulted) is Configured
    assert type(by_keyword) is LLMMiddleware
    assert copy.copy(sync).label == "sync"


def test_async_mode_listed_twice_runs_once(config: Any, fault_server: FaultServer) -> None:
    seen: list[HttpRequest] = []
    with settings(config):
        middleware = LLMMiddleware(LLMMiddleware(_view("async", seen)))
        _run(middleware, AsyncRequestFactory().get("/search", {"q": "twice"}))
    assert len(fault_server.requests) == 1 and seen[0].llm.outcomes == {"intent": "ok"}  # type: ignore[attr-defined]


def test_request_classes_with_attribute_hooks_keep_the_general_route(config: Any) -> None:
    """A request class whose ``llm`` is a property, or that has ``__getattr__``: the middleware
    neither calls them nor lets them turn into an error; ``request.llm`` is set in the
    instance's dict as on any request."""
    from django.core.handlers.wsgi import WSGIRequest

    from llm_middleware.django import _instance_dict_only

    calls: list[str] = []

    class WithProperty(WSGIRequest):
        @property
        def llm(self) -> Any:
            calls.append("property")
            raise RuntimeError("not to be read by the middleware")

    class WithGetattr(WSGIRequest):
        def __getattr__(self, name: str) -> Any:
            calls.append(name)
            raise AttributeError(name)

    assert _instance_dict_only(WSGIRequest, "llm")
    assert not _instance_dict_only(WithProperty, "llm")
    assert not _instance_dict_only(WithGetattr, "llm")
    seen: list[HttpRequest] = []
    with settings(config):
        middleware = LLMMiddleware(sync_view(seen))
        for cls in (WithProperty, WithGetattr) * 2:
            middleware(cls(RequestFactory().get("/elsewhere").environ))
    assert calls == []
    assert [r.__dict__["llm"] for r in seen] == [None] * 4


def test_settings_override_rebuilds_the_fast_path(config: Any) -> None:
    seen: list[HttpRequest] = []
    middleware = LLMMiddleware(sync_view(seen))
    with settings({**config, "result_attr": "ai"}):
        middleware(RequestFactory().get("/elsewhere"))
        middleware(RequestFactory().get("/elsewhere"))
    with settings(config):
        middleware(RequestFactory().get("/elsewhere"))
    assert [sorted({"ai", "llm"} & r.__dict__.keys()) for r in seen] == [["ai"], ["ai"], ["llm"]]
