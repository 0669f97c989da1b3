"""Masking strategies, the per-request reversible :class:`Vault`, and structured-body walkers."""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote_plus, unquote_plus

from .detectors import Finding, PIIDetector

__all__ = [
    "DEFAULT_SENSITIVE_KEYS",
    "MaskStrategy",
    "Vault",
    "mask_form",
    "mask_json",
    "mask_json_text",
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

# Names that look like secrets but are the app's own plumbing: anti-forgery tokens (Django's
# csrfmiddlewaretoken and X-CSRFToken, Flask-WTF's csrf_token, Rails' authenticity_token,
# Express' _csrf, Angular's X-XSRF-TOKEN) and pagination cursors (page_token). Field-name rules
# never match them, and masking for the app leaves their values alone.
_EXEMPT_KEY = re.compile(r"csrf|xsrf|authenticitytoken$|pagetoken$|continuationtoken$")

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
        self._values: dict[str, str] = {}  # value -> entity type of its first sighting
        self._next: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._scrub_pattern: re.Pattern[str] | None = None

    def record(self, entity_type: str, value: str) -> None:
        """Count one masked occurrence and remember the value (for :meth:`scrub`)."""
        self._counts[entity_type] += 1
        if value not in self._values:
            self._values[value] = entity_type
            self._scrub_pattern = None

    def known_findings(self, text: str) -> list[Finding]:
        """Every occurrence of a value this vault has masked, as findings (one pass): what
        restoration put back is found again even where a detector would not see it
        (``ID536221234``)."""
        if not self._values:
            return []
        if self._scrub_pattern is None:
            self._scrub_pattern = _alternation(self._values)
        if self._scrub_pattern is None:
            return []
        values = self._values
        return [
            Finding(values[m.group()], m.start(), m.end(), m.group(), 1.0)
            for m in self._scrub_pattern.finditer(text)
        ]

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
        # Keyed: without the key, a phone number or an SSN is brute-forced from its digest.
        if not salt:
            raise ValueError('strategy "hash" needs a key (salt_env)')
        digest = hmac.new(salt, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"<{entity_type}:{digest.hexdigest()[:32]}>"
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
    *,
    known: bool = False,
) -> str:
    """Replace every finding of ``detector`` in ``text``; counts are recorded in ``vault``.
    With ``known``, every value ``vault`` already masked is replaced too, wherever it is."""
    findings = detector.detect(text)
    if known:
        findings = _merge(findings, vault.known_findings(text))
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


def _merge(first: list[Finding], second: list[Finding]) -> list[Finding]:
    """Both lists sorted and non-overlapping in themselves; keep the earlier (then longer)
    finding where two overlap. Linear after the sort."""
    if not second:
        return first
    if not first:
        return second
    merged = sorted([*first, *second], key=lambda f: (f.start, -f.end))
    out: list[Finding] = []
    end = -1
    for f in merged:
        if f.start >= end:
            out.append(f)
            end = f.end
    return out


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
        normalised = _NOT_KEY_CHAR.sub("", key.lower())
        if _EXEMPT_KEY.search(normalised):
            return None
        m = self._pattern.search(normalised)
        return self._by_name[m.group()] if m else None


def is_exempt_key(key: str) -> bool:
    """An anti-forgery or pagination field: never masked by name, left alone for the app."""
    return _EXEMPT_KEY.search(_NOT_KEY_CHAR.sub("", key.lower())) is not None


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


class Stopwatch:
    """Cooperative deadline for a masking job that may run in an abandoned worker thread:
    checked between fields, so a job whose request has given up stops soon after."""

    __slots__ = ("_calls", "_stop_at")

    def __init__(self, stop_at: float | None) -> None:
        self._stop_at = stop_at
        self._calls = 0

    def check(self) -> None:
        if self._stop_at is None:
            return
        self._calls += 1
        if self._calls & 63 == 0 and time.monotonic() > self._stop_at:
            raise TimeoutError("masking ran out of time")


_NO_STOP = Stopwatch(None)


def mask_json(
    obj: object,
    detector: PIIDetector,
    vault: Vault,
    strategy: MaskStrategy = "placeholder",
    salt: bytes = b"",
    sensitive_keys: Mapping[str, str] = DEFAULT_SENSITIVE_KEYS,
    keep_keys: frozenset[str] = frozenset(),
) -> object:
    """Return a masked copy of a decoded JSON value.

    Strings and keys are masked by the detector, and so are numbers (a card number sent as a
    JSON number comes back as a masked string). A value under a sensitive key (see
    :data:`DEFAULT_SENSITIVE_KEYS`) is masked whole, strings and numbers alike. A value under
    a key in ``keep_keys`` (exact name, any depth) is left as it is.
    """
    rules = _KeyRules(sensitive_keys)

    def walk(node: object) -> object:
        if isinstance(node, str):
            return mask_text(node, detector, vault, strategy, salt)
        if isinstance(node, int | float) and not isinstance(node, bool):
            literal = str(node)
            masked = mask_text(literal, detector, vault, strategy, salt)
            return node if masked == literal else masked
        if isinstance(node, dict):
            out: dict[object, object] = {}
            for key, value in node.items():
                new_key = (
                    mask_text(key, detector, vault, strategy, salt) if isinstance(key, str) else key
                )
                if key in keep_keys:
                    out[new_key] = value
                    continue
                entity = rules.entity_for(key)
                out[new_key] = (
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


# One JSON token (of a document already validated by json.loads): a string (unrolled loop,
# linear), a number, a bare word (true/false/null/NaN/Infinity) or punctuation. Whitespace is
# skipped by finditer.
_JSON_TOKEN = re.compile(
    r'"[^"\\]*(?:\\.[^"\\]*)*"|-?[0-9][0-9.eE+\-]*|-?[A-Za-z]+|[{}\[\]:,]', re.S
)
_BAD_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def _json_string(value: str) -> str:
    # Raw characters where the text can carry them; escapes for lone surrogates that the
    # body's encoding could not (\udc80-\udcff stand for undecodable bytes and go back as they
    # came).
    return json.dumps(value, ensure_ascii=_BAD_SURROGATE.search(value) is not None)


def mask_json_text(
    text: str,
    detector: PIIDetector,
    vault: Vault,
    strategy: MaskStrategy = "placeholder",
    salt: bytes = b"",
    sensitive_keys: Mapping[str, str] = DEFAULT_SENSITIVE_KEYS,
    keep_keys: frozenset[str] = frozenset(),
    *,
    known: bool = False,
    stopwatch: Stopwatch = _NO_STOP,
) -> str:
    """Mask a JSON document in its text: only the masked string tokens, keys and numbers are
    replaced; every other character (number spelling, key order, duplicate keys, whitespace,
    escapes) stays as it was. Same rules as :func:`mask_json`; anti-forgery and pagination
    fields are left alone. ``text`` must be valid JSON (check with ``json.loads`` first). One
    pass over the text: linear in its length."""
    rules = _KeyRules(sensitive_keys)
    parts: list[str] = []
    pos = 0
    # Per open container: [is_object, expecting_key, inherited (entity, keep), next (entity, keep)]
    stack: list[list[Any]] = []
    top: tuple[str | None, bool] = (None, False)

    def value_context() -> tuple[str | None, bool]:
        if not stack:
            return top
        frame = stack[-1]
        return frame[3] if frame[0] else frame[2]  # type: ignore[no-any-return]

    def mask(value: str, entity: str | None) -> str:
        if entity is not None:
            return _replacement(entity, value, vault, strategy, salt) if value else value
        return mask_text(value, detector, vault, strategy, salt, known=known)

    for m in _JSON_TOKEN.finditer(text):
        token = m.group()
        first = token[0]
        if first == "{" or first == "[":
            context = value_context()
            stack.append([first == "{", first == "{", context, context])
            continue
        if first == "}" or first == "]":
            if stack:
                stack.pop()
            continue
        if first == ":":
            if stack:
                stack[-1][1] = False
            continue
        if first == ",":
            if stack and stack[-1][0]:
                stack[-1][1] = True
            continue
        stopwatch.check()
        if first == '"':
            value = json.loads(token) if "\\" in token else token[1:-1]
            frame = stack[-1] if stack else None
            if frame is not None and frame[0] and frame[1]:  # an object key
                entity, keep = frame[2]
                if keep or value in keep_keys or is_exempt_key(value):
                    frame[3] = (None, True)
                elif entity is not None:
                    frame[3] = (entity, False)
                else:
                    frame[3] = (rules.entity_for(value), False)
                if keep:
                    continue
                masked = mask(value, None)
            else:
                entity, keep = value_context()
                if keep:
                    continue
                masked = mask(value, entity)
            if masked != value:
                parts.append(text[pos : m.start()])
                parts.append(_json_string(masked))
                pos = m.end()
            continue
        if first == "-" or first.isdigit():
            entity, keep = value_context()
            if keep:
                continue
            masked = mask(token, entity)
            if masked != token:
                parts.append(text[pos : m.start()])
                parts.append(_json_string(masked))
                pos = m.end()
    if not parts:
        return text
    parts.append(text[pos:])
    return "".join(parts)


def mask_form(
    body: str,
    detector: PIIDetector,
    vault: Vault,
    strategy: MaskStrategy = "placeholder",
    salt: bytes = b"",
    sensitive_keys: Mapping[str, str] = DEFAULT_SENSITIVE_KEYS,
    keep_keys: frozenset[str] = frozenset(),
    *,
    stopwatch: Stopwatch = _NO_STOP,
) -> str:
    """Mask an ``application/x-www-form-urlencoded`` body field by field, names included.

    Only the pairs that change are re-encoded; every other byte is kept as it was (escapes
    that are not UTF-8 included). Fields named in ``keep_keys`` and anti-forgery fields are
    left as they are.
    """
    if not body:
        return body
    rules = _KeyRules(sensitive_keys)
    pairs = body.split("&")
    changed = False
    for i, pair in enumerate(pairs):
        stopwatch.check()
        raw_name, sep, raw_value = pair.partition("=")
        # Same decoding as urllib.parse.parse_qsl, but lossless: bytes that are not UTF-8
        # become lone surrogates and are encoded back to the same bytes.
        name = unquote_plus(raw_name, errors="surrogateescape")
        if name in keep_keys or is_exempt_key(name):
            continue
        masked_name = mask_text(name, detector, vault, strategy, salt)
        value = unquote_plus(raw_value, errors="surrogateescape")
        entity = rules.entity_for(name)
        masked: str
        if not value:
            masked = value
        elif entity is None:
            masked = mask_text(value, detector, vault, strategy, salt)
        else:
            masked = _replacement(entity, value, vault, strategy, salt)
        if masked != value or masked_name != name:
            new_name = raw_name if masked_name == name else _quote(masked_name)
            new_value = raw_value if masked == value else _quote(masked)
            pairs[i] = f"{new_name}{sep}{new_value}"
            changed = True
    return "&".join(pairs) if changed else body


def _quote(value: str) -> str:
    return quote_plus(value, errors="surrogateescape")


def mask_query(
    query_string: str,
    detector: PIIDetector,
    vault: Vault,
    strategy: MaskStrategy = "placeholder",
    salt: bytes = b"",
    sensitive_keys: Mapping[str, str] = DEFAULT_SENSITIVE_KEYS,
    keep_keys: frozenset[str] = frozenset(),
    *,
    stopwatch: Stopwatch = _NO_STOP,
) -> str:
    """Mask a URL query string (without the leading ``?``); same rules as :func:`mask_form`."""
    return mask_form(
        query_string, detector, vault, strategy, salt, sensitive_keys, keep_keys,
        stopwatch=stopwatch,
    )  # fmt: skip
