"""ASGI protocol details, driven directly with scope/receive/send (no sockets needed)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from apps import make_config
from fault_server import FaultServer, reply
from llm_middleware import LLMMiddleware, LLMResult

pytestmark = pytest.mark.anyio

GOOD = {"category": "shoes", "color": "red", "max_price": 100}
Message = dict[str, Any]


class Recorder:
    """An ASGI app that records what it received and answers 200."""

    def __init__(self, read_until_disconnect: bool = False) -> None:
        self.scope: dict[str, Any] | None = None
        self.messages: list[Message] = []
        self.read_until_disconnect = read_until_disconnect

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        if scope["type"] == "http":
            while True:
                message = await receive()
                self.messages.append(message)
                if message["type"] == "http.disconnect":
                    break
                if not message.get("more_body") and not self.read_until_disconnect:
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return

    @property
    def llm(self) -> LLMResult:
        assert self.scope is not None
        result: LLMResult = self.scope["state"]["llm"]
        return result


def http_scope(path: str, method: str = "POST", body_len: int | None = None, **extra: Any) -> Any:
    headers = [(b"content-type", b"application/json")]
    if body_len is not None:
        headers.append((b"content-length", str(body_len).encode()))
    return {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"",
            "headers": headers, "client": ("127.0.0.1", 5000), **extra}  # fmt: skip


def channel(*messages: Message) -> Any:
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await anyio.sleep(3600)  # a real server blocks until something happens
        raise AssertionError("unreachable")

    return receive


async def collect(app: Any, scope: Any, receive: Any) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_body_replayed_whole_then_real_disconnect(fault_server: FaultServer) -> None:
    fault_server.script(reply(GOOD))
    inner = Recorder(read_until_disconnect=True)
    app = LLMMiddleware(inner, config=make_config(fault_server.url))
    receive = channel(
        {"type": "http.request", "body": b'{"q": "red ', "more_body": True},
        {"type": "http.request", "body": b'shoes"}', "more_body": False},
        {"type": "http.disconnect"},
    )
    await collect(app, http_scope("/json-echo", body_len=18), receive)
    await app.engine.aclose()
    assert inner.messages == [
        {"type": "http.request", "body": b'{"q": "red shoes"}', "more_body": False},
        {"type": "http.disconnect"},
    ]
    assert inner.llm.outcomes == {"intent": "ok"}


async def test_disconnect_while_reading_is_replayed(fault_server: FaultServer) -> None:
    inner = Recorder(read_until_disconnect=True)
    app = LLMMiddleware(inner, config=make_config(fault_server.url))
    first = {"type": "http.request", "body": b'{"q": ', "more_body": True}
    await collect(
        app, http_scope("/json-echo", body_len=18), channel(first, {"type": "http.disconnect"})
    )
    assert inner.messages == [first, {"type": "http.disconnect"}]
    assert inner.llm.reasons == {"intent": "client_disconnected"}
    assert fault_server.requests == []


async def test_body_longer_than_declared_cap_is_replayed_losslessly(
    fault_server: FaultServer,
) -> None:
    inner = Recorder()
    app = LLMMiddleware(inner, config=make_config(fault_server.url, max_body_bytes=10))
    chunks = [b"0123456789", b"abcdef", b"ghij"]
    messages = [
        {"type": "http.request", "body": c, "more_body": i < 2} for i, c in enumerate(chunks)
    ]
    # Declares 8 bytes (under the cap) but sends 20: what was read is handed on, then the rest.
    await collect(app, http_scope("/json-echo", body_len=8), channel(*messages))
    assert b"".join(m["body"] for m in inner.messages) == b"".join(chunks)
    assert inner.llm.reasons == {"intent": "body_too_large"}


async def test_non_http_scopes_pass_through_and_lifespan_closes_client(
    fault_server: FaultServer,
) -> None:
    inner = Recorder()
    app = LLMMiddleware(inner, config=make_config(fault_server.url))
    sent = await collect(
        app,
        {"type": "lifespan", "asgi": {"version": "3.0"}},
        channel({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}),
    )
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]

    seen: list[str] = []

    async def ws_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await collect(LLMMiddleware(ws_app, config=make_config(fault_server.url)),
                  {"type": "websocket", "path": "/json-echo"}, channel())  # fmt: skip
    assert seen == ["websocket"]


async def test_unmatched_request_gets_the_original_receive_and_scope(
    fault_server: FaultServer,
) -> None:
    inner = Recorder()
    app = LLMMiddleware(inner, config=make_config(fault_server.url))
    scope = http_scope("/elsewhere", body_len=2)
    receive = channel({"type": "http.request", "body": b"{}", "more_body": False})
    await collect(app, scope, receive)
    assert inner.scope is scope
    assert "state" not in scope


async def test_matching_uses_the_path_inside_root_path(fault_server: FaultServer) -> None:
    fault_server.script(reply(GOOD))
    inner = Recorder()
    app = LLMMiddleware(inner, config=make_config(fault_server.url))
    scope = http_scope("/shop/search", method="GET", root_path="/shop")
    scope["query_string"] = b"q=red+shoes"
    await collect(app, scope, channel({"type": "http.request", "body": b""}))
    await app.engine.aclose()
    assert inner.llm.outcomes == {"intent": "ok"}


async def test_wrapped_twice_runs_once(fault_server: FaultServer) -> None:
    fault_server.default = reply(GOOD)
    inner = Recorder()
    config = make_config(fault_server.url)
    outer = LLMMiddleware(LLMMiddleware(inner, config=config), config=config)
    scope = http_scope("/search", method="GET", query_string=b"q=x")
    await collect(outer, scope, channel({"type": "http.request", "body": b""}))
    await outer.engine.aclose()
    assert len(fault_server.requests) == 1


async def test_a_bug_in_our_code_passes_the_request_through(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = Recorder()
    app = LLMMiddleware(inner, config=make_config(fault_server.url))

    async def broken(*args: Any) -> Any:
        raise RuntimeError("bug with a value red@example.com")

    monkeypatch.setattr(app.engine, "process_request", broken)
    body = b'{"q": "red shoes"}'
    with capture_logs() as logs:
        sent = await collect(
            app, http_scope("/json-echo", body_len=len(body)),
            channel({"type": "http.request", "body": body, "more_body": False}),
        )  # fmt: skip
    assert sent[0]["status"] == 200
    assert inner.messages[0]["body"] == body
    assert logs[0]["event"] == "llm_middleware.internal_error"
    assert "red@example.com" not in repr(logs)


async def test_shadow_mode_runs_but_never_applies(fault_server: FaultServer) -> None:
    fault_server.default = reply(GOOD, delay=0.05)
    config = make_config(fault_server.url)
    config["rules"][0]["mode"] = "shadow"
    inner = Recorder()
    app = LLMMiddleware(inner, config=config)
    scope = http_scope("/search", method="GET", query_string=b"q=red+shoes")
    with capture_logs() as logs:
        await collect(app, scope, channel({"type": "http.request", "body": b""}))
        assert inner.llm.outcomes == {"intent": "shadow"} and inner.llm.intent is None
        for _ in range(100):
            if logs:
                break
            await anyio.sleep(0.01)
    await app.engine.aclose()
    assert len(fault_server.requests) == 1
    assert logs[0]["mode"] == "shadow" and logs[0]["outcomes"] == {"intent": "ok"}


async def test_sample_zero_skips_without_calling(fault_server: FaultServer) -> None:
    config = make_config(fault_server.url)
    config["rules"][0]["sample"] = 0.0
    inner = Recorder()
    app = LLMMiddleware(inner, config=config)
    scope = http_scope("/search", method="GET", query_string=b"q=red+shoes")
    await collect(app, scope, channel({"type": "http.request", "body": b""}))
    assert inner.llm.outcomes == {"intent": "skipped"}
    assert inner.llm.reasons == {"intent": "sampled_out"}
    assert fault_server.requests == []


async def test_one_log_event_per_request_without_values(fault_server: FaultServer) -> None:
    fault_server.script(reply(GOOD, usage={"prompt_tokens": 30, "completion_tokens": 5}))
    inner = Recorder()
    app = LLMMiddleware(inner, config=make_config(fault_server.url, server_timing=True))
    scope = http_scope("/search", method="GET", query_string=b"q=secret+query+text")
    with capture_logs() as logs:
        sent = await collect(app, scope, channel({"type": "http.request", "body": b""}))
    await app.engine.aclose()
    assert len(logs) == 1
    event = logs[0]
    assert event["event"] == "llm_middleware.request"
    assert event["rule"] == "/search" and event["method"] == "GET"
    assert event["outcomes"] == {"intent": "ok"}
    assert (event["llm_calls"], event["prompt_tokens"], event["completion_tokens"]) == (1, 30, 5)
    assert event["models"] == ["fake"]
    assert event["prompt_versions"] == ["default-intent-SearchIntent@2"]
    assert "secret query" not in repr(logs) and "shoes" not in repr(logs)
    headers = dict(sent[0]["headers"])
    assert headers[b"server-timing"].startswith(b"llm;dur=")


async def test_sampling_is_deterministic_per_client_key(fault_server: FaultServer) -> None:
    fault_server.default = reply(GOOD)
    config = make_config(fault_server.url, client_key_header="x-user")
    config["rules"][0]["sample"] = 0.5
    inner = Recorder()
    app = LLMMiddleware(inner, config=config)

    async def outcome(user: str) -> str:
        scope = http_scope("/search", method="GET", query_string=b"q=x")
        scope["headers"].append((b"x-user", user.encode()))
        await collect(app, scope, channel({"type": "http.request", "body": b""}))
        return inner.llm.outcomes["intent"]

    first = [await outcome(f"user-{i}") for i in range(40)]
    again = [await outcome(f"user-{i}") for i in range(40)]
    await app.engine.aclose()
    assert [o == "skipped" for o in first] == [o == "skipped" for o in again]
    assert 8 <= first.count("skipped") <= 32  # about half, decided by the key


def _json_app(extra: Message | None = None) -> Any:
    body = b'{"body": "Llamas are camelids."}'

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if extra is not None:
            await send(extra)
        else:
            await send({"type": "http.response.body", "body": body})

    return app


async def test_header_enrichment_keeps_one_content_length(fault_server: FaultServer) -> None:
    fault_server.default = reply({"summary": "camelids", "tags": []})
    app = LLMMiddleware(_json_app(), config=make_config(fault_server.url))
    sent = await collect(app, http_scope("/article-header", method="GET"),
                         channel({"type": "http.request", "body": b""}))  # fmt: skip
    await app.engine.aclose()
    headers = sent[0]["headers"]
    assert [k for k, _ in headers].count(b"content-length") == 1
    assert dict(headers)[b"x-llm-summary"] == b'{"summary":"camelids","tags":[]}'


async def test_pathsend_follows_the_held_start_message(fault_server: FaultServer) -> None:
    pathsend = {"type": "http.response.pathsend", "path": "/tmp/file.json"}
    app = LLMMiddleware(_json_app(pathsend), config=make_config(fault_server.url))
    sent = await collect(app, http_scope("/article", method="GET"),
                         channel({"type": "http.request", "body": b""}))  # fmt: skip
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.pathsend"]
    assert fault_server.requests == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_interceptor_step_times_out_at_the_deadline_and_passes_cancellation_on(
    backend: str,
) -> None:
    # One step under what is left of the deadline (asyncio's own timeout on asyncio, anyio's
    # on trio): a slow step is recorded as a timeout at the deadline; a cancellation from
    # outside is not turned into a timeout.
    import time
    from types import SimpleNamespace
    from typing import cast

    import anyio

    from llm_middleware.deadline import Deadline
    from llm_middleware.engine import Engine
    from llm_middleware.interceptors.base import Interceptor, RequestContext
    from llm_middleware.result import LLMResult

    engine = Engine({"providers": [], "rules": []})
    icpt = cast(Interceptor, SimpleNamespace(name="slow", uses_llm=False, runs_first=False))

    def context(budget_s: float) -> RequestContext:
        ctx = RequestContext.__new__(RequestContext)
        ctx.deadline, ctx.result, ctx.privacy_failed = (
            Deadline(budget_s),
            LLMResult(rule="/t"),
            False,
        )
        return ctx

    async def slow() -> str:
        await anyio.sleep(5)
        return "ok"

    async def main() -> tuple[bool, str | None, float, bool]:
        started = time.monotonic()
        ctx = context(0.05)
        applied = await engine._step(icpt, ctx, slow)
        took = time.monotonic() - started
        cancelled = False
        with anyio.move_on_after(0.05) as scope:  # the outer cancellation comes first
            await engine._step(icpt, context(5.0), slow)
        cancelled = scope.cancelled_caught
        return applied, ctx.result.outcomes.get("slow"), took, cancelled

    applied, outcome, took, cancelled = anyio.run(main, backend=backend)
    assert not applied and outcome == "timeout"
    assert 0.045 <= took < 1.0  # (a loop's timer may fire within its clock resolution)
    assert cancelled
