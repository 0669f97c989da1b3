"""PII masking: one privacy boundary for everything bound to a provider (prompt text from any
source, JSON keys and values of any type, headers, cookies, query), and, with ``mask_for``
including ``"app"``, the query and body the app sees. Bodies are edited in place: only the
masked values change."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..bridge import wait_future
from ..config import PIIMasking
from ..exchange import ResponseExchange, SourceError, charset_of, is_json_type
from ..inline import NeedsLoop, need_loop
from ..pii import PIIDetector, Vault, mask_form, mask_query, mask_text
from ..pii.masking import (
    DEFAULT_SENSITIVE_KEYS,
    Stopwatch,
    _KeyRules,
    _mask_whole,
    mask_json_text,
)
from .base import RequestContext, cut_text

T = TypeVar("T")

_NO_KEEP: frozenset[str] = frozenset()


def _source_field(source: str) -> str | None:
    """The field name a source reads (``header:X-Api-Key`` -> ``X-Api-Key``,
    ``json:/user/password`` -> ``password``), for the field-name rules."""
    kind, _, name = source.partition(":")
    if kind == "json":
        last = name.rsplit("/", 1)[-1]
        return last.replace("~1", "/").replace("~0", "~") or None
    if kind in ("header", "query", "form"):
        return name
    return None


class VaultPrivacy:
    """Everything bound for a provider gets reversible placeholders; what comes back is
    restored. One per request: the vault is never shared."""

    __slots__ = ("ctx", "detector", "vault")

    _rules = _KeyRules(DEFAULT_SENSITIVE_KEYS)

    def __init__(self, detector: PIIDetector, vault: Vault, ctx: RequestContext) -> None:
        self.detector = detector
        self.vault = vault
        self.ctx = ctx  # its deadline bounds the masking (the response side gets a new one)

    def protect(self, text: str) -> str:
        return mask_text(text, self.detector, self.vault, "placeholder")

    async def protect_value(
        self, value: Any, source: str = "", max_chars: int | None = None
    ) -> str:
        """``value`` as prompt text, masked: a value read from a sensitive field (by name:
        ``header:Authorization``, ``query:token``, ``json:/password``...) whole, anything else
        by the detector (JSON keys and numbers included). Text is cut to ``max_chars`` before
        detection; a structured value whose JSON is longer is refused (``input_too_long``).
        Off the event loop beyond a few KB, under the request's deadline."""
        field = _source_field(source)
        entity = self._rules.entity_for(field) if field else None
        if entity is not None:
            masked = _mask_whole(value, entity, self.vault, "placeholder", b"")
            return masked if isinstance(masked, str) else json.dumps(masked, ensure_ascii=False)
        if isinstance(value, str):
            text = cut_text(value, max_chars)
            work: Callable[[Stopwatch], str] = lambda _: self.protect(text)  # noqa: E731
        else:
            text = json.dumps(value, ensure_ascii=False)
            if max_chars is not None and len(text) > max_chars:
                raise SourceError("input_too_long", f"{len(text)} characters")
            work = lambda sw: mask_json_text(  # noqa: E731
                text, self.detector, self.vault, "placeholder", stopwatch=sw
            )
        return await mask_off_loop(work, len(text), self.ctx.deadline.remaining())

    def restore(self, value: Any) -> Any:
        return self.vault.restore_obj(value)


# Masking is CPU work. Inputs up to _INLINE_BYTES are masked where the request runs (bounded:
# bench/privacy.py measures at most ~1.4 ms/KB, on many tiny JSON strings that are all
# findings); larger ones go to a small pool of our own (never the default executor, where
# asyncio's DNS lookups wait), under the request's deadline. A job that cannot start before
# the deadline is not started, a job whose request gave up stops at its next field, and at
# most _MAX_QUEUED wait: the pool cannot pile up abandoned work.
_INLINE_BYTES = 1_024
# Admission: a job that this rate says cannot finish in the time left is not started.
# bench/privacy.py measures 0.75 MB/s (many tiny JSON strings, each a finding) to 20 MB/s.
_MASK_BYTES_PER_S = 1_000_000
_WORKERS = 2
_MAX_QUEUED = 8


class _NotStarted(Exception):
    pass


