"""The LLM client: cache, single-flight, in-flight cap, retries, fallback chain, circuit breaker.

Every wait is bounded by the request's ``Deadline``; a provider timeout is only a per-attempt
cap, never the guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import os
import random
import ssl
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio  # noqa: F401  (httpx loads these lazily: at start-up here, not on the loop
import certifi
import h11  # noqa: F401   during the first requests)
import httpx
from cachetools import TTLCache
from pydantic import BaseModel, ValidationError

from ..config import Anthropic, Config, OpenAICompatible, Prompt
from ..deadline import Deadline
from ..inline import need_loop
from .errors import (
    CircuitOpen,
    LLMError,
    LLMInvalidOutput,
    LLMTimeout,
    LLMTransportError,
    Shed,
)
from .prompts import render, schema_json
from .providers import WireAnswer, build_request, parse_answer

M = TypeVar("M", bound=BaseModel)


class _Shared:
    """One upstream call shared by every concurrent caller with the same input. Its deadline
    is its own and grows to the latest caller's, so a tight-budget caller that started it
    never cuts a patient one short."""

    __slots__ = ("task", "deadline", "timeout")

    def __init__(self, deadline: Deadline) -> None:
        self.task: asyncio.Task[BaseModel | LLMError] | None = None
        self.deadline = deadline
        self.timeout: asyncio.Timeout | None = None

    def extend_to(self, end: float) -> None:
        if end <= self.deadline.end:
            return
        self.deadline.end = end
        if self.timeout is not None and not self.timeout.expired():
            loop = asyncio.get_running_loop()
            self.timeout.reschedule(loop.time() + self.deadline.remaining() + _TEARDOWN_GRACE_S)


ProviderConfig = OpenAICompatible | Anthropic

_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_MIN_ATTEMPT_S = 0.005  # not worth opening a request with less time than this
_TEARDOWN_GRACE_S = 0.02
_BREAKER_MIN_BUDGET_S = 0.9


@dataclass
class CallStats:
    """What one request spent on LLM calls (logged; never contains request values)."""

    llm_calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    models: list[str] = field(default_factory=list)
    prompt_versions: list[str] = field(default_factory=list)


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures; after ``reset_s`` lets one trial through."""

    __slots__ = ("failures", "reset_s", "_count", "_opened_at", "_trial")

    def __init__(self, failures: int, reset_s: float) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self._count = 0
        self._opened_at: float | None = None
        self._trial = False

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if time.monotonic() - self._opened_at >= self.reset_s and not self._trial:
            self._trial = True  # half-open: one call decides
            return True
        return False

    def release_trial(self) -> None:
        self._trial = False

    def success(self) -> None:
        self._count = 0
        self._opened_at = None
        self._trial = False

    def failure(self) -> None:
        self._count += 1
        if self._trial or self._count >= self.failures:
            self._opened_at = time.monotonic()
        self._trial = False

    @property
    def state(self) -> str:
        return "closed" if self._opened_at is None else "open"


