"""The LLM client on its own, over real sockets: retries, fallback, breaker, cache, limits."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from fault_server import (
    FaultServer,
    drip,
    hang_before_headers,
    rate_limited,
    refused_url,
    reply,
    status,
)
from llm_middleware import Config, load_config
from llm_middleware.deadline import Deadline
from llm_middleware.llm import (
    CallStats,
    CircuitOpen,
    LLMClient,
    LLMConfigError,
    LLMTimeout,
    LLMTransportError,
    Shed,
)
from llm_middleware.llm.client import CircuitBreaker
from llm_middleware.llm.prompts import default_prompt
from schemas import SearchIntent

GOOD = {"category": "shoes", "color": "red", "max_price": 100}
PROMPT = default_prompt(SearchIntent, "intent")

pytestmark = pytest.mark.anyio


def config(*urls: str, **overrides: Any) -> Config:
    providers = [{"kind": "openai", "base_url": u, "model": f"m{i}"} for i, u in enumerate(urls)]
    return load_config({"providers": providers, **overrides})


async def wait_idle(client: LLMClient) -> None:
    """The shared upstream task ends at its own deadline, a loop tick after its callers."""
    for _ in range(50):
        if client.in_flight == 0:
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"{client.in_flight} LLM calls still in flight")


async def gather(*calls: tuple[float, Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run ``(delay, call)`` pairs concurrently (any backend); each call's value or exception."""
    results: list[Any] = [None] * len(calls)

    async def run(i: int, delay: float, make: Callable[[], Awaitable[Any]]) -> None:
        await anyio.sleep(delay)
        try:
            results[i] = await make()
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i, (delay, make) in enumerate(calls):
            tg.start_soon(run, i, delay, make)
    return results


async def call(client: LLMClient, text: str = "red shoes", budget: float = 0.5) -> Any:
    return await client.structured(SearchIntent, PROMPT, text, Deadline(budget), CallStats())


async def test_fallback_chain_uses_next_provider(fault_server: FaultServer) -> None:
    fault_server.script(reply(GOOD))
    client = LLMClient(config(refused_url(), fault_server.url))
    try:
        obj, cached = await call(client)
    finally:
        await client.aclose()
    assert obj == SearchIntent(**GOOD) and cached is False
    assert fault_server.requests[0].json["model"] == "m1"


async def test_retry_after_longer_than_the_budget_falls_back_at_once(
    fault_server: FaultServer,
) -> None:
    with FaultServer() as second:
        fault_server.script(rate_limited(retry_after=10))
        second.script(reply(GOOD))
        client = LLMClient(config(fault_server.url, second.url))
        started = time.monotonic()
        try:
            obj, _ = await call(client)
        finally:
            await client.aclose()
    assert obj == SearchIntent(**GOOD)
    assert time.monotonic() - started < 0.5


async def test_every_attempt_shares_one_deadline(fault_server: FaultServer) -> None:
    # Five retries of a hanging provider still end at the request's deadline.
    fault_server.default = hang_before_headers()
    client = LLMClient(
        load_config(
            {
                "providers": [
                    {
                        "kind": "openai",
                        "base_url": fault_server.url,
                        "model": "m",
                        "max_retries": 5,
                        "timeout_ms": 100,
                    }
                ]
            }  # fmt: skip
        )
    )
    started = time.monotonic()
    try:
        with pytest.raises(LLMTimeout):
            await call(client, budget=0.25)
    finally:
        await client.aclose()
    assert time.monotonic() - started < 0.35
    assert len(fault_server.requests) >= 2  # it did retry, inside the same 250 ms


async def test_breaker_opens_after_consecutive_failures(fault_server: FaultServer) -> None:
    fault_server.default = status(400)  # not retried: one request per call
    client = LLMClient(config(fault_server.url, breaker_failures=3, breaker_reset_s=60))
    try:
        for i in range(3):
            with pytest.raises(LLMTransportError):
                await call(client, text=f"q{i}")
        with pytest.raises(CircuitOpen):
            await call(client, text="another")
    finally:
        await client.aclose()
    assert len(fault_server.requests) == 3


