"""Masking strategies, the per-request reversible :class:`Vault`, and structured-body walkers."""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Literal
from urllib.parse import quote_plus, unquote_plus

from .detectors import PIIDetector

__all__ = [
    "DEFAULT_SENSITIVE_KEYS",
    "MaskStrategy",
    "Vault",
    "mask_form",
    "mask_json",
    "mask_query",
    "mask_text",
    "scrub",
]

MaskStrategy = Literal["placeholder", "redact", "hash", "partial"]

REDACTED = "[REDACTED]"

# Normalised field name (lower case, letters and digits only) -> entity type. A key matches
# when its normalised form ends with one of these, so "user_password" and "X-Api-Key" match
# while "total_tokens" does not.
DEFAULT_SENSITIVE_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "password": "SECRET",
        "passwd": "SECRET",
        "pwd": "SECRET",
        "passphrase": "SECRET",
        "secret": "SECRET",
        "secretkey": "SECRET",
        "token": "SECRET",
        "apikey": "SECRET",
        "accesskey": "SECRET",
        "privatekey": "SECRET",
        "authorization": "SECRET",
        "cookie": "SECRET",
        "cvv": "SECRET",
        "cvc": "SECRET",
        "ssn": "US_SSN",
        "socialsecuritynumber": "US_SSN",
        "cardnumber": "CREDIT_CARD",
        "ccnumber": "CREDIT_CARD",
        "creditcard": "CREDIT_CARD",
        "iban": "IBAN_CODE",
    }
)

_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*_\d+>")
_NOT_ENTITY_CHAR = re.compile(r"[^A-Z0-9_]")
_NOT_KEY_CHAR = re.compile(r"[^a-z0-9]")


def _entity_name(entity_type: str) -> str:
    name = _NOT_ENTITY_CHAR.sub("_", entity_type.upper())
    return name if name[:1].isalpha() else f"X{name}"


