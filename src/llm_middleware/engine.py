"""Runs a rule's interceptors inside one deadline and turns every failure into an outcome."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import anyio

from .bridge import BACKGROUND
from .config import (
    Config,
    ConfigError,
    IntentExtraction,
    PIIMasking,
    ResponseEnrichment,
    Rule,
    load_config,
)
from .deadline import Deadline
from .exchange import Headers, RequestExchange, ResponseExchange, SourceError
from .inline import inline, need_event_loop
from .interceptors.base import Interceptor, RequestContext
from .interceptors.enrichment import EnrichmentInterceptor
from .interceptors.intent import IntentInterceptor
from .interceptors.pii import PIIInterceptor
from .llm import CallStats, LLMClient, LLMError
from .observability import log_internal_error, log_request, logger
from .result import LLMResult
from .routing import Router
from .shadow import comparison_records, emit

__all__ = ["CompiledRule", "Engine"]

MAX_BACKGROUND_TASKS = 256


class CompiledRule:
    __slots__ = (
        "index", "config", "label", "interceptors", "needs_body", "budget_s", "max_body_bytes",
        "mode", "sample_threshold", "request_interceptors", "response_interceptors",
        "needs_response", "max_response_bytes", "compared",
    )  # fmt: skip

    def __init__(self, index: int, rule: Rule, interceptors: Sequence[Interceptor], config: Config):
        self.index = index
        self.config = rule
        self.label = rule.path
        # Masking runs before anything that could send text to a provider.
        self.interceptors = sorted(interceptors, key=lambda i: not i.runs_first)
        self.request_interceptors = [i for i in self.interceptors if i.handles_request]
        # Response side: enrichment in declared order, masking last (it covers what was added).
        self.response_interceptors = sorted(
            (i for i in interceptors if i.handles_response), key=lambda i: i.runs_first
        )
        # In shadow mode the response is buffered too, and a copy goes to the shadow run.
        self.needs_response = bool(self.response_interceptors) and rule.mode != "off"
        self.compared: list[tuple[str, IntentExtraction]] = [
            (i.name, i.config)
            for i in interceptors
            if isinstance(i, IntentInterceptor) and i.config.compare > 0
        ]
        self.max_response_bytes = config.max_response_bytes
        self.needs_body = any(i.needs_body for i in interceptors)
        self.budget_s = rule.budget_ms / 1000.0
        self.max_body_bytes = rule.max_body_bytes or config.max_body_bytes
        self.mode = rule.mode
        self.sample_threshold = int(rule.sample * 10_000)

    def sampled(self, client_key: str) -> bool:
        if self.sample_threshold >= 10_000:
            return True
        return zlib.crc32(f"{self.index}:{client_key}".encode()) % 10_000 < self.sample_threshold

    def __repr__(self) -> str:
        return f"<CompiledRule {self.index} {self.label!r}>"


def build_interceptor(cfg: Any, name: str) -> Interceptor:
    if isinstance(cfg, IntentExtraction):
        return IntentInterceptor(cfg, name)
    if isinstance(cfg, PIIMasking):
        return PIIInterceptor(cfg, name)
    if isinstance(cfg, ResponseEnrichment):
        return EnrichmentInterceptor(cfg, name)
    raise TypeError(f"unknown interceptor config {cfg!r}")


class Engine:
    """Framework-free core shared by every adapter."""

    def __init__(self, config: Config | Any = None, **kwargs: Any) -> None:
        self.config: Config = load_config(config, **kwargs)
        self.llm = LLMClient(self.config)
        rules: list[tuple[str, frozenset[str] | None, CompiledRule]] = []
        for index, rule in enumerate(self.config.rules):
            if rule.mode == "off":
                continue
            seen: dict[str, int] = {}
            interceptors = []
            for cfg in rule.interceptors:
                base = cfg.name or cfg.type
                seen[base] = seen.get(base, 0) + 1
                name = base if seen[base] == 1 else f"{base}#{seen[base]}"
                try:
                    interceptors.append(build_interceptor(cfg, name))
                except (ValueError, TypeError, ImportError) as exc:
                    where = f"rules[{index}].interceptors[{len(interceptors)}]"
                    raise ConfigError(
                        f"invalid LLM_MIDDLEWARE configuration:\n  {where}: {exc}",
                        [(where, str(exc))],
                    ) from None
            methods = frozenset(rule.methods) if rule.methods is not None else None
            rules.append((rule.path, methods, CompiledRule(index, rule, interceptors, self.config)))
        self.router: Router[CompiledRule] = Router(rules)
        # Shadow runs, on the background loop (never a task on the host's loop, which may be
        # trio or end before they do).
        self._background: set[concurrent.futures.Future[Any]] = set()

    def match(self, method: str, path: str) -> CompiledRule | None:
        return self.router.match(method, path)

    def client_key(self, headers: Headers, peer: str | None) -> str:
        header = self.config.client_key_header
        if header:
            value = headers.get(header)
            if value:
                return value
        return peer or ""

    async def process_request(
        self, rule: CompiledRule, exchange: RequestExchange, deadline: Deadline
    ) -> LLMResult:
        """Never raises (but for cancellation). In shadow mode the work goes to the background
        and the request sees only ``shadow`` outcomes."""
        if rule.mode == "shadow":
            need_event_loop()
            result = LLMResult(rule=rule.label)
            for icpt in rule.interceptors:
                result.record(icpt.name, "shadow")
            task = self._start_background(self._shadow_request(rule, _clone(exchange)))
            if task is not None and rule.response_interceptors:
                # The response side runs in shadow too, on a copy, once this task is done.
                result.context = _ShadowState(task)
            return result
        return await self._run(rule, exchange, deadline)

    def _start_background(
        self, coro: Coroutine[Any, Any, LLMResult | None]
    ) -> concurrent.futures.Future[LLMResult | None] | None:
        """The one place shadow work is started: on the per-process background loop (never a
        task on the host's loop, which may be trio or end first); bounded (``None`` when too
        much is running)."""
        if len(self._background) >= MAX_BACKGROUND_TASKS:
            coro.close()  # never awaited: no warning, no leak
            return None
        future = BACKGROUND.submit(coro)
        self._background.add(future)
        future.add_done_callback(self._background.discard)
        return future

    async def _shadow_request(self, rule: CompiledRule, exchange: RequestExchange) -> LLMResult:
        """A shadowed request, run as if enforced on a copy; logged at once, compared when an
        intent interceptor asks, its context kept for the shadow response side."""
        deadline = Deadline(rule.budget_s)
        result = LLMResult(rule=rule.label)
        stats = CallStats()
        original = _clone(exchange)  # what the client sent, before any rewrite
        try:
            if not rule.sampled(exchange.client_key):
                for icpt in rule.interceptors:
                    result.record(icpt.name, "skipped", "sampled_out")
            else:
                await self._run_interceptors(
                    rule, exchange, deadline, result, stats, keep_context=True
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log_internal_error("engine.shadow", exc)
            for icpt in rule.interceptors:
                result.outcomes.setdefault(icpt.name, "error")
        result.added_ms = deadline.elapsed_ms()
        self.log(rule, exchange.method, result, stats)
        ctx = result.context
        if ctx is not None and rule.compared:
            try:
                for record, sink in comparison_records(rule.label, rule.compared, ctx, original):
                    emit(record, sink, logger)
            except Exception as exc:  # a full disk must not reach anyone
                log_internal_error("shadow_compare", exc)
        return result

    async def run_measured(
        self, rule: CompiledRule, exchange: RequestExchange, deadline: Deadline
    ) -> tuple[LLMResult, CallStats]:
        """Run a rule's request side as in enforce mode (whatever its mode and sample) and
        return what it spent; for ``llm-middleware eval``. Never raises but cancellation."""
        result = LLMResult(rule=rule.label)
        stats = CallStats()
        try:
            await self._run_interceptors(rule, exchange, deadline, result, stats)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log_internal_error("engine.eval", exc)
            for icpt in rule.interceptors:
                result.outcomes.setdefault(icpt.name, "error")
        result.added_ms = deadline.elapsed_ms()
        result.context = None
        return result, stats

    async def _run(
        self, rule: CompiledRule, exchange: RequestExchange, deadline: Deadline
    ) -> LLMResult:
        result = LLMResult(rule=rule.label)
        stats = CallStats()
        try:
            if not rule.sampled(exchange.client_key):
                for icpt in rule.interceptors:
                    result.record(icpt.name, "skipped", "sampled_out")
            else:
                await self._run_interceptors(rule, exchange, deadline, result, stats)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug of ours must never reach the host app
            log_internal_error("engine", exc)
            exchange.new_body = exchange.new_query_string = None
            for icpt in rule.interceptors:
                result.outcomes.setdefault(icpt.name, "error")
        result.added_ms = deadline.elapsed_ms()
        if rule.needs_response and result.context is not None:
            return result  # logged once the response side is done (finish_response)
        self.log(rule, exchange.method, result, stats)
        return result

    def log(self, rule: CompiledRule, method: str, result: LLMResult, stats: CallStats) -> None:
        try:
            log_request(rule=rule.label, method=method, mode=rule.mode, result=result, stats=stats,
                        cached_sample=self.config.log_cached_sample)  # fmt: skip
        except Exception as exc:
            log_internal_error("log_request", exc)

    # -- response side ---------------------------------------------------------------------

    def response_skip_reason(
        self, rule: CompiledRule, result: LLMResult | None, method: str, status: int,
        headers: Headers, declared_length: int | None,
    ) -> str | None:  # fmt: skip
        """``None`` when this response should be buffered for the response interceptors,
        else why not. Cheap: headers only."""
        if result is None or result.context is None:
            return "no_request_context"
        if method == "HEAD":
            return "head_request"
        if status < 200 or status in (204, 205, 304):
            return f"status_{status}"
        if status >= 400 and not any(i.on_error_status for i in rule.response_interceptors):
            return f"status_{status}"
        encoding = (headers.get("content-encoding") or "identity").strip().lower()
        if encoding != "identity":
            return "content_encoding"
        content_type = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if content_type == "text/event-stream":
            return "streaming_response"
        if not any(i.accepts(content_type) for i in rule.response_interceptors):
            return "unsupported_content_type"
        if declared_length is not None and declared_length > rule.max_response_bytes:
            return "response_too_large"
        return None

    def finish_response(
        self, rule: CompiledRule, result: LLMResult, method: str, skip_reason: str | None
    ) -> None:
        """Record why the response side did not run (if it did not) and log the request."""
        ctx = result.context
        if ctx is None:
            return
        if isinstance(ctx, _ShadowState):  # the shadow run logs itself
            result.context = None
            return
        if skip_reason is not None:
            for icpt in rule.response_interceptors:
                result.outcomes.setdefault(icpt.name, "skipped")
                result.reasons.setdefault(icpt.name, skip_reason)
        result.context = None
        self.log(rule, method, result, ctx.stats)

    async def process_response(
        self, rule: CompiledRule, result: LLMResult, response: ResponseExchange
    ) -> None:
        """Run the response interceptors in what the request side left of the budget; never
        raises (but for cancellation). The adapter applies ``response.new_body`` and
        ``response.set_headers`` and then calls ``finish_response``."""
        shadow = result.context
        if isinstance(shadow, _ShadowState):
            need_event_loop()
            copy = ResponseExchange(response.status, response.headers, response.body)
            self._start_background(self._shadow_response(rule, shadow.task, copy))
            return
        ctx: RequestContext | None = result.context
        if ctx is None:
            return
        result.added_ms += await self._respond(
            rule, ctx, result.added_ms, response, "engine.response"
        )

    async def _respond(
        self, rule: CompiledRule, ctx: RequestContext, spent_ms: float,
        response: ResponseExchange, where: str,
    ) -> float:  # fmt: skip
        """The response interceptors in what the request side left of the budget; a bug of
        ours drops what we changed. Returns the ms spent."""
        started = Deadline(0)
        ctx.deadline = Deadline(max(0.0, rule.budget_s - spent_ms / 1000.0))
        try:
            await self._run_response_interceptors(rule, ctx, response)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log_internal_error(where, exc)
            response.new_body = None
            response.set_headers.clear()
        return started.elapsed_ms()

    async def _shadow_response(
        self,
        rule: CompiledRule,
        request_side: concurrent.futures.Future[LLMResult | None],
        response: ResponseExchange,
    ) -> None:
        """The response side of a shadowed request, on a copy of the response: run, logged,
        never applied."""
        req = await asyncio.wrap_future(request_side)  # both run on the background loop
        ctx: RequestContext | None = req.context if req is not None else None
        if req is None or ctx is None:
            return
        req.context = None
        spent_ms = await self._respond(rule, ctx, req.added_ms, response, "engine.shadow_response")
        names = {i.name for i in rule.response_interceptors}
        try:
            logger.info(
                "llm_middleware.shadow_response",
                rule=rule.label,
                outcomes={k: v for k, v in req.outcomes.items() if k in names},
                reasons={k: v for k, v in req.reasons.items() if k in names},
                added_ms=round(spent_ms, 2),
            )
        except Exception as exc:
            log_internal_error("log_shadow_response", exc)

    async def _run_response_interceptors(
        self, rule: CompiledRule, ctx: RequestContext, response: ResponseExchange
    ) -> None:
        for icpt in rule.response_interceptors:
            body, headers = response.new_body, dict(response.set_headers)
            if await self._step(icpt, ctx, functools.partial(icpt.on_response, ctx, response)):
                continue
            response.new_body, response.set_headers = body, headers
            if not icpt.uses_llm:
                # Masking failed: drop what we added too, so nothing unmasked of ours goes out;
                # the app's own response goes out as the app made it.
                response.new_body, response.set_headers = None, {}

    async def _run_interceptors(
        self,
        rule: CompiledRule,
        exchange: RequestExchange,
        deadline: Deadline,
        result: LLMResult,
        stats: CallStats,
        keep_context: bool = False,
    ) -> None:
        ctx = RequestContext(exchange, deadline, result, stats, self.llm)
        if rule.needs_response or keep_context:
            result.context = ctx
        for icpt in rule.request_interceptors:
            body, query = exchange.new_body, exchange.new_query_string
            if await self._step(icpt, ctx, functools.partial(icpt.on_request, ctx)):
                continue
            # Passthrough: undo whatever the failed interceptor changed.
            exchange.new_body, exchange.new_query_string = body, query
            if not icpt.uses_llm and icpt.runs_first:
                ctx.privacy_failed = True

    async def _step(
        self, icpt: Interceptor, ctx: RequestContext, call: Callable[[], Awaitable[str]]
    ) -> bool:
        """One interceptor on one side, inside what is left of the deadline. Records the
        outcome; returns whether it applied. Nothing but cancellation escapes."""
        result = ctx.result
        if icpt.uses_llm and ctx.privacy_failed:
            # Masking failed on this rule: nothing may be sent to a provider.
            result.record(icpt.name, "skipped", "pii_masking_failed")
            return False
        remaining = ctx.deadline.remaining()
        if remaining <= 0 and icpt.uses_llm:
            result.record(icpt.name, "timeout", "budget_exhausted")
            return False
        try:
            if inline():  # no loop: waits are on thread futures, each bounded (wait_future)
                outcome = await call()
            elif _on_asyncio():  # asyncio's own timeout: cheaper than anyio's cancel scope
                async with asyncio.timeout(remaining):
                    outcome = await call()
            else:  # trio, through anyio
                with anyio.fail_after(remaining):
                    outcome = await call()
        except TimeoutError:
            result.record(icpt.name, "timeout", "deadline")
        except SourceError as exc:
            result.record(icpt.name, "skipped", exc.reason)
        except LLMError as exc:
            result.record(icpt.name, exc.outcome, exc.reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log_internal_error(icpt.name, exc)
            result.record(icpt.name, "error", f"internal:{type(exc).__name__}")
        else:
            result.outcomes[icpt.name] = outcome  # keeps a note the interceptor left
            return True
        return False

    def close(self) -> None:
        """Close the LLM clients from synchronous code (e.g. a WSGI server's shutdown hook)."""
        self.llm.close()

    async def aclose(self) -> None:
        for future in list(self._background):
            future.cancel()
        await self.llm.aclose()


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _ShadowState:
    """``result.context`` of a shadowed request whose response side runs in shadow too."""

    __slots__ = ("task",)

    def __init__(self, task: concurrent.futures.Future[LLMResult | None]) -> None:
        self.task = task


def _clone(exchange: RequestExchange) -> RequestExchange:
    return RequestExchange(
        exchange.method,
        exchange.path,
        exchange.query_string,
        exchange.headers,
        exchange.body,
        body_skip_reason=exchange.body_skip_reason,
        client_key=exchange.client_key,
    )