async def test_breaker_half_opens_after_reset(fault_server: FaultServer) -> None:
    fault_server.script(status(400))
    fault_server.default = reply(GOOD)
    client = LLMClient(config(fault_server.url, breaker_failures=1, breaker_reset_s=0.05))
    try:
        with pytest.raises(LLMTransportError):
            await call(client, text="a")
        with pytest.raises(CircuitOpen):
            await call(client, text="b")
        await anyio.sleep(0.06)
        obj, _ = await call(client, text="c")
    finally:
        await client.aclose()
    assert obj == SearchIntent(**GOOD)


async def test_concurrent_identical_calls_share_one_request(fault_server: FaultServer) -> None:
    fault_server.default = reply(GOOD, delay=0.1)
    client = LLMClient(config(fault_server.url))
    try:
        results = await gather(*((0.0, lambda: call(client)) for _ in range(20)))
        again, cached = await call(client)
    finally:
        await client.aclose()
    assert all(obj == SearchIntent(**GOOD) for obj, _ in results)
    assert cached is True and again == SearchIntent(**GOOD)
    assert len(fault_server.requests) == 1
    await wait_idle(client)


async def test_cache_returns_copies_and_respects_prompt_version(fault_server: FaultServer) -> None:
    fault_server.default = reply(GOOD)
    client = LLMClient(config(fault_server.url))
    try:
        first, _ = await call(client)
        first.color = "mutated by a view"
        second, cached = await call(client)
        v2 = PROMPT.model_copy(update={"version": PROMPT.version + "-next"})
        _, cached_v2 = await client.structured(
            SearchIntent, v2, "red shoes", Deadline(0.5), CallStats()
        )
    finally:
        await client.aclose()
    assert cached and second.color == "red"
    assert cached_v2 is False
    assert len(fault_server.requests) == 2


async def test_joiners_and_cache_never_share_a_mutable_answer(fault_server: FaultServer) -> None:
    """Single-flight joiners each get their own object: a view that mutates its intent (a
    field, or a list inside it in place) changes neither another caller's nor the cache's."""
    from schemas import Summary

    fault_server.default = reply({"summary": "s", "tags": ["a", "b"]}, delay=0.1)
    client = LLMClient(config(fault_server.url))
    prompt = default_prompt(Summary, "summary")

    async def one() -> Any:
        obj, _ = await client.structured(Summary, prompt, "t", Deadline(0.5), CallStats())
        obj.tags.append("mutated")
        obj.summary = "mutated"
        return obj

    async def flat() -> Any:
        obj, _ = await call(client)
        obj.color = "mutated"
        return obj

    try:
        summaries = await gather(*((0.0, one) for _ in range(5)))
        fault_server.default = reply(GOOD, delay=0.1)
        intents = await gather(*((0.0, flat) for _ in range(5)))
        cached_summary, hit = await client.structured(
            Summary, prompt, "t", Deadline(0.5), CallStats()
        )
        cached_intent, intent_hit = await call(client)
    finally:
        await client.aclose()
    assert len(fault_server.requests) == 2  # both groups did share one call each
    assert hit and cached_summary == Summary(summary="s", tags=["a", "b"])
    assert intent_hit and cached_intent == SearchIntent(**GOOD)
    assert all(s.tags == ["a", "b", "mutated"] for s in summaries)  # one append each, no more
    assert len({id(s) for s in summaries}) == 5 and len({id(s.tags) for s in summaries}) == 5
    assert len({id(i) for i in intents}) == 5
    await wait_idle(client)


