"""Privacy matrix: every entity through every channel, on every adapter, with a recording
provider and captured logs. Nothing detectable, and no value of a field that is secret by its
name, reaches the provider, a log line, or (where the rule masks responses) the client."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import structlog

from fault_server import FaultServer, reply
from llm_middleware.pii import BUILTIN_ENTITIES
from servers import Serve

# One value per built-in entity, each found by the detector in running text.
SAMPLES = {
    "EMAIL_ADDRESS": "jane.doe@example.com",
    "PHONE_NUMBER": "+1 415-555-0132",
    "CREDIT_CARD": "4111111111111111",
    "US_SSN": "536-22-1234",
    "IBAN_CODE": "DE89370400440532013000",
    "IP_ADDRESS": "203.0.113.77",
    "SECRET": "sk-live-9fQ2xR7vLp3mZk8WbN4tYc6H",
}
# Values that no detector can recognise: secret only because of the field they are in.
NAMED_SECRETS = {
    "password": "hunter2hunter2",
    "x-api-key": "k9-not-detectable-1",
    "authorization": "Basic dXNlcjpodW50ZXIy",
    "cookie": "sessionid=q7w8e9r0t1",
    "token": "tok-plain-4242",
}
TEXT = "contact " + " ; ".join(SAMPLES.values()) + " thanks"
SCHEMA = "schemas.SearchIntent"


def _rule(path: str, source: str, methods: list[str], *extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": path,
        "methods": methods,
        "budget_ms": 2000,
        "interceptors": [
            {"type": "pii_masking", "targets": ["query", "body", "response"]},
            *(extra or ({"type": "intent", "schema": SCHEMA, "source": source},)),
        ],
    }


RULES = [
    _rule("/search", "query:q", ["GET"]),
    _rule("/rewrite-search", "query:token", ["GET"]),
    _rule("/json-echo", "json:", ["POST"]),
    _rule("/rewrite-json", "json:/user/password", ["POST"]),
    _rule("/form-echo", "form:message", ["POST"]),
    _rule("/pii-form-echo", "form:password", ["POST"]),
    _rule("/body-echo", "body", ["POST"]),
    _rule("/header-echo", "header:x-query", ["GET"]),
    _rule("/echo", "header:authorization", ["GET"]),
    _rule("/echo", "header:x-api-key", ["PUT"]),
    _rule("/search", "header:cookie", ["POST"]),
    # The response's "body" (the echoed request body) goes to the provider through enrichment;
    # the restored summary goes into a header and into the JSON, both masked on the way out.
    _rule(
        "/pii-echo", "", ["POST"],
        {"type": "enrichment", "schema": "schemas.Summary", "source": "json:/body",
         "into": "header:x-summary"},
        {"type": "enrichment", "schema": "schemas.Summary", "source": "json:/body",
         "into": "json:/summary", "name": "inline"},
    ),
]  # fmt: skip

# The provider answers with placeholders, as a model would: restoration puts the values back,
# in plain and in glued form ("ID<US_SSN_1>", which no detector would recognise restored).
PROVIDER_REPLY = {
    "category": "<EMAIL_ADDRESS_1>",
    "summary": "for <EMAIL_ADDRESS_1>, ID<US_SSN_1>, card <CREDIT_CARD_1> <PHONE_NUMBER_1>",
    "tags": ["<IBAN_CODE_1>"],
}


def _requests(base: str) -> list[tuple[str, httpx.Request]]:
    client = httpx.Client()
    json_doc = {
        "message": TEXT,
        **dict.fromkeys(SAMPLES.values(), "as a key"),  # JSON keys
        "pan": int(SAMPLES["CREDIT_CARD"]),  # a card as a JSON number
        "ssn": 536221234,  # a number secret by its field name
        "user": {"password": NAMED_SECRETS["password"], "api_key": NAMED_SECRETS["x-api-key"]},
        "nested": [{"token": NAMED_SECRETS["token"]}, 3.5, None, True],
    }
    form = urlencode({"message": TEXT, "password": NAMED_SECRETS["password"]})
    build = client.build_request
    out = [
        ("query", build("GET", f"{base}/search", params={"q": TEXT})),
        ("query field", build("GET", f"{base}/rewrite-search",
                              params={"token": NAMED_SECRETS["token"], "q": "x"})),
        ("json", build("POST", f"{base}/json-echo", json=json_doc)),
        ("json field", build("POST", f"{base}/rewrite-json", json=json_doc)),
        ("form", build("POST", f"{base}/form-echo", content=form,
                       headers={"content-type": "application/x-www-form-urlencoded"})),
        ("form field", build("POST", f"{base}/pii-form-echo", content=form,
                             headers={"content-type": "application/x-www-form-urlencoded"})),
        ("text body", build("POST", f"{base}/body-echo", content=TEXT.encode(),
                            headers={"content-type": "text/plain"})),
        ("header", build("GET", f"{base}/header-echo", headers={"x-query": TEXT})),
        ("authorization", build("GET", f"{base}/echo",
                                headers={"authorization": NAMED_SECRETS["authorization"]})),
        ("api key header", build("PUT", f"{base}/echo",
                                 headers={"x-api-key": NAMED_SECRETS["x-api-key"]})),
        ("cookie", build("POST", f"{base}/search", content=b"",
                         headers={"cookie": NAMED_SECRETS["cookie"]})),
        ("response", build("POST", f"{base}/pii-echo", content=TEXT.encode(),
                           headers={"content-type": "text/plain"})),
    ]  # fmt: skip
    client.close()
    return out


def _leaks(text: str, *, named: bool = True) -> list[str]:
    values = [*SAMPLES.values(), "536221234"]
    if named:  # secret by field name: the app's own echo of them is not ours to find
        values += NAMED_SECRETS.values()
    return [v for v in values if v in text]


def test_nothing_detectable_reaches_a_provider_a_log_or_the_client(
    serve: Serve, fault_server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert set(SAMPLES) <= BUILTIN_ENTITIES
    fault_server.default = reply(PROVIDER_REPLY)
    caplog.set_level(logging.DEBUG)
    responses: dict[str, httpx.Response] = {}
    with (
        structlog.testing.capture_logs() as logs,
        serve(rules=RULES, cache_size=0) as base,
        httpx.Client(timeout=10) as client,
    ):
        for channel, request in _requests(base):
            responses[channel] = client.send(request)
        app_url = base
    for channel, response in responses.items():
        assert response.status_code == 200, channel
        data = response.json()
        # Every channel's value went to the provider, so a skipped step cannot pass as clean.
        outcomes = data["outcomes"]
        assert outcomes and all(v == "ok" for v in outcomes.values()), (channel, outcomes)
        # What we add to a response (restored from placeholders) never leaves unmasked.
        assert _leaks(str(response.headers), named=False) == [], channel
    # The rule masks responses: the plain-text echo and both enrichments, restored from the
    # provider's placeholders (glued "ID536221234" included), leave masked.
    assert _leaks(responses["response"].text, named=False) == []
    assert "x-summary" in responses["response"].headers
    assert "<EMAIL_ADDRESS_1>" in responses["response"].headers["x-summary"]
    assert len(fault_server.requests) == len(responses) + 1  # two enrichments on one
    for captured in fault_server.requests:
        sent = captured.body.decode()
        decoded = json.dumps(json.loads(sent), ensure_ascii=False)
        assert _leaks(sent) == [] and _leaks(decoded) == [], decoded
    assert any("<SECRET_" in r.body.decode() for r in fault_server.requests)
    for entry in logs:
        assert _leaks(repr(entry)) == [], entry
    # Standard logging (httpx/httpcore at DEBUG included), but the test client's own lines.
    lines = [r.getMessage() for r in caplog.records]
    assert _leaks("\n".join(line for line in lines if app_url not in line)) == []