class MaskingPool:
    def __init__(self, workers: int = _WORKERS, max_queued: int = _MAX_QUEUED) -> None:
        self._workers = workers
        self._max_queued = max_queued
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._queued = 0

    def submit(self, work: Callable[[], T], start_by: float) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._queued >= self._max_queued:
                raise SourceError("masking_busy", f"{self._queued} masking jobs queued")
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self._workers, thread_name_prefix="llm-middleware-mask"
                )
            self._queued += 1
            executor = self._executor

        def job() -> T:
            with self._lock:
                self._queued -= 1
            if time.monotonic() > start_by:
                raise _NotStarted
            return work()

        try:
            return executor.submit(job)
        except RuntimeError:  # shut down (interpreter exit)
            with self._lock:
                self._queued -= 1
            raise SourceError("masking_unavailable") from None

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._executor = None
        self._queued = 0


POOL = MaskingPool()
os.register_at_fork(after_in_child=POOL._after_fork)


async def mask_off_loop(work: Callable[[Stopwatch], T], size: int, remaining_s: float) -> T:
    """Run ``work`` inline when ``size`` is small, else on the masking pool, waiting at most
    ``remaining_s`` (TimeoutError after). Raises ``SourceError`` when it cannot even start."""
    if size <= _INLINE_BYTES:
        return work(Stopwatch(None))
    if size / _MASK_BYTES_PER_S > remaining_s:
        raise SourceError("too_large_for_budget", f"{size} bytes")
    need_loop()
    stop_at = time.monotonic() + remaining_s
    future = POOL.submit(functools.partial(work, Stopwatch(stop_at)), stop_at)
    try:
        return await wait_future(future, remaining_s)
    except _NotStarted:
        raise SourceError("masking_not_started", "the pool was busy until the deadline") from None


def _decode(body: bytes, content_type: str) -> tuple[str, str, str]:
    """Text, codec and error handler such that ``text.encode(codec, errors)`` gives ``body``
    back byte for byte: undecodable bytes are data (masked around, kept as they are), never a
    reason to skip masking."""
    charset = charset_of(content_type)
    try:
        codec = "utf-8" if charset.lower().replace("_", "-") in ("utf-8", "utf8") else charset
        "".encode(codec)
    except LookupError:
        codec = "utf-8"  # an unknown charset: the bytes are still masked where they are ASCII
    if codec == "utf-8":
        return body.decode("utf-8", "surrogateescape"), codec, "surrogateescape"
    try:
        return body.decode(codec), codec, "strict"
    except UnicodeDecodeError:
        raise SourceError("undecodable", f"not valid {codec}") from None


_TEXT_LIKE = ("application/xml", "application/javascript", "application/x-ndjson")


def _failure_status(reason: str) -> int:
    if reason in ("body_too_large", "too_large_for_budget"):
        return 413
    if reason in ("unsupported_content_type", "streaming_body", "undecodable", "bad_charset"):
        return 415
    return 422