def test_private_copy_is_shallow_only_for_immutable_values() -> None:
    """Atomic fields (and extras) are copied shallowly; anything mutable, anywhere in the
    model, takes the deep copy."""
    import datetime
    import enum

    from pydantic import BaseModel, ConfigDict

    from llm_middleware.llm.client import _private_copy

    class Size(enum.Enum):
        S = "s"

    class Flat(BaseModel):
        model_config = ConfigDict(extra="allow")
        name: str
        n: int
        when: datetime.date
        size: Size

    class Inner(BaseModel):
        tags: list[str]

    class Nested(BaseModel):
        inner: Inner

    class Sub(str):
        pass

    flat = Flat(name="x", n=1, when=datetime.date(2020, 1, 1), size=Size.S, more=[1])
    copy = _private_copy(flat)
    assert copy == flat and copy is not flat
    copy.more.append(2)  # type: ignore[attr-defined]
    assert flat.more == [1]  # type: ignore[attr-defined]  # a mutable extra: deep

    plain = Flat(name="x", n=1, when=datetime.date(2020, 1, 1), size=Size.S, other=2)
    shallow = _private_copy(plain)
    assert shallow is not plain and shallow.__dict__ is not plain.__dict__
    shallow.name = "y"
    assert plain.name == "x"

    nested = Nested(inner=Inner(tags=["a"]))
    deep = _private_copy(nested)
    assert deep.inner is not nested.inner and deep.inner.tags is not nested.inner.tags
    deep.inner.tags.append("b")
    assert nested.inner.tags == ["a"]

    odd = Flat.model_construct(name=Sub("x"), n=1, when=datetime.date(2020, 1, 1), size=Size.S)
    assert _private_copy(odd).name is not odd.name  # a str subclass is not trusted: deep


def test_render_reuses_the_fixed_part_only_for_the_same_prompt_and_schema() -> None:
    """The system text and examples are built once per prompt object and schema; each call
    still gets its own message dicts, its own input turn, and an edited prompt or another
    schema is rendered afresh."""
    from pydantic import BaseModel

    from llm_middleware.config import Prompt, PromptExample
    from llm_middleware.llm.prompts import render, schema_json

    prompt = Prompt(
        name="p",
        version="1",
        system="Extract. Schema: {schema}",
        user="Schema {schema}. Text: {input}",
        examples=[PromptExample(input="a red hat", output={"color": "red"})],
    )
    first = render(prompt, SearchIntent, "blue shoes")
    second = render(prompt, SearchIntent, "green bag")
    schema_text = json.dumps(schema_json(SearchIntent), separators=(",", ":"))
    assert [m["role"] for m in first] == ["system", "user", "assistant", "user"]
    assert first[0]["content"] == f"Extract. Schema: {schema_text}"
    assert "a red hat" in first[1]["content"] and schema_text in first[1]["content"]
    assert json.loads(first[2]["content"]) == {"category": None, "color": "red", "max_price": None}
    assert "blue shoes" in first[3]["content"] and "green bag" in second[3]["content"]
    assert first[:3] == second[:3] and first[3] != second[3]
    assert all(a is not b for a, b in zip(first, second, strict=True))
    first[0]["content"] = "mutated"
    first.append({"role": "user", "content": "more"})
    assert render(prompt, SearchIntent, "green bag") == second

    edited = prompt.model_copy(update={"system": "Other. {schema}"})
    assert render(edited, SearchIntent, "x")[0]["content"] == f"Other. {schema_text}"

    class Other(BaseModel):
        size: int | None = None

    other = render(prompt, Other, "x")
    other_text = json.dumps(schema_json(Other), separators=(",", ":"))
    assert other[0]["content"] == f"Extract. Schema: {other_text}"
    assert json.loads(other[2]["content"]) == {"size": None}


