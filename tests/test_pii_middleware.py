"""PII masking in the request pipeline, on every adapter, over real sockets: what the app,
the provider and the logs see."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from apps import make_config, post_asgi
from fault_server import FaultServer, reply
from servers import Serve

EMAIL = "jane.doe@example.com"
PHONE = "+1 415 555 0132"
CARD = "4111 1111 1111 1111"


def _sent_to_provider(fault_server: FaultServer) -> str:
    return "\n".join(r.body.decode("utf-8", "replace") for r in fault_server.requests)


def test_json_body_masked_for_app_and_provider_restored_in_intent(
    serve: Serve, fault_server: FaultServer
) -> None:
    # The model answers with the placeholder it was shown; the view gets the real value back.
    fault_server.script(reply({"category": "<EMAIL_ADDRESS_1>", "color": "red"}))
    body = {"subject": "refund", "message": f"mail me at {EMAIL} or call {PHONE}",
            "card_number": "1234", "nested": [{"note": f"card {CARD}"}]}  # fmt: skip
    raw = json.dumps(body).encode()
    with serve() as base:
        response = httpx.post(base + "/pii-echo", content=raw,
                              headers={"content-type": "application/json"})  # fmt: skip
    data = response.json()
    assert data["outcomes"] == {"pii_masking": "ok", "intent": "ok"}
    seen = json.loads(data["body"])
    assert seen["message"] == "mail me at <EMAIL_ADDRESS_1> or call <PHONE_NUMBER_1>"
    assert seen["subject"] == "refund"
    assert seen["card_number"] == "<CREDIT_CARD_1>"  # field-name rule: masked whole
    assert seen["nested"][0]["note"] == "card <CREDIT_CARD_2>"
    assert int(data["content_length"]) == data["body_len"]
    assert data["pii"] == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1, "CREDIT_CARD": 2}
    assert data["intent"]["category"] == EMAIL
    sent = _sent_to_provider(fault_server)
    assert "<EMAIL_ADDRESS_1>" in sent
    for value in (EMAIL, PHONE, CARD, "jane.doe"):
        assert value not in sent


def test_form_body_masks_only_the_address(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.default = reply({"category": "shoes"})
    raw = b"name=Jane+Doe&contact=a%40b.co&message=red+shoes+for+a%40b.co"
    with serve() as base:
        form_type = {"content-type": "application/x-www-form-urlencoded"}
        response = httpx.post(base + "/pii-form-echo", content=raw, headers=form_type)
    data = response.json()
    form = dict(parse_qsl(data["body"]))
    assert form == {"name": "Jane Doe", "contact": "<EMAIL_ADDRESS_1>",
                    "message": "red shoes for <EMAIL_ADDRESS_1>"}  # fmt: skip
    assert data["body"].startswith("name=Jane+Doe&")  # untouched fields keep their bytes
    assert int(data["content_length"]) == data["body_len"]
    if "post" in data:  # Flask's request.form, Django's request.POST see the masked data
        assert data["post"] == form
    assert "a@b.co" not in _sent_to_provider(fault_server)


def test_query_string_is_masked(serve: Serve, fault_server: FaultServer) -> None:
    with serve() as base:
        data = httpx.get(base + "/pii-echo", params={"email": EMAIL, "page": "2"}).json()
    assert data["query"] == {"email": "<EMAIL_ADDRESS_1>", "page": "2"}
    assert data["outcomes"]["pii_masking"] == "ok"


def test_no_masking_no_llm_call(serve: Serve, fault_server: FaultServer) -> None:
    # A body that cannot be masked (over the cap) reaches the app as it came, and nothing on
    # that rule may then go to a provider.
    raw = json.dumps({"message": f"{EMAIL} " + "x" * 5000}).encode()
    with serve(max_body_bytes=1000) as base:
        data = httpx.post(base + "/pii-echo", content=raw,
                          headers={"content-type": "application/json"}).json()  # fmt: skip
    assert data["body_sha256"] == __import__("hashlib").sha256(raw).hexdigest()
    assert data["outcomes"] == {"pii_masking": "skipped", "intent": "skipped"}
    assert data["reasons"] == {"pii_masking": "body_too_large", "intent": "pii_masking_failed"}
    assert fault_server.requests == []


def test_non_utf8_body_on_a_masking_rule_is_masked_byte_exact(
    serve: Serve, fault_server: FaultServer
) -> None:
    # Undecodable bytes are data, not a way around masking: the address is masked and every
    # other byte (invalid UTF-8 included) reaches the app as it was sent.
    raw = b"\xff\xfe caf\xe9 " + EMAIL.encode() + b" \xc3"
    expected = b"\xff\xfe caf\xe9 <EMAIL_ADDRESS_1> \xc3"
    with serve() as base:
        data = httpx.post(base + "/pii-echo", content=raw,
                          headers={"content-type": "text/plain"}).json()  # fmt: skip
    assert data["body_sha256"] == __import__("hashlib").sha256(expected).hexdigest()
    assert data["outcomes"]["pii_masking"] == "ok"


@pytest.fixture
def scrubbed_logs() -> Any:
    from llm_middleware.observability import scrub_pii

    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[scrub_pii, capture])
    yield capture.entries
    structlog.reset_defaults()


def test_log_scrubber_hides_masked_values_in_app_logs(
    fault_server: FaultServer, scrubbed_logs: list[dict[str, Any]]
) -> None:
    from llm_middleware.wsgi import LLMWSGIMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        # The app logs a header it got the same address in: the scrubber still hides it.
        structlog.get_logger().info("ticket", contact=environ.get("HTTP_X_CONTACT"),
                                    nested={"who": [environ.get("HTTP_X_CONTACT")]})  # fmt: skip
        start_response("200 OK", [])
        return [b""]

    wsgi = LLMWSGIMiddleware(app, make_config(fault_server.url))
    raw = json.dumps({"message": f"hi {EMAIL}"}).encode()
    import io

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/pii-echo", "QUERY_STRING": "",
               "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(raw)),
               "HTTP_X_CONTACT": f"Jane <{EMAIL}>", "wsgi.input": io.BytesIO(raw)}  # fmt: skip
    wsgi(environ, lambda *a: None)
    structlog.get_logger().info("after the request", contact=EMAIL)  # not scrubbed any more
    wsgi.engine.close()
    app_events = [e for e in scrubbed_logs if e["event"] == "ticket"]
    assert app_events[0]["contact"] == "Jane <[REDACTED]>"
    assert app_events[0]["nested"] == {"who": ["Jane <[REDACTED]>"]}
    assert EMAIL not in repr([e for e in scrubbed_logs if e["event"] != "after the request"])
    assert scrubbed_logs[-1]["contact"] == EMAIL


def test_sensitive_json_fields_never_reach_the_provider(
    fault_server: FaultServer,
) -> None:
    # Intent reads a JSON object whose fields are secrets by name (no detector would flag
    # "hunter2"); only the query string is masked on this rule, yet the provider gets
    # placeholders for them.
    from llm_middleware import LLMMiddleware

    fault_server.default = reply({"category": "shoes"})
    config = {
        "providers": [{"kind": "openai", "base_url": fault_server.url, "model": "m"}],
        "rules": [{"path": "/signup", "interceptors": [
            {"type": "pii_masking", "targets": ["query"], "mask_for": ["providers", "app"]},
            {"type": "intent", "schema": "schemas.SearchIntent", "source": "json:/user"},
        ]}],
    }  # fmt: skip
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((await receive())["body"])

    middleware = LLMMiddleware(app, config=config)
    body = json.dumps({"user": {"name": "Jo", "password": "hunter2-Secret",
                                "ssn": "078051120", "api_token": "abc"}}).encode()  # fmt: skip
    post_asgi(middleware, "/signup", body, "application/json")
    sent = _sent_to_provider(fault_server)
    assert seen == [body]  # the body itself was not a masking target here
    for secret in ("hunter2", "078051120", '"abc"'):
        assert secret not in sent
    assert "<SECRET_1>" in sent


def test_large_body_masking_respects_the_budget(fault_server: FaultServer) -> None:
    # Masking a large body is CPU work off the event loop, bounded by the rule's budget: past
    # it the request goes on as it came and nothing is sent to the provider.
    from llm_middleware import LLMMiddleware

    config = make_config(fault_server.url, budget_ms=20, max_body_bytes=4_000_000)
    results: list[Any] = []
    body = json.dumps({"message": " ".join(f"user{i}@example.com" for i in range(60_000))})
    raw = body.encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        results.append((scope["state"]["llm"], (await receive())["body"]))

    middleware = LLMMiddleware(app, config=config)
    post_asgi(middleware, "/pii-echo", raw, "application/json")
    result, seen = results[0]
    assert result.outcomes == {"pii_masking": "skipped", "intent": "skipped"}
    assert result.reasons == {"pii_masking": "too_large_for_budget",
                              "intent": "pii_masking_failed"}  # fmt: skip
    assert seen == raw
    assert result.added_ms <= 20 + 5
    assert fault_server.requests == []


def test_keep_fields_reach_the_app_but_not_the_provider(fault_server: FaultServer) -> None:
    # The view must validate and use "email" (a placeholder would fail its EmailField);
    # the free-text "message" is masked, and the provider still sees neither value.
    from llm_middleware import LLMMiddleware

    fault_server.default = reply({"category": "shoes"})
    config = {
        "providers": [{"kind": "openai", "base_url": fault_server.url, "model": "m"}],
        "rules": [{"path": "/tickets", "interceptors": [
            {"type": "pii_masking", "keep_fields": ["email"], "mask_for": ["providers", "app"]},
            {"type": "intent", "schema": "schemas.SearchIntent", "source": "json:"},
        ]}],
    }  # fmt: skip
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((await receive())["body"])

    middleware = LLMMiddleware(app, config=config)
    body = json.dumps({"email": EMAIL, "message": f"I am {EMAIL}, call {PHONE}"}).encode()
    post_asgi(middleware, "/tickets", body, "application/json")
    got = json.loads(seen[0])
    assert got == {"email": EMAIL, "message": "I am <EMAIL_ADDRESS_1>, call <PHONE_NUMBER_1>"}
    sent = _sent_to_provider(fault_server)
    assert EMAIL not in sent and "jane.doe" not in sent


# -- what masking is for, failure policy, where it runs ---------------------------------------


def _masking_config(provider_url: str, **masking: Any) -> dict[str, Any]:
    return {
        "providers": [{"kind": "openai", "base_url": provider_url, "model": "m",
                       "max_retries": 0}],
        "rules": [{"path": "/login", "budget_ms": 2000, "interceptors": [
            {"type": "pii_masking", **masking},
            {"type": "intent", "schema": "schemas.SearchIntent", "source": "form:note"},
        ]}],
    }  # fmt: skip


def _asgi_seen(config: dict[str, Any], body: bytes, content_type: str) -> tuple[bytes, Any]:
    from llm_middleware import LLMMiddleware

    seen: list[tuple[bytes, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(((await receive())["body"], scope["state"]["llm"]))

    post_asgi(LLMMiddleware(app, config=config), "/login", body, content_type)
    return seen[0]


def test_default_masks_for_providers_only(fault_server: FaultServer) -> None:
    # A login form on a masked route: the app gets its own fields (password, CSRF token,
    # e-mail login) as sent; the provider gets none of them.
    fault_server.default = reply({"category": "x"})
    form = f"email={EMAIL}&password=hunter2hunter2&csrfmiddlewaretoken=abc&note=call+{EMAIL}"
    body, result = _asgi_seen(_masking_config(fault_server.url), form.encode(),
                              "application/x-www-form-urlencoded")  # fmt: skip
    assert body == form.encode()
    assert result.outcomes == {"pii_masking": "ok", "intent": "ok"}
    sent = _sent_to_provider(fault_server)
    assert EMAIL not in sent and "<EMAIL_ADDRESS_1>" in sent


def test_masking_for_the_app_leaves_anti_forgery_fields(fault_server: FaultServer) -> None:
    fault_server.default = reply({"category": "x"})
    form = f"csrfmiddlewaretoken=tok-{EMAIL}&password=hunter2hunter2&note={EMAIL}"
    config = _masking_config(fault_server.url, mask_for=["providers", "app"])
    body, _ = _asgi_seen(config, form.encode(), "application/x-www-form-urlencoded")
    assert parse_qsl(body.decode()) == [("csrfmiddlewaretoken", f"tok-{EMAIL}"),
                                        ("password", "<SECRET_1>"),
                                        ("note", "<EMAIL_ADDRESS_1>")]  # fmt: skip


def test_reject_policy_answers_instead_of_passing_unmasked(fault_server: FaultServer) -> None:
    # The engine records the failure and leaves the adapter a response to send (status by
    # reason); the default policy leaves none.
    import asyncio

    from llm_middleware.deadline import Deadline
    from llm_middleware.engine import Engine
    from llm_middleware.exchange import Headers, RequestExchange

    def run(**masking: Any) -> RequestExchange:
        engine = Engine(_masking_config(fault_server.url, mask_for=["providers", "app"],
                                        **masking))  # fmt: skip
        rule = engine.match("POST", "/login")
        assert rule is not None
        headers = Headers([("content-type", "application/x-www-form-urlencoded")])
        exchange = RequestExchange("POST", "/login", "", headers, None,
                                   body_skip_reason="body_too_large")  # fmt: skip
        result = asyncio.run(engine.process_request(rule, exchange, Deadline(1.0)))
        assert result.reasons["pii_masking"] == "body_too_large"
        engine.close()
        return exchange

    assert run().reject is None
    rejected = run(on_masking_failure="reject").reject
    assert rejected is not None
    assert rejected[0] == 413
    assert json.loads(rejected[1]) == {"error": "pii_masking_failed", "reason": "body_too_large"}
    assert fault_server.requests == []


def test_masking_runs_on_its_own_pool_not_the_default_executor(
    fault_server: FaultServer,
) -> None:
    # With the default executor stalled (as when DNS lookups hang), a body beyond the inline
    # size is still masked, on the masking pool's threads.
    import asyncio
    import threading

    from llm_middleware import LLMMiddleware
    from llm_middleware.interceptors import pii

    threads: list[str] = []
    original = pii.PIIInterceptor._mask_request

    def spy(self: Any, *args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(self, *args)

    fault_server.default = reply({"category": "x"})
    config = _masking_config(fault_server.url, mask_for=["providers", "app"])
    form = ("note=" + "+".join([EMAIL] * 3000)).encode()
    seen: list[bytes] = []
    release = threading.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((await receive())["body"])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stalled = [loop.run_in_executor(None, release.wait) for _ in range(64)]
        middleware = LLMMiddleware(app, config=config)
        queue = [{"type": "http.request", "body": form, "more_body": False}]

        async def receive() -> Any:
            return queue.pop(0)

        scope = {"type": "http", "method": "POST", "path": "/login", "query_string": b"",
                 "headers": [(b"content-type", b"application/x-www-form-urlencoded"),
                             (b"content-length", str(len(form)).encode())]}  # fmt: skip
        try:
            await middleware(scope, receive, None)
        finally:
            release.set()
            await asyncio.gather(*stalled)
            await middleware.engine.aclose()

    pii.PIIInterceptor._mask_request = spy  # type: ignore[method-assign]
    try:
        asyncio.run(main())
    finally:
        pii.PIIInterceptor._mask_request = original  # type: ignore[method-assign]
    assert len(form) > pii._INLINE_BYTES
    assert threads and all(name.startswith("llm-middleware-mask") for name in threads), threads
    assert EMAIL.encode() not in seen[0] and b"EMAIL_ADDRESS_1" in seen[0]


def test_a_job_that_cannot_start_in_time_is_not_started() -> None:
    import threading
    import time

    from llm_middleware.exchange import SourceError
    from llm_middleware.interceptors.pii import MaskingPool, _NotStarted

    pool = MaskingPool(workers=1, max_queued=2)
    release = threading.Event()
    ran: list[str] = []
    started = threading.Event()

    def block() -> bool:
        started.set()
        return release.wait(5)

    blocker = pool.submit(block, time.monotonic() + 5)
    assert started.wait(5)  # running: no longer queued
    late = pool.submit(lambda: ran.append("late"), time.monotonic() + 0.01)
    queued = pool.submit(lambda: ran.append("queued"), time.monotonic() + 5)
    with pytest.raises(SourceError, match="masking_busy"):
        pool.submit(lambda: ran.append("over"), time.monotonic() + 5)
    time.sleep(0.05)
    release.set()
    assert blocker.result(5) is True
    with pytest.raises(_NotStarted):
        late.result(5)
    queued.result(5)
    assert ran == ["queued"]


def test_hash_strategy_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_middleware.config import ConfigError, load_config
    from llm_middleware.engine import Engine

    rule = {"path": "/x", "interceptors": [{"type": "pii_masking", "strategy": "hash"}]}
    with pytest.raises(ConfigError, match="salt_env"):
        load_config({"rules": [rule]})
    rule["interceptors"][0]["salt_env"] = "LLM_TEST_HASH_KEY"  # type: ignore[index]
    monkeypatch.delenv("LLM_TEST_HASH_KEY", raising=False)
    with pytest.raises(ConfigError, match="LLM_TEST_HASH_KEY"):
        Engine({"rules": [rule]})
    monkeypatch.setenv("LLM_TEST_HASH_KEY", "k")
    Engine({"rules": [rule]}).close()


def test_reject_policy_on_every_adapter(serve: Serve, fault_server: FaultServer) -> None:
    # Over the rule's body cap, masking cannot run: with "reject" the client gets 413 and a
    # short JSON body, the view is not called, the provider is not asked.
    rule = {"path": "/pii-echo", "budget_ms": 300, "max_body_bytes": 64, "interceptors": [
        {"type": "pii_masking", "mask_for": ["providers", "app"],
         "on_masking_failure": "reject"},
        {"type": "intent", "schema": "schemas.SearchIntent", "source": "json:/message"},
    ]}  # fmt: skip
    body = json.dumps({"message": f"mail {EMAIL} " + "x" * 100})
    with capture_logs() as logs, serve(rules=[rule]) as base:
        response = httpx.post(base + "/pii-echo", content=body,
                              headers={"content-type": "application/json"})  # fmt: skip
        small = httpx.post(base + "/pii-echo", content=json.dumps({"message": EMAIL}),
                           headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 413
    assert response.json() == {"error": "pii_masking_failed", "reason": "body_too_large"}
    assert EMAIL not in response.text
    assert small.status_code == 200 and EMAIL not in small.json()["body"]
    assert len(fault_server.requests) == 1  # the small one only
    events = [e for e in logs if e.get("event") == "llm_middleware.request"]
    assert any(e["reasons"].get("pii_masking") == "body_too_large" for e in events), events


# -- real anti-forgery checks on a masked route -------------------------------------------


def _login_view(request: Any) -> Any:
    from django.http import JsonResponse

    ok = request.POST.get("password") == "hunter2hunter2"
    return JsonResponse({"logged_in": ok, "email": request.POST.get("email")})


def __getattr__(name: str) -> Any:  # this module is the urlconf of the Django test below
    if name == "urlpatterns":
        from django.urls import path

        return [path("login", _login_view)]  # not csrf_exempt: CsrfViewMiddleware checks it
    raise AttributeError(name)


@pytest.mark.parametrize("mask_for", [["providers"], ["providers", "app"]])
def test_django_csrf_protected_login_on_a_masked_route(
    fault_server: FaultServer, mask_for: list[str]
) -> None:
    from apps import setup_django

    setup_django()
    from django.test import Client, override_settings

    fault_server.default = reply({"category": "x"})
    config = _masking_config(fault_server.url, mask_for=mask_for, keep_fields=["password"])
    middleware = ["llm_middleware.django.LLMMiddleware",
                  "django.middleware.csrf.CsrfViewMiddleware"]  # fmt: skip
    secret = "A" * 32
    with override_settings(MIDDLEWARE=middleware, ROOT_URLCONF=__name__, LLM_MIDDLEWARE=config):
        client = Client(enforce_csrf_checks=True)
        client.cookies["csrftoken"] = secret
        form = {"csrfmiddlewaretoken": secret, "email": EMAIL, "password": "hunter2hunter2",
                "note": f"write to {EMAIL}"}  # fmt: skip
        encoded, kind = urlencode(form), "application/x-www-form-urlencoded"
        response = client.post("/login", encoded, content_type=kind)
        forged = Client(enforce_csrf_checks=True).post("/login", encoded, content_type=kind)
        from llm_middleware.django import engine_from_settings

        engine_from_settings.get().close()
    assert response.status_code == 200, response.content
    expected_email = EMAIL if mask_for == ["providers"] else "<EMAIL_ADDRESS_1>"
    assert response.json() == {"logged_in": True, "email": expected_email}
    assert forged.status_code == 403  # the check is real
    assert EMAIL not in _sent_to_provider(fault_server)


@pytest.mark.parametrize("mask_for", [["providers"], ["providers", "app"]])
def test_flask_login_form_with_csrf_token_on_a_masked_route(
    fault_server: FaultServer, mask_for: list[str]
) -> None:
    import flask

    from llm_middleware.flask import LLMMiddleware

    fault_server.default = reply({"category": "x"})
    app = flask.Flask("login_app")
    app.config["LLM_MIDDLEWARE"] = _masking_config(
        fault_server.url, mask_for=mask_for, keep_fields=["password"]
    )

    @app.post("/login")
    def login() -> Any:
        form = flask.request.form
        if form.get("csrf_token") != "tok-" + EMAIL:  # as Flask-WTF compares it
            return {"error": "csrf"}, 400
        return {"logged_in": form.get("password") == "hunter2hunter2"}

    LLMMiddleware(app)
    form = {"csrf_token": "tok-" + EMAIL, "password": "hunter2hunter2", "note": EMAIL}
    response = app.test_client().post("/login", data=form)
    app.extensions["llm_middleware"].engine.close()
    assert response.status_code == 200, response.data
    assert response.json == {"logged_in": True}
    assert EMAIL not in _sent_to_provider(fault_server)
