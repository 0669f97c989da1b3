"""PII masking on the request: query string and body (JSON per string value, forms per field,
text whole), before business logic, logs or any provider sees them."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from ..config import PIIMasking
from ..exchange import ResponseExchange, SourceError, charset_of, is_json_type
from ..inline import need_loop
from ..pii import PIIDetector, Vault, mask_form, mask_json, mask_query, mask_text
from .base import RequestContext

T = TypeVar("T")


class VaultPrivacy:
    """Everything bound for a provider gets reversible placeholders; what comes back is
    restored. One per request: the vault is never shared."""

    __slots__ = ("detector", "vault")

    def __init__(self, detector: PIIDetector, vault: Vault) -> None:
        self.detector = detector
        self.vault = vault

    def protect(self, text: str) -> str:
        return mask_text(text, self.detector, self.vault, "placeholder")

    def protect_value(self, value: Any) -> str:
        if isinstance(value, str):
            return self.protect(value)
        masked = mask_json(value, self.detector, self.vault, "placeholder")
        return json.dumps(masked, ensure_ascii=False)

    def restore(self, value: Any) -> Any:
        return self.vault.restore_obj(value)


class PIIInterceptor:
    uses_llm = False
    runs_first = True
    handles_request = True  # also sets up masking for whatever goes to a provider

    def __init__(self, config: PIIMasking, name: str) -> None:
        self.config = config
        self.name = name
        self.detector = PIIDetector(config.entities)
        self.strategy = config.strategy
        self.salt = (os.environ.get(config.salt_env, "") if config.salt_env else "").encode()
        self._kwargs: dict[str, Any] = {
            "strategy": config.strategy,
            "salt": self.salt,
            "keep_keys": frozenset(config.keep_fields),
        }
        self.mask_query = "query" in config.targets
        self.mask_body = "body" in config.targets
        self.needs_body = self.mask_body
        self.handles_response = "response" in config.targets
        self.on_error_status = True  # error pages echo input too

    async def on_request(self, ctx: RequestContext) -> str:
        vault = Vault()
        ctx.privacy = VaultPrivacy(self.detector, vault)
        exchange = ctx.exchange
        work = functools.partial(
            self._mask_request,
            exchange.query_string if self.mask_query else "",
            exchange.body if self.mask_body else b"",
            exchange.body_skip_reason,
            exchange.headers.get("content-type") or "",
            vault,
        )
        new_query, new_body = await _off_loop_if_large(
            work, len(exchange.query_string) + len(exchange.body or b""), ctx.deadline.remaining()
        )
        if new_query is not None:
            exchange.new_query_string = new_query
        if new_body is not None:
            exchange.new_body = new_body
        ctx.result.pii = vault.counts
        ctx.result.pii_values = vault.values
        return "ok"

    def accepts(self, content_type: str) -> bool:
        return is_json_type(content_type) or content_type.startswith("text/")

    async def on_response(self, ctx: RequestContext, response: ResponseExchange) -> str:
        privacy = ctx.privacy
        vault = privacy.vault if isinstance(privacy, VaultPrivacy) else Vault()
        content_type = response.headers.get("content-type") or ""
        body = response.current_body
        work = functools.partial(self._mask_payload, body, content_type, vault)
        new_body = await _off_loop_if_large(work, len(body), ctx.deadline.remaining())
        if new_body is not None:
            response.new_body = new_body
        ctx.result.pii = vault.counts
        ctx.result.pii_values = vault.values
        return "ok"

    # Pure functions of their arguments (no exchange access): they may run in a worker thread
    # that the deadline abandons.

    def _mask_request(
        self, query: str, body: bytes | None, skip_reason: str | None, content_type: str,
        vault: Vault,
    ) -> tuple[str | None, bytes | None]:  # fmt: skip
        new_query = None
        if query:
            masked = mask_query(query, self.detector, vault, **self._kwargs)
            new_query = masked if masked != query else None
        if body is None and self.mask_body:
            # Not read (too large, streaming, multipart...): it would reach the app unmasked.
            raise SourceError(skip_reason or "body_not_read")
        new_body = self._mask_payload(body, content_type, vault, form=True) if body else None
        return new_query, new_body

    def _mask_payload(
        self, body: bytes, content_type: str, vault: Vault, *, form: bool = False
    ) -> bytes | None:
        kind = content_type.split(";", 1)[0].strip().lower()
        charset = charset_of(content_type)
        try:
            text = body.decode(charset)
        except (UnicodeDecodeError, LookupError):
            raise SourceError("undecodable", f"not valid {charset}") from None
        if is_json_type(kind):
            try:
                document = json.loads(text)
            except ValueError:
                raise SourceError("body_not_json") from None
            masked_doc = mask_json(document, self.detector, vault, **self._kwargs)
            if masked_doc == document:
                return None
            return json.dumps(masked_doc, ensure_ascii=False).encode(charset)
        if form and kind == "application/x-www-form-urlencoded":
            masked = mask_form(text, self.detector, vault, **self._kwargs)
        elif kind.startswith("text/") or not kind:
            masked = mask_text(text, self.detector, vault, self.strategy, self.salt)
        else:
            raise SourceError("unsupported_content_type", kind)
        return masked.encode(charset) if masked != text else None


# Masking is CPU work: small inputs inline, larger ones in a worker thread so the event loop
# (shared by every request) keeps running, under the rule's deadline like any other step. An
# input that cannot be masked in the time left (at a conservative rate, a third of what
# bench/pii.py measures) is not started: the request goes on as it came, and nothing on the
# rule goes to a provider.
_INLINE_BYTES = 32_768
_MASK_BYTES_PER_S = 4_000_000


async def _off_loop_if_large(work: Callable[[], T], size: int, remaining_s: float) -> T:
    if size <= _INLINE_BYTES:
        return work()
    if size / _MASK_BYTES_PER_S > remaining_s:
        raise SourceError("too_large_for_budget", f"{size} bytes")
    need_loop()
    return await anyio.to_thread.run_sync(work)  # any backend: asyncio or trio