def test_wire_body_is_the_json_of_the_body_for_every_provider_shape() -> None:
    """The request body, its fixed end encoded once per provider and schema, is byte for byte
    the compact JSON of the request's ``body``; another provider, schema or message list
    changes it."""
    from pydantic import BaseModel

    from llm_middleware.llm.prompts import render, schema_json
    from llm_middleware.llm.providers import build_request

    class Other(BaseModel):
        size: int | None = None

    shapes: list[dict[str, Any]] = [
        {"kind": "openai", "base_url": "http://127.0.0.1:1", "model": "m"},
        {"kind": "openai", "base_url": "http://127.0.0.1:1", "model": "m", "temperature": 0.5},
        {"kind": "openai", "base_url": "http://127.0.0.1:1", "model": "é", "max_tokens": 9},
        {"kind": "openai", "base_url": "http://127.0.0.1:1", "model": "m", "dialect": "none"},
        {
            "kind": "openai",
            "base_url": "http://127.0.0.1:1",
            "model": "m",
            "dialect": "json_object",
            "temperature": 0.0,
        },  # fmt: skip
        {"kind": "anthropic", "base_url": "http://127.0.0.1:1", "model": "m"},
    ]
    seen: set[bytes] = set()
    for shape in shapes:
        provider = load_config({"providers": [shape]}).providers[0]
        for schema in (SearchIntent, Other):
            for text in ("red shoes", 'quote " and ü'):
                messages = render(PROMPT, schema, text)
                for _ in range(2):  # the second call takes the stored end
                    request = build_request(
                        provider, messages, schema.__name__, schema_json(schema)
                    )
                    expected = json.dumps(request.body, separators=(",", ":"), ensure_ascii=False)
                    assert request.content == expected.encode()
                    assert json.loads(request.content) == request.body
                seen.add(request.content)
    # Every provider, schema and text differs, but for dialect "none", which sends no schema
    # (and the default prompt's messages do not name it): its two schemas give the same bytes.
    assert len(seen) == len(shapes) * 2 * 2 - 2


async def test_cache_key_covers_the_whole_prompt_and_schema(fault_server: FaultServer) -> None:
    """Editing the examples, the system text or the schema misses the cache even when the
    prompt's name and version stay the same; an equal prompt built anew hits it."""
    from pydantic import BaseModel, Field

    from llm_middleware.config import Prompt, PromptExample

    def example(color: str) -> PromptExample:
        return PromptExample(input="red hat", output={"color": color})

    fault_server.default = reply(GOOD)
    base = Prompt(name="p", version="1", system="Extract.", examples=[])
    same = Prompt(name="p", version="1", system="Extract.", examples=[])
    variants = [
        base.model_copy(update={"system": "Extract, carefully."}),
        base.model_copy(update={"examples": [example("red")]}),
        base.model_copy(update={"examples": [example("blue")]}),  # one example's answer edited
        base.model_copy(update={"user": "Text: {input}"}),
    ]

    class Wider(BaseModel):  # one more field, under the same qualified name
        category: str | None = None
        color: str | None = None
        max_price: float | None = Field(default=None, ge=0)
        size: int | None = None

    Wider.__module__, Wider.__qualname__ = SearchIntent.__module__, SearchIntent.__qualname__

    client = LLMClient(config(fault_server.url))
    try:

        async def ask(prompt: Prompt, schema: type[BaseModel] = SearchIntent) -> bool:
            _, cached = await client.structured(
                schema, prompt, "red shoes", Deadline(0.5), CallStats()
            )
            return cached

        assert await ask(base) is False
        assert await ask(same) is True  # another object, same content: the same entry
        misses = [await ask(p) for p in variants]
        assert await ask(base, Wider) is False  # the schema changed, not its name
        assert await ask(variants[1]) is True  # each variant was cached under its own key
    finally:
        await client.aclose()
    assert misses == [False] * len(variants)
    assert len(fault_server.requests) == 1 + len(variants) + 1


async def test_in_flight_cap_sheds_at_once(fault_server: FaultServer) -> None:
    fault_server.default = hang_before_headers()
    client = LLMClient(config(fault_server.url, max_in_flight=2))
    try:

        async def one_too_many() -> float:
            started = time.monotonic()
            with pytest.raises(Shed):
                await call(client, text="one too many")
            return time.monotonic() - started

        *hanging, shed_s = await gather(
            (0.0, lambda: call(client, text="q0", budget=0.3)),
            (0.0, lambda: call(client, text="q1", budget=0.3)),
            (0.05, one_too_many),
        )
        assert all(isinstance(r, LLMTimeout) for r in hanging)
    finally:
        await client.aclose()
    assert shed_s < 0.05
    await wait_idle(client)


