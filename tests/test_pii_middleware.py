"""PII masking in the request pipeline, on every adapter, over real sockets: what the app,
the provider and the logs see."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import structlog

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