class PIIInterceptor:
    uses_llm = False
    runs_first = True
    handles_request = True  # also sets up masking for whatever goes to a provider

    def __init__(self, config: PIIMasking, name: str) -> None:
        self.config = config
        self.name = name
        ner = None
        if config.ner:
            from ..pii.ner import DEFAULT_MODEL, shared_spacy_ner

            ner = shared_spacy_ner(DEFAULT_MODEL if config.ner is True else config.ner)
        self.detector = PIIDetector(config.entities, ner=ner, phone_regions=config.phone_regions)
        self.strategy = config.strategy
        salt = ""
        if config.salt_env:
            salt = os.environ.get(config.salt_env, "")
            if config.strategy == "hash" and not salt:
                raise ValueError(
                    f'strategy "hash": environment variable {config.salt_env!r} '
                    "(salt_env, the HMAC key) is not set or empty"
                )
        self.salt = salt.encode()
        self._kwargs: dict[str, Any] = {
            "strategy": config.strategy,
            "salt": self.salt,
            "keep_keys": frozenset(config.keep_fields),
        }
        for_app = "app" in config.mask_for
        self.mask_query = for_app and "query" in config.targets
        self.mask_body = for_app and "body" in config.targets
        self.needs_body = self.mask_body
        self.handles_response = "response" in config.targets
        self.reject = config.on_masking_failure == "reject"
        self.on_error_status = True  # error pages echo input too

    async def on_request(self, ctx: RequestContext) -> str:
        vault = Vault()
        ctx.privacy = VaultPrivacy(self.detector, vault, ctx)
        exchange = ctx.exchange
        done = hop = False
        reason = "timeout"
        try:
            if self.mask_query or self.mask_body:
                work = functools.partial(
                    self._mask_request,
                    exchange.query_string if self.mask_query else "",
                    exchange.body if self.mask_body else b"",
                    exchange.body_skip_reason,
                    exchange.headers.get("content-type") or "",
                    vault,
                )
                size = len(exchange.query_string) + len(exchange.body or b"")
                new_query, new_body = await mask_off_loop(work, size, ctx.deadline.remaining())
                if new_query is not None:
                    exchange.new_query_string = new_query
                if new_body is not None:
                    exchange.new_body = new_body
            done = True
        except NeedsLoop:
            hop = True  # an inline try: the request is run again on the loop
            raise
        except SourceError as exc:
            reason = exc.reason
            raise
        except Exception:
            reason = "error"
            raise
        finally:
            ctx.result.pii = vault.counts
            ctx.result.pii_values = vault.values
            if not done and not hop and self.reject:
                body = json.dumps({"error": "pii_masking_failed", "reason": reason})
                exchange.reject = (_failure_status(reason), body.encode())
        return "ok"

    def accepts(self, content_type: str) -> bool:
        return (
            is_json_type(content_type)
            or content_type.startswith("text/")
            or content_type in _TEXT_LIKE
        )

    async def on_response(self, ctx: RequestContext, response: ResponseExchange) -> str:
        privacy = ctx.privacy
        vault = privacy.vault if isinstance(privacy, VaultPrivacy) else Vault()
        content_type = response.headers.get("content-type") or ""
        body = response.current_body
        headers = dict(response.set_headers)
        work = functools.partial(self._mask_response, body, content_type, headers, vault)
        size = len(body) + sum(len(v) for v in headers.values())
        new_body, new_headers = await mask_off_loop(work, size, ctx.deadline.remaining())
        if new_body is not None:
            response.new_body = new_body
        response.set_headers.update(new_headers)
        ctx.result.pii = vault.counts
        ctx.result.pii_values = vault.values
        return "ok"

    # Pure functions of their arguments (no exchange access): they may run in a worker thread
    # that the deadline abandons.

    def _mask_request(
        self, query: str, body: bytes | None, skip_reason: str | None, content_type: str,
        vault: Vault, stopwatch: Stopwatch,
    ) -> tuple[str | None, bytes | None]:  # fmt: skip
        new_query = None
        if query:
            masked = mask_query(query, self.detector, vault, **self._kwargs, stopwatch=stopwatch)
            new_query = masked if masked != query else None
        if body is None and self.mask_body:
            # Not read (too large, streaming, multipart...): it would reach the app unmasked.
            raise SourceError(skip_reason or "body_not_read")
        new_body = (
            self._mask_payload(body, content_type, vault, stopwatch, form=True) if body else None
        )
        return new_query, new_body

    def _mask_response(
        self, body: bytes, content_type: str, headers: dict[str, str], vault: Vault,
        stopwatch: Stopwatch,
    ) -> tuple[bytes | None, dict[str, str]]:  # fmt: skip
        # Headers we add (enrichment) are ours to mask: restored values never leave through them.
        new_headers = {}
        for name, value in headers.items():
            masked = mask_text(value, self.detector, vault, self.strategy, self.salt, known=True)
            if masked != value:
                # Header values are latin-1 on the wire: keep what was ASCII JSON that way.
                new_headers[name] = masked.encode("ascii", "backslashreplace").decode()
        new_body = (
            self._mask_payload(body, content_type, vault, stopwatch, known=True) if body else None
        )
        return new_body, new_headers

    def _mask_payload(
        self, body: bytes, content_type: str, vault: Vault, stopwatch: Stopwatch, *,
        form: bool = False, known: bool = False,
    ) -> bytes | None:  # fmt: skip
        kind = content_type.split(";", 1)[0].strip().lower()
        text, codec, errors = _decode(body, content_type)
        if is_json_type(kind):
            try:
                json.loads(text)
            except ValueError:
                kind = "text/plain"  # not JSON: still masked, as text
            else:
                masked = mask_json_text(
                    text, self.detector, vault, **self._kwargs, known=known, stopwatch=stopwatch
                )
                return masked.encode(codec, errors) if masked != text else None
        if form and kind == "application/x-www-form-urlencoded":
            masked = mask_form(text, self.detector, vault, **self._kwargs, stopwatch=stopwatch)
        elif kind.startswith("text/") or not kind or kind in _TEXT_LIKE or kind.endswith("+xml"):
            masked = mask_text(text, self.detector, vault, self.strategy, self.salt, known=known)
        else:
            raise SourceError("unsupported_content_type", kind)
        return masked.encode(codec, errors) if masked != text else None