class Vault:
    """Reversible placeholder store for one request; never share one between requests.

    ``repr`` shows entity types and counts only, never a value.
    """

    __slots__ = ("_counts", "_next", "_originals", "_placeholders", "_scrub_pattern", "_values")

    def __init__(self) -> None:
        self._placeholders: dict[tuple[str, str], str] = {}
        self._originals: dict[str, str] = {}
        self._values: set[str] = set()
        self._next: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._scrub_pattern: re.Pattern[str] | None = None

    def record(self, entity_type: str, value: str) -> None:
        """Count one masked occurrence and remember the value (for :meth:`scrub`)."""
        self._counts[entity_type] += 1
        if value not in self._values:
            self._values.add(value)
            self._scrub_pattern = None

    def placeholder_for(self, entity_type: str, value: str) -> str:
        """``<EMAIL_ADDRESS_1>``...; the same value gets the same placeholder in this vault."""
        self.record(entity_type, value)
        key = (entity_type, value)
        placeholder = self._placeholders.get(key)
        if placeholder is None:
            name = _entity_name(entity_type)
            self._next[name] += 1
            placeholder = f"<{name}_{self._next[name]}>"
            self._placeholders[key] = placeholder
            self._originals[placeholder] = value
        return placeholder

    def restore(self, text: str) -> str:
        """Put original values back for every known placeholder; unknown ones are left alone."""
        if not self._originals or "<" not in text:
            return text
        known = self._originals
        return _PLACEHOLDER.sub(lambda m: known.get(m.group(), m.group()), text)

    def restore_obj(self, obj: object) -> object:
        """:meth:`restore` every string inside dicts, lists and tuples; dict keys are kept."""
        if isinstance(obj, str):
            return self.restore(obj)
        if isinstance(obj, dict):
            return {k: self.restore_obj(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.restore_obj(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self.restore_obj(v) for v in obj)
        return obj

    @property
    def counts(self) -> dict[str, int]:
        """Masked occurrences per entity type."""
        return dict(self._counts)

    @property
    def values(self) -> frozenset[str]:
        """Every original value this vault has seen, whatever the strategy."""
        return frozenset(self._values)

    def scrub(self, text: str) -> str:
        """Like :func:`scrub` with this vault's values, with the pattern compiled once."""
        if not self._values:
            return text
        if self._scrub_pattern is None:
            self._scrub_pattern = _alternation(self._values)
        return self._scrub_pattern.sub(REDACTED, text) if self._scrub_pattern else text

    def __repr__(self) -> str:
        return f"Vault(counts={dict(sorted(self._counts.items()))!r})"


def _alternation(values: Iterable[str]) -> re.Pattern[str] | None:
    # Longest first, so a value containing another one is replaced whole.
    ordered = sorted({v for v in values if v}, key=len, reverse=True)
    if not ordered:
        return None
    return re.compile("|".join(map(re.escape, ordered)))


def scrub(text: str, values: Iterable[str]) -> str:
    """Replace every occurrence of any of ``values`` in ``text`` by ``[REDACTED]`` (one pass)."""
    present = [v for v in values if v and v in text]
    if not present:
        return text
    if len(present) == 1:
        return text.replace(present[0], REDACTED)
    pattern = _alternation(present)
    assert pattern is not None
    return pattern.sub(REDACTED, text)


def _replacement(
    entity_type: str, value: str, vault: Vault, strategy: MaskStrategy, salt: bytes
) -> str:
    if strategy == "placeholder":
        return vault.placeholder_for(entity_type, value)
    vault.record(entity_type, value)
    if strategy == "redact":
        return f"[{entity_type}]"
    if strategy == "hash":
        # blake2b keys are at most 64 bytes; a longer salt is reduced to its own digest.
        key = salt if len(salt) <= 64 else hashlib.blake2b(salt).digest()
        digest = hashlib.blake2b(value.encode("utf-8"), key=key).hexdigest()
        return f"<{entity_type}:{digest[:12]}>"
    if strategy == "partial":
        # Below 8 characters, showing the last 4 would give away most of the value.
        return "****" + value[-4:] if len(value) >= 8 else "****"
    raise ValueError(f"unknown mask strategy: {strategy!r}")


def mask_text(
    text: str,
    detector: PIIDetector,
    vault: Vault,
    strategy: MaskStrategy = "placeholder",
    salt: bytes = b"",
) -> str:
    """Replace every finding of ``detector`` in ``text``; counts are recorded in ``vault``."""
    findings = detector.detect(text)
    if not findings:
        return text
    parts: list[str] = []
    pos = 0
    for f in findings:
        parts.append(text[pos : f.start])
        parts.append(_replacement(f.entity_type, f.text, vault, strategy, salt))
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts)


@functools.lru_cache(maxsize=32)
def _compile_key_rules(
    rules: tuple[tuple[str, str], ...],
) -> tuple[re.Pattern[str], dict[str, str]]:
    by_name = {_NOT_KEY_CHAR.sub("", name.lower()): entity for name, entity in rules}
    names = sorted(by_name, key=len, reverse=True)
    return re.compile(f"(?:{'|'.join(map(re.escape, names))})$"), by_name


_DEFAULT_RULES = _compile_key_rules(tuple(DEFAULT_SENSITIVE_KEYS.items()))


class _KeyRules:
    """Field-name rules: which keys hold a value to be masked whole, and as what."""

    __slots__ = ("_by_name", "_pattern")

    def __init__(self, sensitive_keys: Mapping[str, str]) -> None:
        if sensitive_keys is DEFAULT_SENSITIVE_KEYS:
            self._pattern, self._by_name = _DEFAULT_RULES
        elif sensitive_keys:
            self._pattern, self._by_name = _compile_key_rules(tuple(sensitive_keys.items()))
        else:
            self._pattern, self._by_name = re.compile(r"(?!)"), {}

    def entity_for(self, key: object) -> str | None:
        if not isinstance(key, str):
            return None
        m = self._pattern.search(_NOT_KEY_CHAR.sub("", key.lower()))
        return self._by_name[m.group()] if m else None


def _mask_whole(
    obj: object, entity_type: str, vault: Vault, strategy: MaskStrategy, salt: bytes
) -> object:
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, str):
        return _replacement(entity_type, obj, vault, strategy, salt) if obj else obj
    if isinstance(obj, int | float):
        return _replacement(entity_type, str(obj), vault, strategy, salt)
    if isinstance(obj, dict):
        return {k: _mask_whole(v, entity_type, vault, strategy, salt) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        masked = [_mask_whole(v, entity_type, vault, strategy, salt) for v in obj]
        return masked if isinstance(obj, list) else tuple(masked)
    return obj


def mask_json(
    obj: object,
    detector: PIIDetector,
    vault: Vault,
    strategy: MaskStrategy = "placeholder",
    salt: bytes = b"",
    sensitive_keys: Mapping[str, str] = DEFAULT_SENSITIVE_KEYS,
    keep_keys: frozenset[str] = frozenset(),
) -> object:
    """Return a masked copy of a decoded JSON value; keys are kept unchanged.

    Strings are masked by the detector. A value under a sensitive key (see
    :data:`DEFAULT_SENSITIVE_KEYS`) is masked whole, strings and numbers alike. A value under
    a key in ``keep_keys`` (exact name, any depth) is left as it is.
    """
    rules = _KeyRules(sensitive_keys)

    def walk(node: object) -> object:
        if isinstance(node, str):
            return mask_text(node, detector, vault, strategy, salt)
        if isinstance(node, dict):
            out: dict[object, object] = {}
            for key, value in node.items():
                if key in keep_keys:
                    out[key] = value
                    continue
                entity = rules.entity_for(key)
                out[key] = (
                    walk(value)
                    if entity is None
                    else _mask_whole(value, entity, vault, strategy, salt)
                )
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, tuple):
            return tuple(walk(v) for v in node)
        return node

    return walk(obj)


