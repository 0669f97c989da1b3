"""The LLM client: cache, single-flight, in-flight cap, retries, fallback chain, circuit breaker.

Every wait is bounded by the request's ``Deadline``; a provider timeout is only a per-attempt
cap, never the guard. Upstream calls run on the per-process background loop and are never
cancelled inside httpcore (see ``LLMClient``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import datetime
import decimal
import email.utils
import enum
import os
import random
import re
import ssl
import threading
import time
import urllib.request
import uuid
import weakref
from collections.abc import AsyncIterable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

# What httpcore and anyio import lazily, imported here at start-up: on a request's
# path it would cost tens of ms (and the import lock, which stalls every other thread).
import anyio._backends._asyncio  # noqa: F401
import certifi
import h11  # noqa: F401
import httpcore
import httpcore._async.connection_pool  # noqa: F401  (and httpcore's trio support)
import httpcore._backends.anyio  # noqa: F401
from cachetools import TTLCache
from pydantic import BaseModel, ValidationError

from ..bridge import BACKGROUND, wait_future
from ..config import Anthropic, Config, OpenAICompatible, Prompt
from ..deadline import Deadline
from ..inline import need_loop
from . import http11
from .backend import AsyncioBackend
from .errors import (
    CircuitOpen,
    LLMConfigError,
    LLMError,
    LLMInvalidOutput,
    LLMTimeout,
    LLMTransportError,
    Shed,
)
from .prompts import prompt_fingerprint, render, schema_json
from .providers import WireAnswer, WireRequest, build_request, parse_answer

M = TypeVar("M", bound=BaseModel)


ProviderConfig = OpenAICompatible | Anthropic

_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_MIN_ATTEMPT_S = 0.005  # not worth opening a request with less time than this
# An attempt's httpcore timeouts end this long after the shared call's deadline: its callers
# stop waiting first, and the attempt's end (a normal close) happens off their clock.
_GRACE_S = 0.02
_JOIN_GRACE_S = 0.002  # a joiner waits this long past the shared deadline for its answer
_USEFUL_RESTART_S = 0.02  # a joiner restarts a timed-out shared call with at least this left
_MAX_ROUNDS = 4
# Breaker: no answer for max(_HANG_FLOOR_S, _HANG_FACTOR x the provider's typical time) is a
# failure (a hang); a shorter wait is the caller's budget, not the provider's fault.
_HANG_FLOOR_S = 0.1
_HANG_FACTOR = 3.0
_ERROR_BODY_CAP = 64 * 1024
_CLOSE_TIMEOUT_S = 5.0
_KEEPALIVE_S = 5.0  # an idle pooled connection is closed after this (httpx's default)
_USER_AGENT = b"llm-middleware"
# The pools run on the background loop only, which is asyncio: no anyio layer under httpcore.
_NETWORK = AsyncioBackend()


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
    """Opens after ``failures`` consecutive failures; after ``reset_s`` lets one trial through.

    Consecutive means in time, under concurrency too: a failed call during which the provider
    answered another call successfully is no evidence that it is down (a provider that hangs
    on some calls and answers others stays in use), so it does not count."""

    __slots__ = ("failures", "reset_s", "_count", "_opened_at", "_trial", "_last_success")

    def __init__(self, failures: int, reset_s: float) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self._count = 0
        self._opened_at: float | None = None
        self._trial = False
        self._last_success = float("-inf")

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
        self._last_success = time.monotonic()

    def failure(self, started: float | None = None) -> None:
        """A failed call (that began at ``started``, if known)."""
        if not self._trial and started is not None and self._last_success >= started:
            return  # another call succeeded meanwhile: not consecutive
        self._count += 1
        if self._trial or self._count >= self.failures:
            self._opened_at = time.monotonic()
        self._trial = False

    @property
    def state(self) -> str:
        return "closed" if self._opened_at is None else "open"


class _Attempt:
    """The provider attempt a shared call is waiting on, for the breaker's judgement."""

    __slots__ = ("label", "started", "judged")

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.judged = False


