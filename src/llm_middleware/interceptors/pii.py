"""PII masking on the request: query string and body (JSON per string value, forms per field,
text whole), before business logic, logs or any provider sees them."""

from __future__ import annotations

import json
import os
from typing import Any

from ..config import PIIMasking
from ..exchange import ResponseExchange, SourceError, charset_of, is_json_type
from ..pii import PIIDetector, Vault, mask_form, mask_json, mask_query, mask_text
from .base import RequestContext


class VaultPrivacy:
    """Everything bound for a provider gets reversible placeholders; what comes back is
    restored. One per request: the vault is never shared."""

    __slots__ = ("detector", "vault")

    def __init__(self, detector: PIIDetector, vault: Vault) -> None:
        self.detector = detector
        self.vault = vault

    def protect(self, text: str) -> str:
        return mask_text(text, self.detector, self.vault, "placeholder")

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
        self.mask_query = "query" in config.targets
        self.mask_body = "body" in config.targets
        self.needs_body = self.mask_body
        self.handles_response = "response" in config.targets
        self.on_error_status = True  # error pages echo input too

    async def on_request(self, ctx: RequestContext) -> str:
        vault = Vault()
        ctx.privacy = VaultPrivacy(self.detector, vault)
        exchange = ctx.exchange
        kwargs: dict[str, Any] = {"strategy": self.strategy, "salt": self.salt}
        if self.mask_query and exchange.query_string:
            masked = mask_query(exchange.query_string, self.detector, vault, **kwargs)
            if masked != exchange.query_string:
                exchange.new_query_string = masked
        if self.mask_body:
            self._mask_body(ctx, vault, kwargs)
        ctx.result.pii = vault.counts
        ctx.result.pii_values = vault.values
        return "ok"

    def accepts(self, content_type: str) -> bool:
        return is_json_type(content_type) or content_type.startswith("text/")

    async def on_response(self, ctx: RequestContext, response: ResponseExchange) -> str:
        privacy = ctx.privacy
        vault = privacy.vault if isinstance(privacy, VaultPrivacy) else Vault()
        kwargs: dict[str, Any] = {"strategy": self.strategy, "salt": self.salt}
        if is_json_type(response.content_type):
            document = response.json()
            masked_doc = mask_json(document, self.detector, vault, **kwargs)
            if masked_doc != document:
                response.new_body = json.dumps(masked_doc, ensure_ascii=False).encode()
        else:
            text = response.text()
            masked = mask_text(text, self.detector, vault, **kwargs)
            if masked != text:
                charset = charset_of(response.headers.get("content-type") or "")
                response.new_body = masked.encode(charset)
        ctx.result.pii = vault.counts
        ctx.result.pii_values = vault.values
        return "ok"

    def _mask_body(self, ctx: RequestContext, vault: Vault, kwargs: dict[str, Any]) -> None:
        exchange = ctx.exchange
        body = exchange.body
        if body is None:
            # Not read (too large, streaming, multipart...): it would reach the app unmasked.
            raise SourceError(exchange.body_skip_reason or "body_not_read")
        if not body:
            return
        content_type = exchange.content_type
        if is_json_type(content_type):
            document = exchange.body_json()
            masked_doc = mask_json(document, self.detector, vault, **kwargs)
            if masked_doc != document:
                exchange.new_body = json.dumps(masked_doc, ensure_ascii=False).encode()
            return
        text = exchange.body_text()
        if content_type == "application/x-www-form-urlencoded":
            masked = mask_form(text, self.detector, vault, **kwargs)
        elif content_type.startswith("text/") or not content_type:
            masked = mask_text(text, self.detector, vault, **kwargs)
        else:
            raise SourceError("unsupported_content_type", content_type)
        if masked != text:
            exchange.new_body = masked.encode(
                charset_of(exchange.headers.get("content-type") or "")
            )