class LLMClient:
    def __init__(
        self, config: Config, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.providers: Sequence[ProviderConfig] = tuple(config.providers)
        self.max_in_flight = config.max_in_flight
        self.max_response_bytes = config.max_llm_response_bytes
        self._transport = transport
        self._chain_id = tuple(p.label for p in self.providers)
        self._cache: TTLCache[tuple[Any, ...], BaseModel] | None = (
            TTLCache(maxsize=config.cache_size, ttl=config.cache_ttl_s)
            if config.cache_size and config.cache_ttl_s
            else None
        )
        # Loading the CA bundle takes milliseconds: once, at start-up, not on the event loop
        # in the middle of the first requests.
        self._ssl = ssl.create_default_context(cafile=certifi.where())
        self._lock = threading.Lock()
        self._in_flight = 0
        self.breakers = {
            p.label: CircuitBreaker(config.breaker_failures, config.breaker_reset_s)
            for p in self.providers
        }
        # httpx clients and single-flight tables are bound to one event loop each. Plain dicts
        # (a client's sockets refer to its loop, so weak keys would never die), pruned of
        # closed loops whenever a new loop shows up.
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._pending: dict[asyncio.AbstractEventLoop, dict[tuple[Any, ...], _Shared]] = {}
        _CLIENTS.add(self)

    def _after_fork(self) -> None:
        # Only the forking thread survives: calls in flight, the lock's holder and the
        # parent's loops are gone in the child.
        self._lock = threading.Lock()
        self._in_flight = 0
        self._clients = {}
        self._pending = {}

    def _pending_for(self, loop: asyncio.AbstractEventLoop) -> dict[tuple[Any, ...], _Shared]:
        pending = self._pending.get(loop)
        if pending is None:
            self._prune_closed_loops()
            pending = self._pending[loop] = {}
        return pending

    def _prune_closed_loops(self) -> None:
        for loop in [loop for loop in self._pending if loop.is_closed()]:
            del self._pending[loop]
        for loop in [loop for loop in self._clients if loop.is_closed()]:
            del self._clients[loop]  # its sockets died with the loop

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- public -------------------------------------------------------------------------------

    async def structured(
        self,
        schema: type[M],
        prompt: Prompt,
        text: str,
        deadline: Deadline,
        stats: CallStats,
        *,
        keep_going_s: float = 0.0,
    ) -> tuple[M, bool]:
        """Return ``(object, from_cache)``; raise an ``LLMError`` subclass otherwise.

        With ``keep_going_s``, a call the caller stops waiting for at its deadline goes on for
        up to that long in the background and caches its result (stale-while-revalidate)."""
        key = (self._chain_id, prompt.name, prompt.version, _qualname(schema), text)
        stats.prompt_versions.append(f"{prompt.name}@{prompt.version}")
        if self._cache is not None:
            with self._lock:
                hit = self._cache.get(key)
            if hit is not None:
                stats.cache_hits += 1
                return hit.model_copy(deep=True), True  # type: ignore[return-value]

        need_loop()  # not cached: an inline run stops here and goes to the loop
        loop = asyncio.get_running_loop()
        pending = self._pending_for(loop)
        shared = pending.get(key)
        if shared is not None and shared.task is not None:
            shared.extend_to(deadline.end)
            task = shared.task
        else:
            with self._lock:
                if self._in_flight >= self.max_in_flight:
                    raise Shed(f"{self._in_flight} LLM calls in flight", reason="in_flight_cap")
                self._in_flight += 1
            shared = _Shared(Deadline(deadline.remaining() + keep_going_s, reserve_s=0.0))
            task = shared.task = loop.create_task(
                self._call_chain(schema, prompt, text, shared, stats)
            )
            pending[key] = shared
            task.add_done_callback(functools.partial(self._done, key=key, pending=pending))
        # Shielded: a caller that gives up (its own deadline, a disconnect) does not cancel the
        # shared call, which ends by its own deadline anyway.
        remaining = deadline.remaining()
        if remaining <= 0:
            raise LLMTimeout("no time left", reason="budget_exhausted")
        result: BaseModel | LLMError | None = None
        try:
            async with asyncio.timeout(remaining):
                result = await asyncio.shield(task)
        except TimeoutError:
            pass  # raised below, outside the handler: no traceback kept alive through context
        if result is None:
            raise LLMTimeout("budget exhausted waiting for the LLM", reason="deadline")
        if isinstance(result, LLMError):  # shared by every caller: each raises its own
            raise type(result)(str(result), reason=result.reason)
        return result.model_copy(deep=True), False  # type: ignore[return-value]

    async def aclose(self) -> None:
        """Cancel this loop's calls still going on in the background and close its httpx
        client (others are closed by their own loops): shutdown never waits on a provider."""
        loop = asyncio.get_running_loop()
        for shared in list(self._pending.get(loop, {}).values()):
            if shared.task is not None:
                shared.task.cancel()
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()

    def close(self, timeout: float = 5.0) -> None:
        """Close every loop's httpx client from synchronous code (tests, shutdown hooks).
        In async code use ``aclose()``: a loop cannot wait on itself."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, client in list(self._clients.items()):
            if loop is current:
                continue
            self._clients.pop(loop, None)
            if loop.is_closed():
                continue
            if loop.is_running():
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout)
            else:
                loop.run_until_complete(client.aclose())

    # -- internals ----------------------------------------------------------------------------

    def _done(
        self,
        task: asyncio.Task[BaseModel | LLMError],
        *,
        key: tuple[Any, ...],
        pending: dict[tuple[Any, ...], _Shared],
    ) -> None:
        with self._lock:
            self._in_flight -= 1
        shared = pending.get(key)
        if shared is not None and shared.task is task:
            del pending[key]
        if task.cancelled():
            return
        exc = task.exception()  # also marks an unexpected exception retrieved
        if exc is not None:
            exc.__traceback__ = exc.__context__ = exc.__cause__ = None
            return
        result = task.result()
        if isinstance(result, BaseModel) and self._cache is not None:
            with self._lock:
                self._cache[key] = result

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                transport=self._transport,
                verify=self._ssl,
                limits=httpx.Limits(
                    max_connections=self.max_in_flight * 2,
                    max_keepalive_connections=self.max_in_flight,
                ),
                follow_redirects=False,
            )
            self._clients[loop] = client
        return client

    async def _call_chain(
        self,
        schema: type[BaseModel],
        prompt: Prompt,
        text: str,
        shared: _Shared,
        stats: CallStats,
    ) -> BaseModel | LLMError:
        deadline = shared.deadline  # grows when a later caller joins
        messages = render(prompt, schema, text)
        last: LLMError | None = None
        trying: CircuitBreaker | None = None
        # A call cut short by a budget under a second says more about the budget than about
        # the provider: such timeouts are not held against its breaker.
        judged = deadline.remaining() >= _BREAKER_MIN_BUDGET_S
        try:
            # The shared call's timeouts fire a little after its first caller's deadline:
            # callers stop waiting first and answer their requests, and tearing down the
            # upstream connection happens off their clock. No attempt starts after the deadline.
            async with asyncio.timeout(deadline.remaining() + _TEARDOWN_GRACE_S) as cm:
                shared.timeout = cm
                for provider in self.providers:
                    if deadline.remaining() < _MIN_ATTEMPT_S:
                        break
                    breaker = trying = self.breakers[provider.label]
                    if not breaker.allow():
                        last = last or CircuitOpen(f"{provider.label} circuit open")
                        continue
                    try:
                        result = await self._call_provider(
                            provider, schema, messages, deadline, stats
                        )
                    except LLMInvalidOutput as exc:
                        breaker.success()  # the provider works; the model got it wrong
                        last = exc
                    except LLMTransportError as exc:
                        breaker.failure()
                        last = exc
                    except LLMTimeout as exc:
                        breaker.failure() if judged else breaker.release_trial()
                        last = exc
                    except asyncio.CancelledError:
                        breaker.release_trial()  # a cut-short trial decides nothing
                        raise
                    except Exception:
                        breaker.failure()  # never leave a half-open breaker stuck
                        raise
                    else:
                        breaker.success()
                        return result
        except TimeoutError:
            if trying is not None:
                # A provider that hangs past a deadline of a second or more is failing.
                trying.failure() if judged else trying.release_trial()
            last = None
        # Returned, not raised: an exception stored on the task would keep its traceback, this
        # frame, `shared` and the asyncio.Timeout - and through them the task - in a cycle only
        # a full GC frees (pausing the loop for tens of ms under load).
        error = last if last is not None else LLMTimeout("budget exhausted", reason="deadline")
        error.__traceback__ = error.__context__ = error.__cause__ = None
        return error

    async def _call_provider(
        self,
        provider: ProviderConfig,
        schema: type[BaseModel],
        messages: list[dict[str, str]],
        deadline: Deadline,
        stats: CallStats,
    ) -> BaseModel:
        schema_dict = schema_json(schema)
        attempt = 0
        corrected = False
        while True:
            request = build_request(provider, messages, schema.__name__, schema_dict)
            remaining = deadline.remaining()
            if remaining < _MIN_ATTEMPT_S:
                raise LLMTimeout("budget exhausted", reason="deadline")
            stats.llm_calls += 1
            stats.models.append(provider.model)
            try:
                payload = await self._post(
                    request.url,
                    request.headers,
                    request.body,
                    # The provider's own cap per attempt; the deadline is enforced around the
                    # whole call (and moves when a more patient caller joins).
                    provider.timeout_ms / 1000,
                )
            except _Retryable as exc:
                error = LLMTimeout if exc.reason == "provider_timeout" else LLMTransportError
                if attempt >= provider.max_retries:
                    raise error(str(exc), reason=exc.reason) from None
                delay = exc.retry_after if exc.retry_after is not None else _backoff(attempt)
                if delay + _MIN_ATTEMPT_S >= deadline.remaining():
                    raise error(f"{exc.reason}; no time left to retry", reason=exc.reason) from None
                attempt += 1
                stats.retries += 1
                await asyncio.sleep(delay)
                continue
            answer: WireAnswer | None = None
            try:
                answer = parse_answer(provider, payload)
                stats.prompt_tokens += answer.prompt_tokens
                stats.completion_tokens += answer.completion_tokens
                return schema.model_validate(answer.data)
            except (LLMInvalidOutput, ValidationError) as exc:
                problem = _describe(exc)
                if corrected or deadline.remaining() < _MIN_ATTEMPT_S:
                    raise LLMInvalidOutput(problem, reason="schema_mismatch") from None
                corrected = True
                messages = [
                    *messages,
                    {"role": "assistant", "content": answer.raw_text[:4000] if answer else ""},
                    {
                        "role": "user",
                        "content": "That reply was not a valid JSON object for the schema: "
                        f"{problem}. Reply with the corrected JSON object only.",
                    },
                ]

    async def _post(
        self, url: str, headers: dict[str, str], body: dict[str, Any], timeout: float
    ) -> bytes:
        client = self._http()
        try:
            async with client.stream(
                "POST", url, json=body, headers=headers, timeout=httpx.Timeout(timeout)
            ) as response:
                if response.status_code in _RETRY_STATUSES:
                    raise _Retryable(
                        f"http_{response.status_code}",
                        _retry_after(response.headers.get("retry-after")),
                    )
                if response.status_code >= 400:
                    raise LLMTransportError(
                        f"HTTP {response.status_code}", reason=f"http_{response.status_code}"
                    )
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
                    raise LLMTransportError("answer too large", reason="too_large")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise LLMTransportError("answer too large", reason="too_large")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TimeoutException:
            raise _Retryable("provider_timeout") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"transport_{type(exc).__name__}") from None


def _qualname(schema: type[BaseModel]) -> str:
    return f"{schema.__module__}.{schema.__qualname__}"


def _backoff(attempt: int) -> float:
    return min(2.0, 0.05 * 2.0**attempt) * (0.5 + random.random() / 2)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, float(when.timestamp()) - time.time())


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()[:5]
        ]
        return "; ".join(parts)
    return str(exc)


_CLIENTS: weakref.WeakSet[LLMClient] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for client in list(_CLIENTS):
        client._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