def mask_form(
    body: str,
    detector: PIIDetector,
    vault: Vault,
    strategy: MaskStrategy = "placeholder",
    salt: bytes = b"",
    sensitive_keys: Mapping[str, str] = DEFAULT_SENSITIVE_KEYS,
    keep_keys: frozenset[str] = frozenset(),
) -> str:
    """Mask an ``application/x-www-form-urlencoded`` body field by field.

    Only the pairs whose value changes are re-encoded; every other byte is kept as it was.
    Fields named in ``keep_keys`` are left as they are.
    """
    if not body:
        return body
    rules = _KeyRules(sensitive_keys)
    pairs = body.split("&")
    changed = False
    for i, pair in enumerate(pairs):
        raw_name, sep, raw_value = pair.partition("=")
        if not sep or not raw_value:
            continue
        # Same decoding as urllib.parse.parse_qsl(keep_blank_values=True).
        value = unquote_plus(raw_value, errors="replace")
        name = unquote_plus(raw_name, errors="replace")
        if name in keep_keys:
            continue
        entity = rules.entity_for(name)
        if entity is None:
            masked = mask_text(value, detector, vault, strategy, salt)
        else:
            masked = _replacement(entity, value, vault, strategy, salt)
        if masked != value:
            pairs[i] = f"{raw_name}={quote_plus(masked)}"
            changed = True
    return "&".join(pairs) if changed else body


def mask_query(
    query_string: str,
    detector: PIIDetector,
    vault: Vault,
    strategy: MaskStrategy = "placeholder",
    salt: bytes = b"",
    sensitive_keys: Mapping[str, str] = DEFAULT_SENSITIVE_KEYS,
    keep_keys: frozenset[str] = frozenset(),
) -> str:
    """Mask a URL query string (without the leading ``?``); same rules as :func:`mask_form`."""
    return mask_form(query_string, detector, vault, strategy, salt, sensitive_keys, keep_keys)