class _Shared:
    """One upstream call shared by every concurrent caller with the same input.

    Its deadline ``end`` is fixed when it starts and never moves: a caller that joins waits
    at most until then (and its own deadline), and starts a fresh call if this one ends by
    timeout while it still has a useful amount of time."""

    __slots__ = ("future", "end", "attempt")

    def __init__(self, end: float) -> None:
        self.end = end
        self.future: concurrent.futures.Future[BaseModel | LLMError] = concurrent.futures.Future()
        self.attempt: _Attempt | None = None


class LLMClient:
    """Every upstream call runs as a task on the one per-process background loop
    (``bridge.BACKGROUND``), whatever loop or thread asked for it: one httpcore
    connection pool per client per process, nothing tied to a host's event loop, any async
    backend (asyncio, trio) on the caller's side.

    Callers stop *waiting* at their deadline; nothing is ever cancelled inside httpcore (which
    can leak a pool slot for good, httpcore #1093): each attempt is bounded by httpcore's own
    timeouts, set from what is left of the shared call's deadline, and by a deadline check
    between body chunks."""

    def __init__(self, config: Config) -> None:
        self.providers: Sequence[ProviderConfig] = tuple(config.providers)
        self.max_in_flight = config.max_in_flight
        self.max_response_bytes = config.max_llm_response_bytes
        self._chain_id = tuple(p.label for p in self.providers)
        self._cache: TTLCache[tuple[Any, ...], BaseModel] | None = (
            TTLCache(maxsize=config.cache_size, ttl=config.cache_ttl_s)
            if config.cache_size and config.cache_ttl_s
            else None
        )
        self._lock = threading.Lock()
        self._in_flight = 0
        self.breakers = {
            p.label: CircuitBreaker(config.breaker_failures, config.breaker_reset_s)
            for p in self.providers
        }
        # Typical time of a successful attempt per provider (EWMA): the breaker's yardstick.
        self._typical_s = {p.label: 0.0 for p in self.providers}
        self._pending: dict[tuple[Any, ...], _Shared] = {}
        # Connection pools, created on the background loop: our own small HTTP/1.1 client
        # for direct routes (httpx's and httpcore's request machinery cost more CPU than the
        # rest of an LLM call, issue 14), httpcore for routes through a proxy, by proxy URL.
        self._direct: http11.Pool | None = None
        self._proxied: dict[str, httpcore.AsyncConnectionPool] = {}
        self._routes: dict[str, _Route] = {}  # by provider URL
        # An instance dropped without close() still closes its pooled connections (on the
        # loop) rather than leave them to the GC's ResourceWarning.
        self._holder = _Holder()
        weakref.finalize(self, self._holder.close_soon)
        self._tasks: set[asyncio.Task[Any]] = set()  # background-loop tasks, for aclose()
        if self.providers:
            warm_up()
            BACKGROUND.loop()  # started now, not by the first request that needs it
        _CLIENTS.add(self)

    def _after_fork(self) -> None:
        # Only the forking thread survives: calls in flight, the lock's holder and the
        # parent's loop are gone in the child.
        self._lock = threading.Lock()
        self._in_flight = 0
        self._direct = None
        self._proxied = {}
        self._pending = {}
        self._tasks = set()

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

        Runs under any async backend. With ``keep_going_s``, a call the caller stops waiting
        for at its deadline goes on for up to that long and caches its result
        (stale-while-revalidate)."""
        # Everything that changes the prompt is in the key: text, examples, schema (not only
        # the version a user might forget to bump).
        key = (self._chain_id, _qualname(schema), prompt_fingerprint(prompt, schema), text)
        stats.prompt_versions.append(f"{prompt.name}@{prompt.version}")
        if self._cache is not None:
            with self._lock:
                hit = self._cache.get(key)
            if hit is not None:
                stats.cache_hits += 1
                return _private_copy(hit), True  # type: ignore[return-value]

        need_loop()  # not cached: an inline run stops here and goes to the loop
        for _ in range(_MAX_ROUNDS):
            remaining = deadline.remaining()
            if remaining <= 0:
                raise LLMTimeout("no time left", reason="budget_exhausted")
            shared = self._join_or_start(key, schema, prompt, text, deadline, stats, keep_going_s)
            # Wait for the shared call, never past its own fixed deadline (plus the moment its
            # answer takes to arrive) nor past ours.
            wait = min(remaining, shared.end - time.monotonic() + _JOIN_GRACE_S)
            result: BaseModel | LLMError | None = None
            with contextlib.suppress(TimeoutError):
                result = await wait_future(shared.future, wait)
            if isinstance(result, BaseModel):
                return _private_copy(result), False  # type: ignore[return-value]
            if result is None:
                self._judge_hang(shared, final=False)
            elif not isinstance(result, LLMTimeout):  # shared: each caller raises its own
                raise type(result)(str(result), reason=result.reason)
            # The shared call ran out of time. A caller with time to spare starts afresh
            # rather than time out because of somebody else's deadline.
            if deadline.remaining() < _USEFUL_RESTART_S:
                break
            with self._lock:
                if self._pending.get(key) is shared:
                    del self._pending[key]  # it goes on (bounded) but no one else joins it
        raise LLMTimeout("budget exhausted waiting for the LLM", reason="deadline")

    async def aclose(self) -> None:
        """Cancel the calls still going on in the background and close the connection pools:
        shutdown never waits on a provider. Callable from any loop or backend."""
        loop = BACKGROUND.current()
        if loop is None:
            return
        if BACKGROUND.on_thread():
            await self._aclose_here()
            return
        future = BACKGROUND.submit(self._aclose_here())
        with contextlib.suppress(TimeoutError, concurrent.futures.CancelledError):
            await wait_future(future, _CLOSE_TIMEOUT_S)

    def close(self, timeout: float = _CLOSE_TIMEOUT_S) -> None:
        """``aclose()`` for synchronous code (tests, shutdown hooks)."""
        loop = BACKGROUND.current()
        if loop is None or BACKGROUND.on_thread():
            return  # a loop cannot wait on itself; nothing to close if it never ran
        future = BACKGROUND.submit(self._aclose_here())
        with contextlib.suppress(Exception):
            future.result(timeout)

    # -- internals: on the caller's side --------------------------------------------------------

    def _join_or_start(
        self,
        key: tuple[Any, ...],
        schema: type[BaseModel],
        prompt: Prompt,
        text: str,
        deadline: Deadline,
        stats: CallStats,
        keep_going_s: float,
    ) -> _Shared:
        with self._lock:
            shared = self._pending.get(key)
            if shared is not None and not shared.future.done():
                return shared
            if self._in_flight >= self.max_in_flight:
                raise Shed(f"{self._in_flight} LLM calls in flight", reason="in_flight_cap")
            self._in_flight += 1
            shared = self._pending[key] = _Shared(deadline.end + keep_going_s)
        loop = BACKGROUND.loop()
        coro = self._run_shared(key, shared, schema, prompt, text, stats)
        if BACKGROUND.on_thread():
            _start_task(loop, coro)
        else:
            # A fresh context: nothing of the caller's (a trio run's marker, which httpcore
            # reads to choose its locks) reaches the call.
            loop.call_soon_threadsafe(_start_task, loop, coro, context=contextvars.Context())
        return shared

    def _judge_hang(self, shared: _Shared, *, final: bool) -> None:
        """A caller stopped waiting (``final=False``) or the attempt ended by timeout
        (``final=True``): an attempt that has had no answer for a generous share of what its
        provider usually takes (never less than ``_HANG_FLOOR_S``) is a failure. Shorter
        waits say more about the caller's budget than about the provider: not held against
        it; a half-open trial cut that short decides nothing."""
        now = time.monotonic()
        if not final and now < shared.end - _JOIN_GRACE_S:
            return  # the call goes on (stale-while-revalidate): it is judged when it ends
        with self._lock:
            attempt = shared.attempt
            if attempt is None or attempt.judged:
                return
            breaker = self.breakers[attempt.label]
            threshold = max(_HANG_FLOOR_S, _HANG_FACTOR * self._typical_s[attempt.label])
            # Silence is held against the provider only within the time it was given: on a
            # busy machine the end of a 50 ms call can be noticed after 100 ms, and that
            # lateness is ours, not the provider's.
            if min(now, shared.end) - attempt.started >= threshold:
                attempt.judged = True
                breaker.failure(attempt.started)
            elif final:
                attempt.judged = True
                breaker.release_trial()

    def _settle(self, shared: _Shared, outcome: str) -> None:
        with self._lock:
            attempt = shared.attempt
            if attempt is None or attempt.judged:
                return
            attempt.judged = True
            breaker = self.breakers[attempt.label]
            if outcome == "success":
                took = time.monotonic() - attempt.started
                typical = self._typical_s[attempt.label]
                typical = took if typical == 0.0 else 0.8 * typical + 0.2 * took
                self._typical_s[attempt.label] = typical
                breaker.success()
            elif outcome == "failure":
                breaker.failure(attempt.started)
            else:
                breaker.release_trial()

    # -- internals: on the background loop -------------------------------------------------------

    async def _run_shared(
        self,
        key: tuple[Any, ...],
        shared: _Shared,
        schema: type[BaseModel],
        prompt: Prompt,
        text: str,
        stats: CallStats,
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        result: BaseModel | LLMError = LLMTimeout("cancelled", reason="shutdown")
        try:
            result = await self._call_chain(schema, prompt, text, shared, stats)
        except BaseException as exc:  # a bug of ours, or shutdown: never a stuck waiter
            if not isinstance(exc, Exception):
                raise
            result = LLMTransportError(f"internal:{type(exc).__name__}", reason="internal")
        finally:
            with self._lock:
                self._in_flight -= 1
                if self._pending.get(key) is shared:
                    del self._pending[key]
                if isinstance(result, BaseModel) and self._cache is not None:
                    self._cache[key] = result
            if task is not None:
                self._tasks.discard(task)
            # Set last: a caller woken by it finds the cache filled and the slot released.
            shared.future.set_result(result)

    async def _aclose_here(self) -> None:
        # Close the pools first: calls in flight fail on their closed connections and end
        # normally; cancelling them inside httpcore could drop a socket unclosed.
        direct, self._direct = self._direct, None
        proxied, self._proxied = list(self._proxied.values()), {}
        self._holder.direct, self._holder.proxied = None, {}
        if direct is not None:
            direct.close_all()
        for pool in proxied:
            await pool.aclose()
        for task in list(self._tasks):
            task.cancel()

    async def _call_chain(
        self,
        schema: type[BaseModel],
        prompt: Prompt,
        text: str,
        shared: _Shared,
        stats: CallStats,
    ) -> BaseModel | LLMError:
        deadline = Deadline(0.0)
        deadline.end = shared.end  # fixed: nobody who joins moves it
        messages = render(prompt, schema, text)
        last: LLMError | None = None
        for provider in self.providers:
            if deadline.remaining() < _MIN_ATTEMPT_S:
                break
            breaker = self.breakers[provider.label]
            with self._lock:
                allowed = breaker.allow()
            if not allowed:
                last = last or CircuitOpen(f"{provider.label} circuit open")
                continue
            shared.attempt = _Attempt(provider.label)
            try:
                result = await self._call_provider(provider, schema, messages, deadline, stats)
            except LLMInvalidOutput as exc:
                self._settle(shared, "success")  # the provider works; the model got it wrong
                last = exc
            except LLMTimeout as exc:
                self._judge_hang(shared, final=True)
                last = exc
            except LLMConfigError as exc:
                self._settle(shared, "undecided")  # ours to fix, not the provider's failure
                last = exc
            except LLMError as exc:
                self._settle(shared, "failure")
                last = exc
            except BaseException:
                self._settle(shared, "undecided")  # never leave a half-open breaker stuck
                raise
            else:
                self._settle(shared, "success")
                return result
        # Returned, not raised: an exception stored on a future would keep its traceback
        # and frames alive in a cycle only a full GC frees.
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
        provider_timeout = provider.timeout_ms / 1000
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
                    request, min(provider_timeout, remaining + _GRACE_S), deadline
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

    async def _post(self, request: WireRequest, timeout: float, deadline: Deadline) -> bytes:
        """One HTTP attempt, ended only by its own timeouts (``timeout``: every phase) or by
        releasing the answer normally: never cancelled."""
        route = self._routes.get(request.url)
        if route is None:
            route = self._routes[request.url] = _Route.of(request.url)
        content = request.content
        try:
            if route.proxy:
                return await self._post_proxied(route, request, content, timeout, deadline)
            head = b"".join(
                (route.head, b"Content-Length: %d\r\n" % len(content), _encode(request.headers))
            )
            pool = self._direct
            if pool is None:
                pool = self._direct = self._holder.direct = http11.Pool(
                    ssl_context(), self.max_in_flight, _KEEPALIVE_S
                )
            response = await pool.send(route.origin, head, content, timeout)
            try:
                return await self._read(response, deadline)
            finally:
                # A fully read answer's connection goes back to the pool; any other is closed.
                pool.release(response)
        except httpcore.TimeoutException:
            raise _Retryable("provider_timeout") from None
        except (
            httpcore.NetworkError,
            httpcore.ProtocolError,
            httpcore.ProxyError,
            httpcore.UnsupportedProtocol,
        ) as exc:
            raise _Retryable(f"transport_{type(exc).__name__}") from None

    async def _post_proxied(
        self,
        route: _Route,
        request: WireRequest,
        content: bytes,
        timeout: float,
        deadline: Deadline,
    ) -> bytes:
        """Through the proxy the environment names: httpcore's pool (forwarding, tunnels)."""
        pool = self._proxied.get(route.proxy)
        if pool is None:
            pool = self._proxied[route.proxy] = self._holder.proxied[route.proxy] = (
                httpcore.AsyncConnectionPool(
                    ssl_context=ssl_context(),
                    proxy=httpcore.Proxy(route.proxy),
                    # Room for every call the in-flight cap lets through: no call waits in
                    # the pool, where a pool timeout can strand a freshly assigned connection
                    # for good (seen with httpcore 1.0.9 under contention).
                    max_connections=self.max_in_flight * 2,
                    max_keepalive_connections=self.max_in_flight,
                    keepalive_expiry=_KEEPALIVE_S,
                    network_backend=_NETWORK,
                )
            )
        headers = [
            (b"Host", route.host),
            (b"User-Agent", _USER_AGENT),
            (b"Accept", b"*/*"),
            (b"Content-Length", b"%d" % len(content)),
            *_pairs(request.headers),
        ]
        phases = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        response = await pool.handle_async_request(
            httpcore.Request(
                b"POST",
                httpcore.URL(request.url),
                headers=headers,
                content=content,
                extensions={"timeout": phases},
            )
        )
        try:
            return await self._read(_CoreAnswer(response), deadline)
        finally:
            await response.aclose()

    async def _read(self, response: _Answer, deadline: Deadline) -> bytes:
        status = response.status
        if status >= 400:
            # Read a bounded error body, so that the connection goes back to the pool
            # instead of being dropped (a new connection per error answer otherwise).
            await _drain(response, deadline)
            if status in _RETRY_STATUSES:
                retry_after = response.header(b"retry-after")
                raise _Retryable(
                    f"http_{status}",
                    _retry_after(retry_after.decode("latin-1") if retry_after else None),
                )
            raise LLMTransportError(f"HTTP {status}", reason=f"http_{status}")
        declared = response.header(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
            raise LLMTransportError("answer too large", reason="too_large")
        chunks: list[bytes] = []
        size = 0
        while chunk := await response.read_chunk():
            size += len(chunk)
            if size > self.max_response_bytes:
                raise LLMTransportError("answer too large", reason="too_large")
            chunks.append(chunk)
            if deadline.remaining() <= 0 and time.monotonic() > deadline.end + _GRACE_S:
                raise _Retryable("provider_timeout")  # a drip: leave, a normal close
        return b"".join(chunks)


class _Answer(Protocol):
    """What ``_read`` needs of an answer: ``http11.Response``, or httpcore's (proxied)."""

    @property
    def status(self) -> int: ...

    def header(self, name: bytes) -> bytes | None: ...

    async def read_chunk(self) -> bytes: ...


class _CoreAnswer:
    __slots__ = ("status", "_response", "_chunks")

    def __init__(self, response: httpcore.Response) -> None:
        self.status = response.status
        self._response = response
        stream = response.stream
        assert isinstance(stream, AsyncIterable)
        self._chunks = aiter(stream)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self._response.headers:
            if key.lower() == name:
                return value
        return None

    async def read_chunk(self) -> bytes:
        try:
            chunk: bytes = await anext(self._chunks)
        except StopAsyncIteration:
            return b""
        return chunk


# Header names are tokens; values carry no CR, LF or NUL (or they would smuggle headers).
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_RE = re.compile(r"[\r\n\x00]")


def _pairs(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    pairs = []
    for name, value in headers.items():
        if not _TOKEN_RE.fullmatch(name) or _BAD_VALUE_RE.search(value):
            raise LLMConfigError(f"provider header {name!r} is not valid", reason="bad_header")
        pairs.append((name.encode("latin-1"), value.encode("latin-1")))
    return pairs


def _encode(headers: dict[str, str]) -> bytes:
    """The header lines of a request, with the blank line that ends the head."""
    return b"".join(name + b": " + value + b"\r\n" for name, value in _pairs(headers)) + b"\r\n"


@dataclass(frozen=True, slots=True)
class _Route:
    """What a provider URL needs per request, worked out once: the origin, the head's fixed
    part, and the proxy the environment names for it (as httpx did), if any."""

    origin: http11.Origin
    host: bytes  # the Host header
    head: bytes  # request line and fixed headers
    proxy: str

    @classmethod
    def of(cls, url: str) -> _Route:
        parsed = httpcore.URL(url)
        default_port = {b"http": 80, b"https": 443}.get(parsed.scheme)
        if default_port is None:
            raise LLMConfigError(f"unsupported URL scheme in {url!r}", reason="bad_url")
        port = parsed.port or default_port
        host = parsed.host if port == default_port else parsed.host + b":%d" % port
        if b":" in parsed.host:  # IPv6 literal
            host = b"[" + parsed.host + b"]" + (b"" if port == default_port else b":%d" % port)
        head = b"POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nAccept: */*\r\n" % (
            parsed.target,
            host,
            _USER_AGENT,
        )
        return cls((parsed.scheme, parsed.host, port), host, head, _environment_proxy(url))


def _environment_proxy(url: str) -> str:
    """The proxy the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``)
    names for ``url``, or ``""``."""
    proxies = urllib.request.getproxies_environment()
    scheme, _, rest = url.partition("://")
    proxy = proxies.get(scheme) or proxies.get("all") or ""
    if not proxy:
        return ""
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if urllib.request.proxy_bypass(host):  # NO_PROXY
        return ""
    return proxy if "://" in proxy else "http://" + proxy


async def _drain(response: _Answer, deadline: Deadline) -> None:
    size = 0
    while chunk := await response.read_chunk():
        size += len(chunk)
        if size > _ERROR_BODY_CAP or time.monotonic() > deadline.end + _GRACE_S:
            return  # not worth it: the connection is closed instead


class _Holder:
    """The connection pools of an ``LLMClient``, reachable by its finalizer (not the
    instance)."""

    __slots__ = ("direct", "proxied")

    def __init__(self) -> None:
        self.direct: http11.Pool | None = None
        self.proxied: dict[str, httpcore.AsyncConnectionPool] = {}

    def close_soon(self) -> None:
        direct, self.direct = self.direct, None
        proxied, self.proxied = list(self.proxied.values()), {}
        loop = BACKGROUND.current()
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            if direct is not None:
                loop.call_soon_threadsafe(direct.close_all)
            for pool in proxied:
                loop.call_soon_threadsafe(
                    _start_task, loop, pool.aclose(), context=contextvars.Context()
                )


_ORPHANS: set[asyncio.Task[Any]] = set()  # tasks nobody else holds: kept alive until done


def _start_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> None:
    task = loop.create_task(coro)
    _ORPHANS.add(task)
    task.add_done_callback(_ORPHANS.discard)


# -- warm start: what the first call needs, prepared once per process, off the request path --

_WARM_LOCK = threading.Lock()
_WARM: concurrent.futures.Future[ssl.SSLContext] | None = None
_WARM_PID = 0


def warm_up() -> None:
    """Start loading the CA bundle into the process's TLS context (once per process, in a
    short-lived thread): neither building a middleware nor the first LLM call pays for it.
    Called at import (start-up) and by every ``LLMClient``."""
    global _WARM, _WARM_PID
    if _WARM is not None and (os.getpid() == _WARM_PID or _WARM.done()):
        return  # (a context made before a fork serves the child as well)
    with _WARM_LOCK:
        if _WARM is not None and (os.getpid() == _WARM_PID or _WARM.done()):
            return
        future: concurrent.futures.Future[ssl.SSLContext] = concurrent.futures.Future()
        _WARM, _WARM_PID = future, os.getpid()
    threading.Thread(
        target=_prepare, args=(future,), name="llm-middleware-warm-up", daemon=True
    ).start()


def _prepare(future: concurrent.futures.Future[ssl.SSLContext]) -> None:
    try:
        context = ssl.create_default_context(cafile=certifi.where())
    except BaseException as exc:  # pragma: no cover - reported to the first caller
        future.set_exception(exc)
        return
    future.set_result(context)


def ssl_context() -> ssl.SSLContext:
    """The process's TLS context (waits for ``warm_up`` if it is still at work)."""
    warm_up()
    assert _WARM is not None
    return _WARM.result()


# Values no caller can change in place: a model holding only these is copied shallowly (its
# fields are then separate, and nothing inside them can be mutated) at a third of the cost of
# ``model_copy(deep=True)``, which every answer pays, cached or shared.
_IMMUTABLE = frozenset(
    {str, int, float, bool, type(None), bytes, complex, decimal.Decimal, uuid.UUID}
    | {datetime.datetime, datetime.date, datetime.time, datetime.timedelta}
)


def _immutable(values: Any) -> bool:
    for value in values:
        if type(value) not in _IMMUTABLE and not isinstance(value, enum.Enum):
            return False
    return True


def _private_copy(model: BaseModel) -> BaseModel:
    """A copy of a cached or shared answer that one caller may mutate without touching
    anyone else's (joiners of a single-flight call, later cache hits)."""
    extra = model.__pydantic_extra__
    private = model.__pydantic_private__
    if (
        _immutable(model.__dict__.values())
        and (not extra or _immutable(extra.values()))
        and (not private or _immutable(private.values()))
    ):
        return model.model_copy()
    return model.model_copy(deep=True)


def _qualname(schema: type[BaseModel]) -> str:
    return f"{schema.__module__}.{schema.__qualname__}"


# Retry jitter from a generator of our own: the process-wide ``random`` state is the app's
# (and a test framework's, which may watch it), not ours to advance from a background thread.
_JITTER = random.Random()
os.register_at_fork(after_in_child=_JITTER.seed)  # workers forked alike jitter apart


def _backoff(attempt: int) -> float:
    return min(2.0, 0.05 * 2.0**attempt) * (0.5 + _JITTER.random() / 2)


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
warm_up()
