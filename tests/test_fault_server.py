"""The scripted fault server itself, exercised over real sockets with httpx (sync and async)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from fault_server import (
    FaultServer,
    close_connection,
    drip,
    hang_after_headers,
    hang_before_headers,
    huge_body,
    invalid_json,
    not_json_content,
    rate_limited,
    refused_url,
    reply,
    status,
)

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "red shoes under $100"}]}


def _timeout(read: float = 2.0) -> httpx.Timeout:
    return httpx.Timeout(connect=1.0, read=read, write=1.0, pool=1.0)


@pytest.fixture
def client(fault_server: FaultServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fault_server.url, timeout=_timeout()) as c:
        yield c


def _content(response: httpx.Response) -> Any:
    return response.json()["choices"][0]["message"]["content"]


# --------------------------------------------------------------------------- basics


def test_urls_and_port() -> None:
    server = FaultServer()
    with pytest.raises(RuntimeError):
        _ = server.url
    with server, FaultServer("anthropic") as other:
        assert server.url == f"http://127.0.0.1:{server.port}/v1"
        assert other.url == f"http://127.0.0.1:{other.port}"
        assert server.port != other.port
    server.stop()  # idempotent


def test_default_reply_and_capture(fault_server: FaultServer, client: httpx.Client) -> None:
    response = client.post("/chat/completions", json=CHAT, headers={"X-Trace": "abc"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "tiny"
    assert data["choices"][0]["finish_reason"] == "stop"
    assert json.loads(data["choices"][0]["message"]["content"]) == {"ok": True}
    assert data["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}

    (captured,) = fault_server.requests
    assert captured.method == "POST"
    assert captured.path == "/v1/chat/completions"
    assert captured.headers["x-trace"] == "abc"
    assert captured.headers["content-type"] == "application/json"
    assert captured.json == CHAT
    assert json.loads(captured.body) == CHAT


def test_reply_content_usage_and_delay(fault_server: FaultServer, client: httpx.Client) -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    fault_server.script(reply({"color": "red"}, usage=usage), reply("plain", delay=0.1))
    first = client.post("/chat/completions", json={"messages": []})
    assert json.loads(_content(first)) == {"color": "red"}
    assert first.json()["model"] == "fake"
    assert first.json()["usage"] == usage
    started = time.monotonic()
    second = client.post("/chat/completions", json=CHAT)
    assert time.monotonic() - started >= 0.1
    assert _content(second) == "plain"


def test_script_order_default_and_reset(fault_server: FaultServer, client: httpx.Client) -> None:
    fault_server.script(status(500), reply("second"))
    assert client.get("/models").status_code == 500
    assert _content(client.get("/models")) == "second"
    assert json.loads(_content(client.get("/models"))) == {"ok": True}  # queue empty: default
    fault_server.default = status(503)
    assert client.get("/models").status_code == 503
    fault_server.script(reply("queued"))
    fault_server.reset()
    assert fault_server.requests == []
    assert json.loads(_content(client.get("/models"))) == {"ok": True}
    assert [r.method for r in fault_server.requests] == ["GET"]


def test_anthropic_wire(anthropic_fault_server: FaultServer) -> None:
    server = anthropic_fault_server
    server.script(reply({"category": "shoes"}), reply({"a": 1}), reply("just text"))
    tools = [{"name": "search_intent", "input_schema": {"type": "object"}}]
    body = {"model": "claude-x", "max_tokens": 50, "messages": [], "tools": tools}
    with httpx.Client(base_url=server.url, timeout=_timeout()) as c:
        tool = c.post("/v1/messages", json=body).json()
        no_tools = c.post("/v1/messages", json={"messages": []}).json()
        text = c.post("/v1/messages", json=body).json()
    assert tool["type"] == "message"
    assert tool["role"] == "assistant"
    assert tool["model"] == "claude-x"
    assert tool["stop_reason"] == "tool_use"
    assert tool["content"] == [
        {
            "type": "tool_use",
            "id": "toolu_1",
            "name": "search_intent",
            "input": {"category": "shoes"},
        }
    ]
    assert tool["usage"] == {"input_tokens": 11, "output_tokens": 7}
    assert no_tools["content"][0]["name"] == "output"
    assert no_tools["model"] == "fake"
    assert text["content"] == [{"type": "text", "text": "just text"}]
    assert server.requests[0].path == "/v1/messages"


# --------------------------------------------------------------------------- faults


def test_hang_before_headers_read_timeout(fault_server: FaultServer) -> None:
    fault_server.script(hang_before_headers())
    with httpx.Client(timeout=_timeout(read=0.1)) as c:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            c.post(f"{fault_server.url}/chat/completions", json=CHAT)
        assert 0.1 <= time.monotonic() - started < 1.0
    assert fault_server.requests[0].json == CHAT  # the request was fully read


def test_hang_after_headers_read_timeout(fault_server: FaultServer) -> None:
    fault_server.script(hang_after_headers())
    with (
        httpx.Client(timeout=_timeout(read=0.1)) as c,
        c.stream("POST", f"{fault_server.url}/chat/completions", json=CHAT) as response,
    ):
        assert response.status_code == 200  # headers arrived...
        assert response.headers["content-length"] == "100"
        with pytest.raises(httpx.ReadTimeout):  # ...the body never does
            response.read()


def test_drip_is_slow_but_never_trips_a_per_read_timeout(
    fault_server: FaultServer,
) -> None:
    body = b'{"a": 1}'
    fault_server.script(drip(body, interval=0.03))
    chunks: list[bytes] = []
    with httpx.Client(timeout=_timeout(read=0.5)) as c:
        started = time.monotonic()
        with c.stream("GET", f"{fault_server.url}/models") as response:
            assert response.headers["content-length"] == str(len(body))
            chunks.extend(response.iter_raw())
        elapsed = time.monotonic() - started
    assert b"".join(chunks) == body
    assert elapsed >= len(body) * 0.03 * 0.9
    assert len(chunks) > 1  # it really arrived in pieces


def test_drip_slower_than_read_timeout(fault_server: FaultServer) -> None:
    fault_server.script(drip(b"0123456789", interval=0.3))
    with (
        httpx.Client(timeout=_timeout(read=0.1)) as c,
        c.stream("GET", f"{fault_server.url}/models") as response,
    ):
        assert response.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            response.read()


def test_drip_renders_a_completion(fault_server: FaultServer, client: httpx.Client) -> None:
    fault_server.script(drip({"x": 1}, interval=0))
    response = client.post("/chat/completions", json=CHAT)
    assert json.loads(_content(response)) == {"x": 1}
    assert response.json()["model"] == "tiny"


@pytest.mark.parametrize("code", [400, 500, 503])
def test_status(fault_server: FaultServer, client: httpx.Client, code: int) -> None:
    fault_server.script(status(code, headers={"X-Request-Id": "r1"}))
    response = client.get("/models")
    assert response.status_code == code
    assert response.json() == {"error": "boom"}
    assert response.headers["x-request-id"] == "r1"
    assert client.get("/models").status_code == 200  # same connection still usable


def test_status_custom_body_and_content_type(
    fault_server: FaultServer, client: httpx.Client
) -> None:
    fault_server.script(status(502, "<html>bad gateway</html>", {"Content-Type": "text/html"}))
    response = client.get("/models")
    assert response.status_code == 502
    assert response.headers["content-type"] == "text/html"
    assert response.text == "<html>bad gateway</html>"


def test_rate_limited(fault_server: FaultServer, client: httpx.Client) -> None:
    fault_server.script(rate_limited(0.5), rate_limited())
    first = client.post("/chat/completions", json=CHAT)
    assert first.status_code == 429
    assert first.headers["retry-after"] == "0.5"
    assert first.json()["error"]["type"] == "rate_limit_error"
    assert client.post("/chat/completions", json=CHAT).headers["retry-after"] == "1"


def test_invalid_json(fault_server: FaultServer, client: httpx.Client) -> None:
    fault_server.script(invalid_json())
    response = client.post("/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == b'{"choices": ['
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_not_json_content(fault_server: FaultServer, client: httpx.Client) -> None:
    fault_server.script(not_json_content(), not_json_content("nope"))
    assert _content(client.post("/chat/completions", json=CHAT)) == "I think the answer is shoes"
    assert _content(client.post("/chat/completions", json=CHAT)) == "nope"


def test_huge_body(fault_server: FaultServer, client: httpx.Client) -> None:
    fault_server.script(huge_body(1_000_000), huge_body(300_000, content_length=False))
    sized = client.get("/models")
    assert sized.headers["content-length"] == "1000000"
    assert len(sized.content) == 1_000_000
    assert sized.json()["object"] == "chat.completion"  # valid-looking, in fact valid
    chunked = client.get("/models")
    assert "content-length" not in chunked.headers
    assert chunked.headers["transfer-encoding"] == "chunked"
    assert len(chunked.content) == 300_000


def test_huge_body_abandoned_by_client(fault_server: FaultServer) -> None:
    fault_server.script(huge_body())  # 20 MB: the client reads one chunk and walks away
    with httpx.Client(base_url=fault_server.url, timeout=_timeout()) as c:
        with c.stream("GET", "/models") as response:
            first = next(response.iter_raw())
            assert first.startswith(b'{"id": "chatcmpl-huge')
        assert c.get("/models").status_code == 200  # the server is fine


def test_close_connection(fault_server: FaultServer, client: httpx.Client) -> None:
    fault_server.script(close_connection())
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/chat/completions", json=CHAT)
    assert fault_server.requests[0].json == CHAT
    assert client.post("/chat/completions", json=CHAT).status_code == 200


def test_refused_url() -> None:
    with httpx.Client(timeout=_timeout()) as c, pytest.raises(httpx.ConnectError):
        c.get(f"{refused_url()}/models")


# --------------------------------------------------------------------------- transport details


def test_keep_alive_reuses_one_connection(fault_server: FaultServer, client: httpx.Client) -> None:
    fault_server.script(reply("one"), reply("two"))
    assert _content(client.post("/chat/completions", json=CHAT)) == "one"
    assert _content(client.post("/chat/completions", json=CHAT)) == "two"
    assert fault_server.connections == 1


def test_chunked_request_body(fault_server: FaultServer, client: httpx.Client) -> None:
    def parts() -> Iterator[bytes]:
        yield b'{"model": '
        yield b'"streamed"}'

    response = client.post("/chat/completions", content=parts())
    assert response.json()["model"] == "streamed"
    assert fault_server.requests[0].headers["transfer-encoding"] == "chunked"
    assert fault_server.requests[0].json == {"model": "streamed"}


def test_non_json_request_body(fault_server: FaultServer, client: httpx.Client) -> None:
    client.post("/chat/completions", content=b"not json")
    assert fault_server.requests[0].body == b"not json"
    assert fault_server.requests[0].json is None


def test_stop_is_quick_with_hanging_handlers() -> None:
    server = FaultServer().start()
    server.script(hang_before_headers(), hang_after_headers())
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with httpx.Client(timeout=_timeout(read=30.0)) as c:
                c.post(f"{server.url}/chat/completions", json=CHAT).read()
        except httpx.HTTPError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    assert server.wait_for_requests(2)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1.0
    for t in threads:
        t.join(timeout=2.0)
        assert not t.is_alive()
    assert len(errors) == 2  # both clients were cut off, not left hanging
    assert server.errors == []


# --------------------------------------------------------------------------- async clients


@pytest.mark.anyio
async def test_async_concurrent_delayed_replies(fault_server: FaultServer) -> None:
    fault_server.default = reply({"ok": True}, delay=0.2)
    async with httpx.AsyncClient(base_url=fault_server.url, timeout=_timeout()) as c:
        started = time.monotonic()
        responses: list[httpx.Response] = []

        async def post() -> None:
            responses.append(await c.post("/chat/completions", json=CHAT))

        async with anyio.create_task_group() as tg:  # any backend: asyncio or trio
            for _ in range(5):
                tg.start_soon(post)
        elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200] * 5
    assert 0.2 <= elapsed < 0.8  # served concurrently, not one after another
    assert len(fault_server.requests) == 5


@pytest.mark.anyio
async def test_async_hang_after_headers_and_outer_deadline(fault_server: FaultServer) -> None:
    fault_server.script(hang_after_headers(), hang_before_headers())
    async with httpx.AsyncClient(base_url=fault_server.url, timeout=_timeout(read=0.1)) as c:
        async with c.stream("POST", "/chat/completions", json=CHAT) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.ReadTimeout):
                await response.aread()
        # a deadline outside httpx (what the middleware relies on) cuts a hang short too
        started = time.monotonic()
        with pytest.raises(TimeoutError), anyio.fail_after(0.1):
            await c.post("/chat/completions", json=CHAT)
        assert time.monotonic() - started < 0.5


@pytest.mark.anyio
async def test_async_drip_and_faults(fault_server: FaultServer) -> None:
    fault_server.script(drip(b"abcd", interval=0.03), rate_limited(2), close_connection())
    async with httpx.AsyncClient(base_url=fault_server.url, timeout=_timeout(read=0.5)) as c:
        started = time.monotonic()
        dripped = await c.get("/models")
        assert dripped.content == b"abcd"
        assert time.monotonic() - started >= 4 * 0.03 * 0.9
        limited = await c.get("/models")
        assert (limited.status_code, limited.headers["retry-after"]) == (429, "2")
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/models")
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=_timeout()) as c:
            await c.get(f"{refused_url()}/models")
