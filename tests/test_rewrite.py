"""Request rewriting: intent fields land in the query string / JSON body, so an unchanged view
that reads request.GET / request.args / query params / the JSON body benefits; on every adapter."""

from __future__ import annotations

import json

import httpx

from fault_server import FaultServer, hang_before_headers, reply
from servers import Serve

GOOD = {"category": "shoes", "color": "red", "max_price": 100}


def test_intent_rewritten_into_query_params(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.default = reply(GOOD)
    with serve() as base:
        data = httpx.get(base + "/rewrite-search", params={"q": "red shoes under 100"}).json()
    assert data["query"] == {"q": "red shoes under 100", "max_price": "100", "category": "shoes"}
    assert data["outcomes"] == {"intent": "ok"}


def test_client_parameters_are_never_overwritten(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.default = reply(GOOD)
    with serve() as base:
        params = {"q": "red shoes", "max_price": "50"}
        data = httpx.get(base + "/rewrite-search", params=params).json()
    assert data["query"] == {"q": "red shoes", "max_price": "50", "category": "shoes"}


def test_intent_rewritten_into_json_body(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.default = reply(GOOD)
    raw = json.dumps({"q": "red shoes", "filters": {"color": "blue"}}).encode()
    with serve() as base:
        data = httpx.post(base + "/rewrite-json", content=raw,
                          headers={"content-type": "application/json"}).json()  # fmt: skip
    body = json.loads(data["body"])
    assert body == {"q": "red shoes", "filters": {"color": "blue", "max_price": 100.0}}
    assert int(data["content_length"]) == data["body_len"]


def test_no_rewrite_when_the_llm_fails(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.default = hang_before_headers()
    raw = json.dumps({"q": "red shoes"}).encode()
    with serve() as base:
        query = httpx.get(base + "/rewrite-search", params={"q": "red shoes"}).json()
        body = httpx.post(base + "/rewrite-json", content=raw,
                          headers={"content-type": "application/json"}).json()  # fmt: skip
    assert query["query"] == {"q": "red shoes"} and query["outcomes"] == {"intent": "timeout"}
    assert body["body"] == raw.decode() and body["outcomes"] == {"intent": "timeout"}


def test_rewrite_keeps_the_clients_bytes(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.default = reply(GOOD)
    with serve() as base:
        data = httpx.get(base + "/rewrite-search?q=red+shoes&name=caf%C3%A9&page=2").json()
    assert data["query"] == {"q": "red shoes", "name": "café", "page": "2", "max_price": "100",
                             "category": "shoes"}  # fmt: skip