async def test_tokens_and_calls_are_counted(fault_server: FaultServer) -> None:
    fault_server.script(reply(GOOD, usage={"prompt_tokens": 40, "completion_tokens": 9}))
    client = LLMClient(config(fault_server.url))
    stats = CallStats()
    try:
        await client.structured(SearchIntent, PROMPT, "x", Deadline(0.5), stats)
    finally:
        await client.aclose()
    assert (stats.llm_calls, stats.prompt_tokens, stats.completion_tokens) == (1, 40, 9)
    assert stats.models == ["m0"]


async def test_api_key_from_env_is_sent_and_never_logged(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test-secret-123456")
    fault_server.script(reply(GOOD))
    cfg = load_config(
        {
            "providers": [
                {
                    "kind": "openai",
                    "base_url": fault_server.url,
                    "model": "m",
                    "api_key_env": "TEST_LLM_KEY",
                }
            ]
        }  # fmt: skip
    )
    client = LLMClient(cfg)
    try:
        await call(client)
    finally:
        await client.aclose()
    assert fault_server.requests[0].headers["authorization"] == "Bearer sk-test-secret-123456"
    assert "sk-test-secret" not in repr(cfg) + capsys.readouterr().out


async def test_anthropic_messages_wire(anthropic_fault_server: FaultServer) -> None:
    anthropic_fault_server.script(reply(GOOD))
    cfg = load_config(
        {
            "providers": [
                {
                    "kind": "anthropic",
                    "base_url": anthropic_fault_server.url,
                    "model": "claude",
                    "api_key_env": None,
                }
            ]
        }  # fmt: skip
    )
    client = LLMClient(cfg)
    try:
        obj, _ = await call(client)
    finally:
        await client.aclose()
    assert obj == SearchIntent(**GOOD)
    sent = anthropic_fault_server.requests[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.json["tool_choice"] == {"type": "tool", "name": "output"}
    assert sent.json["tools"][0]["input_schema"]["title"] == "SearchIntent"
    assert all(m["role"] != "system" for m in sent.json["messages"])


async def test_breaker_opens_for_a_provider_that_hangs(fault_server: FaultServer) -> None:
    fault_server.default = hang_before_headers()
    client = LLMClient(config(fault_server.url, breaker_failures=1, breaker_reset_s=60))
    breaker = client.breakers[client.providers[0].label]
    try:
        for i in range(3):  # cut short by a tight budget: not held against the provider
            with pytest.raises(LLMTimeout):
                await call(client, text=f"short{i}", budget=0.05)
        await wait_idle(client)
        assert breaker.state == "closed"
        with pytest.raises(LLMTimeout):  # no answer within a whole second: that is failing
            await call(client, text="q", budget=1.0)
        await wait_idle(client)
        assert breaker.state == "open"
        started = time.monotonic()
        with pytest.raises(CircuitOpen):
            await call(client, text="fails fast now", budget=1.0)
        assert time.monotonic() - started < 0.02
    finally:
        await client.aclose()


async def test_a_patient_caller_is_not_cut_short_by_a_hasty_one(fault_server: FaultServer) -> None:
    # A 50 ms caller starts the call; a 1 s caller joins it. The shared call keeps the
    # deadline it started with (joiners never extend it: a stream of joiners could keep it
    # alive for ever); when it runs out, the patient caller starts a fresh call of its own.
    fault_server.default = reply(GOOD, delay=0.3)
    client = LLMClient(config(fault_server.url))
    try:
        hasty, patient = await gather(
            (0.0, lambda: call(client, budget=0.05)), (0.01, lambda: call(client, budget=1.0))
        )
        assert isinstance(hasty, LLMTimeout)
        obj, _ = patient
    finally:
        await client.aclose()
    assert obj == SearchIntent(**GOOD)
    assert len(fault_server.requests) == 2


async def late_sleep(seconds: float) -> float:
    """The reference: how late a plain sleep of ``seconds`` ends under the same load."""
    started = time.monotonic()
    await anyio.sleep(seconds)
    return time.monotonic() - started - seconds


async def timed(make: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        value: Any = await make()
    except Exception as exc:
        value = exc
    return time.monotonic() - started, value


async def test_single_flight_is_not_starved_by_a_dripping_call(fault_server: FaultServer) -> None:
    # The first call for a text drips for ever; identical requests keep arriving. They must
    # not all join (and keep alive) that one call: once it runs out, a caller with time left
    # starts afresh and is answered; distinct texts meanwhile keep their budget too.
    fault_server.script(drip(GOOD, interval=0.05))
    fault_server.default = reply(GOOD, delay=0.02)
    client = LLMClient(config(fault_server.url, breaker_failures=10_000))
    budget = 0.2
    try:
        calls: list[tuple[float, Callable[[], Awaitable[Any]]]] = []
        for i in range(16):
            calls.append((i * 0.04, lambda: timed(lambda: call(client, "same", budget))))
            calls.append(
                (i * 0.04 + 0.01, lambda i=i: timed(lambda: call(client, f"d{i}", budget)))
            )
        calls.append((0.0, lambda: late_sleep(budget)))
        *results, lateness = await gather(*calls)
    finally:
        await client.aclose()
    same, distinct = results[0::2], results[1::2]
    # Every request keeps its budget (plus what a plain sleep of the budget overran by).
    slack = max(lateness, 0.0) + 0.02
    assert all(took <= budget + slack for took, _ in results), [t for t, _ in results]
    assert all(isinstance(v, tuple) for _, v in distinct), distinct
    # The first identical request (and those that joined it too late to restart) time out;
    # every identical request that arrived after the first budget is answered.
    arrivals = [i * 0.04 for i in range(16)]
    late_same = [v for (_, v), at in zip(same, arrivals, strict=True) if at >= budget]
    assert late_same and all(isinstance(v, tuple) for v in late_same)
    assert isinstance(same[0][1], LLMTimeout)


async def test_error_answers_reuse_their_connection(fault_server: FaultServer) -> None:
    # An error answer's (bounded) body is read, so its connection goes back to the pool.
    fault_server.default = status(500)
    client = LLMClient(config(fault_server.url, breaker_failures=10_000))
    try:
        for i in range(40):
            # A budget far above the retries' backoff: this is about connections, and on a
            # busy machine three attempts could outlast the default 0.5 s (an LLMTimeout).
            with pytest.raises(LLMTransportError):
                await call(client, text=f"q{i}", budget=10.0)
    finally:
        await client.aclose()
    assert len(fault_server.requests) >= 40  # (each call retried once: max_retries default)
    assert fault_server.connections <= 5


async def test_breaker_opens_on_a_hanging_provider_within_failures_budgets(
    fault_server: FaultServer,
) -> None:
    # A 200 ms budget is not "tiny": no answer in it counts. After `breaker_failures` calls
    # that waited their whole budget, the next ones fail at once.
    fault_server.default = hang_before_headers()
    client = LLMClient(config(fault_server.url, breaker_failures=3, breaker_reset_s=60))
    took = []
    try:
        for i in range(6):
            started = time.monotonic()
            with pytest.raises((LLMTimeout, CircuitOpen)):
                await call(client, text=f"q{i}", budget=0.2)
            took.append(time.monotonic() - started)
    finally:
        await client.aclose()
    assert all(t >= 0.15 for t in took[:3])
    assert all(t < 0.05 for t in took[3:]), took


async def test_api_key_with_control_characters_is_never_sent(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-abc\r\nX-Injected: 1")
    fault_server.default = reply(GOOD)
    cfg = load_config(
        {
            "providers": [
                {
                    "kind": "openai",
                    "base_url": fault_server.url,
                    "model": "m",
                    "api_key_env": "TEST_LLM_KEY",
                }
            ]
        }  # fmt: skip
    )
    client = LLMClient(cfg)
    try:
        with pytest.raises(LLMConfigError, match="TEST_LLM_KEY") as raised:
            await call(client)
    finally:
        await client.aclose()
    assert raised.value.reason == "bad_api_key"
    assert fault_server.requests == []
    assert "sk-abc" not in str(raised.value) + capsys.readouterr().out


def test_breaker_counts_only_failures_with_no_success_meanwhile() -> None:
    # Under concurrency, "consecutive" is in time: a call that failed while the provider
    # answered another one successfully is no evidence the provider is down.
    breaker = CircuitBreaker(failures=2, reset_s=60)
    started = time.monotonic()
    breaker.success()  # another call succeeded after `started`
    breaker.failure(started)
    breaker.failure(started)
    assert breaker.state == "closed"
    later = time.monotonic()
    breaker.failure(later)
    breaker.failure(later)
    assert breaker.state == "open"


async def test_request_on_the_wire_and_kept_alive(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client writes its HTTP request itself (httpcore, no httpx): what the provider gets.
    monkeypatch.setenv("TEST_WIRE_KEY", "sk-wire")
    fault_server.default = reply(GOOD)
    provider = {
        "kind": "openai",
        "base_url": fault_server.url + "/",  # (a trailing slash is dropped)
        "model": "wire",
        "api_key_env": "TEST_WIRE_KEY",
        "headers": {"x-team": "search"},
    }
    client = LLMClient(load_config({"providers": [provider]}))
    try:
        for i in range(3):
            obj, _ = await call(client, text=f"wire {i}")
            assert obj == SearchIntent(**GOOD)
    finally:
        await client.aclose()
    first = fault_server.requests[0]
    url = urllib.parse.urlsplit(fault_server.url)
    assert (first.method, first.path) == ("POST", url.path + "/chat/completions")
    assert first.headers["host"] == url.netloc
    assert first.headers["content-length"] == str(len(first.body))
    assert first.headers["content-type"] == "application/json"
    assert first.headers["authorization"] == "Bearer sk-wire"
    assert first.headers["x-team"] == "search"
    assert "accept-encoding" not in first.headers  # the body is read raw: never compressed
    assert first.json is not None and first.json["model"] == "wire"
    assert len(fault_server.requests) == 3
    assert fault_server.connections == 1  # one keep-alive connection for sequential calls


async def test_environment_proxy_is_used(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # HTTP_PROXY names the fault server: it receives the absolute-form request for the
    # provider's host, which it never resolves.
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", fault_server.url)
    fault_server.default = reply(GOOD)
    client = LLMClient(config("http://llm.invalid:8123/v1"))
    try:
        obj, _ = await call(client, budget=2.0)
    finally:
        await client.aclose()
    assert obj == SearchIntent(**GOOD)
    assert fault_server.requests[0].path == "http://llm.invalid:8123/v1/chat/completions"


def test_environment_proxy_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_middleware.llm.client import _environment_proxy

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert _environment_proxy("https://api.example.com/v1/messages") == ""
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")  # no scheme: http:// assumed
    assert _environment_proxy("https://api.example.com/v1") == "http://proxy.corp:3128"
    assert _environment_proxy("http://api.example.com/v1") == ""  # only for https
    monkeypatch.setenv("ALL_PROXY", "http://all.corp:8080")
    assert _environment_proxy("http://api.example.com/v1") == "http://all.corp:8080"
    monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.1")
    assert _environment_proxy("https://api.example.com/v1") == ""
    assert _environment_proxy("http://127.0.0.1:9/v1") == ""
    assert _environment_proxy("https://api.other.org/v1") == "http://proxy.corp:3128"


def test_retry_jitter_leaves_the_global_random_state_alone() -> None:
    import random

    from llm_middleware.llm.client import _backoff

    state = random.getstate()
    delays = {_backoff(1) for _ in range(20)}
    assert random.getstate() == state
    assert len(delays) > 1 and all(0.05 <= d <= 0.1 for d in delays)  # jittered, in range
