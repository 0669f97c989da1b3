"""The middleware is invisible to the app where it should be: the result's name never takes
the app's own, ``wsgi.input`` stays the server's stream, short uploads stay short, Django's
integer ``CONTENT_LENGTH`` and odd charsets, and a log line for every matched request."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from apps import setup_django
from servers import serve_asgi_thread

setup_django()

from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import AsyncRequestFactory, RequestFactory, override_settings  # noqa: E402

from llm_middleware import LLMMiddleware, LLMResult  # noqa: E402
from llm_middleware.django import LLMMiddleware as DjangoMiddleware  # noqa: E402
from llm_middleware.django import engine_from_settings  # noqa: E402
from llm_middleware.wsgi import RESULT_KEY, LLMWSGIMiddleware  # noqa: E402

EMAIL = "jane.doe@example.com"


def masking(path: str = "re:.*", **extra: Any) -> dict[str, Any]:
    """A masking-only rule that masks for the app too (so a test can see that it ran): needs
    no provider, so nothing here waits on a network."""
    masker = {"type": "pii_masking", "mask_for": ["providers", "app"]}
    return {"rules": [{"path": path, "interceptors": [masker]}], **extra}


def request_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == "llm_middleware.request"]


# -- the result's name (issue 11 item 2) -----------------------------------------------------


def _starlette_app(config: dict[str, Any], lifespan_state: dict[str, Any]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        yield lifespan_state

    async def view(request: Request) -> JSONResponse:
        state = request.state
        return JSONResponse(
            {
                "llm": repr(getattr(state, "llm", None))[:20],
                "ai": type(getattr(state, "ai", None)).__name__,
            }
        )

    app = Starlette(routes=[Route("/x", view)], lifespan=lifespan)
    app.add_middleware(LLMMiddleware, config=config)
    return app


def test_asgi_lifespan_state_keeps_the_apps_value() -> None:
    app = _starlette_app(masking(), {"llm": "app-client"})
    with capture_logs() as logs, serve_asgi_thread(app) as base:
        first = httpx.get(f"{base}/x", params={"q": "hello"}).json()
        second = httpx.get(f"{base}/x", params={"q": "hello"}).json()
    assert first["llm"] == second["llm"] == "'app-client'"
    clashes = [e for e in logs if e.get("event") == "llm_middleware.result_name_taken"]
    assert len(clashes) <= 1  # once per process and place (an earlier test may have said it)


def test_asgi_result_under_the_configured_name() -> None:
    app = _starlette_app(masking(result_attr="ai"), {"llm": "app-client"})
    with serve_asgi_thread(app) as base:
        body = httpx.get(f"{base}/x", params={"q": "hello"}).json()
    assert body == {"llm": "'app-client'", "ai": "LLMResult"}


def _flask_app(config: dict[str, Any]) -> Any:
    import flask

    from llm_middleware.flask import LLMMiddleware as FlaskMiddleware

    app = flask.Flask("transparency")
    app.config["LLM_MIDDLEWARE"] = config

    @app.route("/<name>", methods=["GET", "POST"])
    def view(name: str) -> Any:
        g = flask.g
        before = "llm" in g
        got = g.get("llm")
        if flask.request.args.get("own") and "llm" not in g:  # the Flask docs' get_db() shape
            g.llm = "app-value"
        return {
            "in_g_before": before,
            "get": type(got).__name__,
            "llm": g.llm if isinstance(g.llm, str) else type(g.llm).__name__,
        }

    FlaskMiddleware(app)
    return app


def test_flask_g_is_the_apps_namespace() -> None:
    app = _flask_app(masking(path="/matched"))
    client = app.test_client()
    unmatched = client.get("/other").get_json()
    assert unmatched == {"in_g_before": False, "get": "NoneType", "llm": "NoneType"}
    matched = client.get("/matched").get_json()
    assert matched == {"in_g_before": False, "get": "LLMResult", "llm": "LLMResult"}
    # The app's own `if "llm" not in g: g.llm = ...` runs, and wins, on every path.
    for path in ("/other", "/matched"):
        body = client.get(path, query_string={"own": "1"}).get_json()
        assert body["llm"] == "app-value", path
        assert body["in_g_before"] is False


@contextlib.contextmanager
def django_settings(config: Any) -> Iterator[None]:
    with override_settings(LLM_MIDDLEWARE=config):
        try:
            yield
        finally:
            engine_from_settings.get().close()


def test_django_request_attribute_set_earlier_is_kept() -> None:
    seen: list[HttpRequest] = []

    def view(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse("ok")

    with django_settings(masking()):
        middleware = DjangoMiddleware(view)
        request = RequestFactory().get("/x", {"q": EMAIL})
        request.llm = "app-value"  # type: ignore[attr-defined]  # an earlier middleware's
        with capture_logs() as logs:
            middleware(request)
        assert seen[0].llm == "app-value"  # type: ignore[attr-defined]
        assert EMAIL not in seen[0].GET["q"]  # the rule still ran
        assert request_events(logs)
    with django_settings(masking(result_attr="ai")):
        middleware = DjangoMiddleware(view)
        middleware(RequestFactory().get("/x", {"q": EMAIL}))
        assert isinstance(seen[-1].ai, LLMResult)  # type: ignore[attr-defined]
        assert not hasattr(seen[-1], "llm")


# -- wsgi.input as the server gave it (issue 11 item 4, issue 10 item 9) ---------------------


class _SocketLike:
    """A non-seekable server stream: ``data`` and then EOF, or ``error`` once it is spent."""

    def __init__(self, data: bytes, error: Exception | None = None) -> None:
        self._data = io.BytesIO(data)
        self._error = error

    def read(self, size: int = -1) -> bytes:
        chunk = self._data.read(size)
        if not chunk and self._error is not None and size != 0:
            raise self._error
        return chunk

    def readline(self, size: int = -1) -> bytes:
        return self._data.readline(size)


def _reader_app(seen: list[Any]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH")
        try:
            got: Any = stream.read(int(length)) if length else stream.read()
            status = "200 OK"
        except ConnectionResetError as exc:
            got = f"error:{type(exc).__name__}"
            status = "400 Bad Request"
        seen.append((stream, got, length))
        start_response(status, [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def _environ(stream: Any, length: str, content_type: str = "application/json") -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/x", "QUERY_STRING": "", "wsgi.input": stream,
        "CONTENT_LENGTH": length, "CONTENT_TYPE": content_type, "SERVER_NAME": "t",
        "SERVER_PORT": "80", "wsgi.url_scheme": "http",
    }  # fmt: skip


def _call(app: Any, environ: dict[str, Any]) -> str:
    statuses: list[str] = []
    b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    return statuses[0]


def test_wsgi_seekable_input_is_the_servers_own_stream_sought_back() -> None:
    seen: list[Any] = []
    app = LLMWSGIMiddleware(_reader_app(seen), masking())
    body = json.dumps({"note": "no personal data"}).encode()
    stream = io.BytesIO(b"prefix" + body)
    stream.seek(6)
    environ = _environ(stream, str(len(body)))
    _call(app, environ)
    assert environ[RESULT_KEY].outcomes == {"pii_masking": "ok"}  # the body was read
    assert seen == [(stream, body, str(len(body)))]


@pytest.mark.parametrize(
    ("data", "length", "error"),
    [
        (b'{"note": "whole"}', "17", None),
        (b'{"amount": 1', "21", None),  # truncated upload: the same short read
        (b'{"amount": 1', "21", ConnectionResetError("reset")),  # the same error
    ],
)
def test_wsgi_unseekable_input_reads_as_without_us(
    data: bytes, length: str, error: Exception | None
) -> None:
    outcomes = []
    for wrapped in (False, True):
        seen: list[Any] = []
        app: Any = _reader_app(seen)
        if wrapped:
            app = LLMWSGIMiddleware(app, masking())
        environ = _environ(_SocketLike(data, error), length)
        status = _call(app, environ)
        outcomes.append((status, seen[0][1], environ["CONTENT_LENGTH"]))
    assert outcomes[0] == outcomes[1]


def test_werkzeug_redirect_resends_the_body() -> None:
    """werkzeug's test client re-sends the request's stream on a 307 (Flask's
    test_routing_redirect_debugging): the app must find it where the server left it."""
    import flask

    from llm_middleware.flask import LLMMiddleware as FlaskMiddleware

    app = flask.Flask("redirects")
    app.config["LLM_MIDDLEWARE"] = masking()

    @app.post("/old")
    def old() -> Any:
        return flask.redirect("/new", code=307)

    @app.post("/new")
    def new() -> Any:
        return {"got": flask.request.get_data(as_text=True)}

    FlaskMiddleware(app)
    response = app.test_client().post("/old", data="a=1", follow_redirects=True)
    assert response.get_json() == {"got": "a=1"}


def test_flask_and_django_see_a_truncated_upload_as_without_us() -> None:
    from django.core.wsgi import get_wsgi_application

    def run(app: Any) -> tuple[str, bytes]:
        out: list[bytes] = []
        environ = _environ(_SocketLike(b"q=red+sh"), "21", "application/x-www-form-urlencoded")
        environ["PATH_INFO"] = "/form-echo"
        statuses: list[str] = []
        chunks = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
        out.extend(chunks)
        getattr(chunks, "close", lambda: None)()
        return statuses[0], b"".join(out)

    with django_settings({"rules": []}):
        bare = run(get_wsgi_application())
    with django_settings(masking()):
        wrapped = run(get_wsgi_application())
    assert json.loads(bare[1])["body"] == json.loads(wrapped[1])["body"] == "q=red+sh"
    assert bare[0] == wrapped[0]


# -- Django: integer CONTENT_LENGTH (issue 11 item 8), charsets (issue 10 item 13) -------------


@pytest.mark.parametrize("as_int", [True, False])
def test_django_integer_content_length_is_masked_like_a_string(as_int: bool) -> None:
    seen: list[bytes] = []

    def view(request: HttpRequest) -> HttpResponse:
        seen.append(request.body)
        return HttpResponse("ok")

    body = json.dumps({"message": f"write to {EMAIL}"}).encode()
    with django_settings(masking()):
        request = RequestFactory().post("/x", body, content_type="application/json")
        request.META["CONTENT_LENGTH"] = len(body) if as_int else str(len(body))
        DjangoMiddleware(view)(request)
    assert EMAIL not in seen[0].decode()
    assert request.llm.outcomes == {"pii_masking": "ok"}  # type: ignore[attr-defined]


@pytest.mark.parametrize("charset", ["utf-16", "rot13", "no-such-charset"])
def test_django_async_query_is_decoded_as_written(charset: str) -> None:
    asyncio.run(_django_async_query(charset))


async def _django_async_query(charset: str) -> None:
    seen: list[tuple[Any, Any]] = []

    async def view(request: HttpRequest) -> HttpResponse:
        seen.append((request.GET.get("q"), request.llm))  # type: ignore[attr-defined]
        return HttpResponse("ok")

    body = "hello".encode("utf-16") if charset == "utf-16" else b"hello"
    with django_settings(masking()):
        middleware = DjangoMiddleware(view)
        request = AsyncRequestFactory().generic(
            "POST", f"/x?q=mail+{EMAIL}", body, content_type=f"text/plain; charset={charset}"
        )
        await middleware(request)
    query, result = seen[0]
    assert isinstance(result, LLMResult)
    if result.outcomes["pii_masking"] == "ok":  # masked: and read back as it was written
        assert result.pii == {"EMAIL_ADDRESS": 1}
        assert query == "mail <EMAIL_ADDRESS_1>"
    else:  # the body's charset is no text encoding: the request goes on as it came
        assert charset != "utf-16"
        assert query == f"mail {EMAIL}"


# -- a log line for every matched request (issue 11 item 9) ----------------------------------


def _raising_app(environ: dict[str, Any], start_response: Any) -> Any:
    raise RuntimeError("the app's own bug")


def _raising_generator(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    raise RuntimeError("the app's own bug")
    yield b"{}"


@pytest.mark.parametrize("app", [_raising_app, _raising_generator])
def test_wsgi_logs_a_matched_request_whatever_the_app_raises(app: Any) -> None:
    config = {
        "rules": [
            {"path": "/x", "interceptors": [{"type": "pii_masking", "targets": ["response"]}]}
        ]
    }
    middleware = LLMWSGIMiddleware(app, config)
    environ = _environ(io.BytesIO(b""), "0")
    environ["REQUEST_METHOD"] = "GET"
    with capture_logs() as logs, pytest.raises(RuntimeError, match="own bug"):
        b"".join(middleware(environ, lambda *a: None))
    events = request_events(logs)
    assert len(events) == 1
    assert events[0]["reasons"] == {"pii_masking": "app_error"}  # response side never ran


@pytest.mark.parametrize(
    "messages",
    [
        [{"type": "http.request", "body": b'{"amount": 1', "more_body": False}],  # short
        [
            {"type": "http.request", "body": b'{"amount": 1', "more_body": True},
            {"type": "http.disconnect"},  # the client went away mid-upload
        ],
    ],
)
def test_asgi_short_body_reaches_the_app_as_without_us(messages: list[dict[str, Any]]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        got = []
        while True:
            message = await receive()
            got.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        body = b"".join(m.get("body", b"") for m in got)
        seen.append((dict(scope["headers"])[b"content-length"], body, got[-1]["type"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def run(wrapped: bool) -> None:
        queue = list(messages)

        async def receive() -> Any:
            return queue.pop(0) if queue else {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            pass

        scope = {"type": "http", "method": "POST", "path": "/x", "query_string": b"",
                 "headers": [(b"content-type", b"application/json"),
                             (b"content-length", b"21")]}  # fmt: skip
        target = LLMMiddleware(app, masking()) if wrapped else app
        await target(scope, receive, send)

    seen: list[Any] = []
    asyncio.run(run(False))
    asyncio.run(run(True))
    assert seen[0] == seen[1]


# -- logging that costs what it is worth (issue 14) ------------------------------------------


def test_cache_hit_lines_are_sampled_and_say_for_how_many(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_middleware import observability
    from llm_middleware.llm import CallStats
    from llm_middleware.observability import log_request

    # The count is process-wide: start it where earlier tests' cache hits cannot shift it.
    monkeypatch.setattr(observability, "_cached_skipped", 0)

    def log(outcome: str, *, cache_hits: int, llm_calls: int, sample: float) -> None:
        result = LLMResult(rule="/r")
        result.record("intent", outcome, None if outcome == "cached" else "deadline")
        stats = CallStats()
        stats.cache_hits, stats.llm_calls = cache_hits, llm_calls
        log_request(rule="/r", method="GET", mode="enforce", result=result, stats=stats,
                    cached_sample=sample)  # fmt: skip

    with capture_logs() as logs:
        for _ in range(40):
            log("cached", cache_hits=1, llm_calls=0, sample=0.25)
        log("timeout", cache_hits=0, llm_calls=1, sample=0.25)  # a failure: always
        log("ok", cache_hits=0, llm_calls=1, sample=0.25)  # a provider call: always
    events = request_events(logs)
    cached = [e for e in events if e["outcomes"] == {"intent": "cached"}]
    # One line per four cache hits (the first may close a count an earlier test began).
    assert 9 <= len(cached) <= 10
    assert all(e["sampled"] == 4 for e in cached[1:])
    assert sum(e["sampled"] for e in cached) in range(37, 41)
    assert [e["outcomes"] for e in events[-2:]] == [{"intent": "timeout"}, {"intent": "ok"}]
    with capture_logs() as logs:
        for _ in range(5):
            log("cached", cache_hits=1, llm_calls=0, sample=1.0)
    assert [e["sampled"] for e in request_events(logs)] == [1] * 5
