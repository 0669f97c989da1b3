"""Entities recognised by a format *and* a context: dates of birth, passports, driver licences,
UK National Insurance numbers, URLs carrying credentials (and, opt-in, every URL).

A date, or a 6-9 character code, is PII only when the text says what it is: each finder looks
for its context words first (one case-insensitive search, skipped when a cheap substring test
fails) and only then for the value shortly after (or, for dates, shortly before) them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = [
    "NINO_AFTER_FIRST_DIGIT",
    "find_dates_of_birth",
    "find_driver_licenses",
    "find_in_context",
    "find_passports",
    "find_uk_nino",
    "find_url_credentials",
    "find_urls",
    "lower_aligned",
]

Span = tuple[int, int]

_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DATE = re.compile(
    r"(?<![\w.-])(?:"
    r"\d{4}[-/.]\d\d?[-/.]\d\d?"  # 1985-01-01
    r"|\d\d?[-/.]\d\d?[-/.](?:\d{4}|\d\d)"  # 17/06/1976, 02.12.1979, 11/22/72
    rf"|\d\d?(?:st|nd|rd|th)?[ -](?:of[ ])?{_MONTH}\.?,?[ -]\d{{4}}"  # 15th June 1991, 22-nov-1972
    rf"|{_MONTH}\.?[ ]\d\d?(?:st|nd|rd|th)?,?[ ]\d{{4}}"  # April 12, 1990
    r")(?![\w-]|[./]\d)",
    re.IGNORECASE,
)
_BIRTH = re.compile(
    r"(?:\bborn\b|birth|\bdob\b|\bd\.o\.b\b\.?|\bgeboren|\bnée?\b|\bnacid[oa]|nacimiento|naissance)",
    re.IGNORECASE,
)
_BIRTH_AFTER = 40  # characters from the context word to the date
_BIRTH_BEFORE = 30  # "1985-01-01 is my birthday"
_CLAUSE_BREAK = re.compile(r"[,;!?\n]|\.\s+[A-Z]")


def _near(
    text: str,
    context: re.Pattern[str],
    value: re.Pattern[str],
    after: int,
    before: int,
    contexts: Iterator[re.Match[str]] | None = None,
) -> Iterator[Span]:
    seen = -1
    for c in context.finditer(text) if contexts is None else contexts:
        for m in value.finditer(text, c.end(), min(len(text), c.end() + after)):
            if m.start() >= seen and _CLAUSE_BREAK.search(text, c.end(), m.start()) is None:
                seen = m.end()
                yield m.span()
                break
        else:
            if before:
                lowest = max(0, c.start() - before)
                for m in value.finditer(text, lowest, c.start()):
                    gap = text[m.end() : c.start()]
                    if m.start() >= seen and _CLAUSE_BREAK.search(gap) is None:
                        seen = m.end()
                        yield m.span()


# Substring tests on the lower-cased text, far cheaper than a case-insensitive regex over it;
# a hint may pass where the context regex then finds nothing ("pass" in "password").
_BIRTH_HINTS = ("born", "birth", "dob", "d.o.b", "geboren", "né", "naci", "naissance")
_PASSPORT_HINTS = ("pass", "pasa")
# What every match of a context regex starts with, lower-cased (each _BIRTH alternative starts
# with a birth hint).
_PASSPORT_ANCHORS = ("pass", "pasa", "reisepass")
_LICENSE_ANCHORS = ("driv", "dl", "licen")


# Characters the case-insensitive regex engine equates with a lower-case letter although
# str.lower() does not map them to it: "ı" and "İ" with "i", "ſ" with "s".
_FOLDED_APART = re.compile("[\u0130\u0131\u017f]")


def lower_aligned(text: str, low: str | None = None) -> str | None:
    """``text`` lower-cased (``low``, when given, is ``text.lower()``) if a case-insensitive
    match of lower-case literals in ``text`` is, position for position, a plain match in
    the copy: true of every ASCII text, and of others where lower() maps each character
    to one and none of them is one that the regex engine folds differently; else None."""
    if low is None:
        low = text.lower()
    if text.isascii():
        return low
    if len(low) != len(text) or _FOLDED_APART.search(text) is not None:
        return None
    return low


def _anchored(
    text: str, low: str, context: re.Pattern[str], anchors: tuple[str, ...]
) -> Iterator[re.Match[str]]:
    """``context.finditer(text)`` where ``low`` is ``lower_aligned(text)``, in which a
    case-insensitive match is a plain equality: the regex is tried only where one of
    ``anchors`` starts, instead of at every character (a case-insensitive alternation costs
    tens of nanoseconds a character: 100 µs on a 600-character profile)."""
    starts: list[int] = []
    for anchor in anchors:
        i = low.find(anchor)
        while i != -1:
            starts.append(i)
            i = low.find(anchor, i + 1)
    starts.sort()
    match = context.match
    end = 0
    for i in starts:
        if i >= end and (m := match(text, i)) is not None:
            end = m.end()
            yield m


def _any_in(text: str, words: tuple[str, ...]) -> bool:
    return any(map(text.__contains__, words))


def _has_license_hint(text: str, low: str) -> bool:
    return "licen" in low or "DL" in text


def _has_digit(text: str) -> bool:
    # Ten substring tests (memchr) beat one regex search, which steps through every character.
    return any(map(text.__contains__, "0123456789"))


# Digits with at most 100 other characters between them: every context word of a value is
# within _NEAR_DIGITS characters of one of these clusters.
_DIGIT_CLUSTER = re.compile(r"[0-9](?:[^0-9]{0,100}[0-9])*+")
_NEAR_DIGITS = 64
_LONG_TEXT = 2048


def _hint_text(text: str) -> str:
    """The lower-cased text the hints are looked for in: in a long text, only the parts near
    digits (substring search slows down on long repetitive texts such as "aaaa…")."""
    if len(text) <= _LONG_TEXT:
        return text.lower()
    size = len(text)
    parts = [
        text[max(0, m.start() - _NEAR_DIGITS) : min(size, m.end() + _NEAR_DIGITS)]
        for m in _DIGIT_CLUSTER.finditer(text)
    ]
    return "\n".join(parts).lower()


def find_in_context(text: str) -> list[tuple[str, int, int]]:
    """DATE_OF_BIRTH, PASSPORT and US_DRIVER_LICENSE spans, sorted by type then start.

    All three values hold digits; the text is lower-cased once for the three sets of hints.
    """
    if not _has_digit(text):
        return []
    return find_in_context_with_digits(text)


# Every hint above in one search: on a short text, one regex call costs less than ten
# substring tests, each a Python-level call; on a long one the substring tests win.
_SHORT_TEXT = 256
_ANY_HINT = re.compile(
    "|".join(re.escape(h) for h in (*_BIRTH_HINTS, *_PASSPORT_HINTS, "licen", "dl"))
)


def find_in_context_with_digits(text: str) -> list[tuple[str, int, int]]:
    """:func:`find_in_context` for a text known to hold a digit."""
    if len(text) <= _SHORT_TEXT:
        low = text.lower()
        if _ANY_HINT.search(low) is None:
            return []
    else:
        low = _hint_text(text)
    found: list[tuple[str, int, int]] = []
    # Up to _LONG_TEXT characters ``low`` is the whole text lower-cased.
    aligned = lower_aligned(text, low) if len(text) <= _LONG_TEXT else None
    if _any_in(low, _BIRTH_HINTS):
        found.extend(("DATE_OF_BIRTH", s, e) for s, e in _dates_of_birth(text, aligned))
    if _any_in(low, _PASSPORT_HINTS):
        found.extend(("PASSPORT", s, e) for s, e in _passports(text, aligned))
    if _has_license_hint(text, low):
        found.extend(("US_DRIVER_LICENSE", s, e) for s, e in _driver_licenses(text, aligned))
    return found


def _dates_of_birth(text: str, low: str | None = None) -> Iterator[Span]:
    contexts = None if low is None else _anchored(text, low, _BIRTH, _BIRTH_HINTS)
    return _near(text, _BIRTH, _DATE, _BIRTH_AFTER, _BIRTH_BEFORE, contexts)


def find_dates_of_birth(text: str) -> Iterator[Span]:
    if not _any_in(text.lower(), _BIRTH_HINTS):
        return iter(())
    return _dates_of_birth(text)


# A passport number: 6-9 letters and digits with at least one digit ("X1234567", "123456789").
_DOC_NUMBER = re.compile(r"(?<![\w-])(?=[A-Z0-9]*\d)[A-Z0-9]{6,9}(?![\w-])")
_PASSPORT = re.compile(r"passport|pasaporte|passeport|reisepass", re.IGNORECASE)
# US driver licence numbers: 1-9 letters/digits with at least 4 digits, per state format.
_LICENSE_NUMBER = re.compile(r"(?<![\w-])(?=(?:[A-Z*-]*\d){4})[A-Z0-9][A-Z0-9-]{3,18}(?![\w-])")
_LICENSE = re.compile(
    r"driver'?s?\s+licen[cs]e|driving\s+licen[cs]e|\bDL\b|\bDLN\b|licen[cs]e\s+(?:no|number|#)",
    re.IGNORECASE,
)
_DOC_AFTER = 30


def _passports(text: str, low: str | None = None) -> Iterator[Span]:
    contexts = None if low is None else _anchored(text, low, _PASSPORT, _PASSPORT_ANCHORS)
    return _near(text, _PASSPORT, _DOC_NUMBER, _DOC_AFTER, 0, contexts)


def _driver_licenses(text: str, low: str | None = None) -> Iterator[Span]:
    contexts = None if low is None else _anchored(text, low, _LICENSE, _LICENSE_ANCHORS)
    return _near(text, _LICENSE, _LICENSE_NUMBER, _DOC_AFTER, 0, contexts)


def find_passports(text: str) -> Iterator[Span]:
    if not _any_in(text.lower(), _PASSPORT_HINTS):
        return iter(())
    return _passports(text)


def find_driver_licenses(text: str) -> Iterator[Span]:
    if not _has_license_hint(text, text.lower()):
        return iter(())
    return _driver_licenses(text)


# UK National Insurance number: two letters (not D, F, I, Q, U, V; second not O; not BG, GB,
# KN, NK, NT, TN, ZZ), six digits, suffix A-D. The compact form needs a context word nearby;
# the spaced forms ("AZ 12 34 56 A", "AZ 123 456 A") are distinctive on their own.
# Found at its digits (the scan stops at digits only); the letters before are checked after.
# After the first digit (the digit-led scan of detectors.py has consumed it already).
NINO_AFTER_FIRST_DIGIT = (
    r"(?:(?<=[A-Z]\d)|(?<=[A-Z] \d))\d(?:[ ]\d\d[ ]\d\d[ ]|\d[ ]\d{3}[ ]|\d{4}[ ]?)[A-D](?!\w)"
)
_NINO = re.compile(r"\d" + NINO_AFTER_FIRST_DIGIT)
_NINO_PREFIX = re.compile(r"(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]")
_NINO_CONTEXT = re.compile(r"\bNI\b|\bNINO\b|national\s+insurance", re.IGNORECASE)
_NINO_CONTEXT_WINDOW = 80


def nino_start(text: str, digits: int, end: int) -> int | None:
    """Start of the UK NINO whose digits start at ``digits`` and which ends at ``end``."""
    spaced = digits >= 3 and text[digits - 1] == " "
    start = digits - 3 if spaced else digits - 2
    if (
        start < 0
        or (start and (text[start - 1].isalnum() or text[start - 1] == "_"))
        or _NINO_PREFIX.match(text, start, start + 2) is None
    ):
        return None
    # The compact form needs a context word; the spaced forms are distinctive on their own.
    if (spaced and " " in text[digits:end]) or _NINO_CONTEXT.search(
        text, max(0, start - _NINO_CONTEXT_WINDOW), start
    ):
        return start
    return None


def find_uk_nino(text: str) -> Iterator[Span]:
    for m in _NINO.finditer(text):
        start = nino_start(text, m.start(), m.end())
        if start is not None:
            yield start, m.end()


# scheme://user:password@host — the whole URL is reported (host and path included).
_URL_CREDENTIALS = re.compile(
    r"\b[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s/?#@:\"'<>]+:[^\s/?#@\"'<>]+@[^\s\"'<>]+"
)


def find_url_credentials(text: str) -> Iterator[Span]:
    for m in _URL_CREDENTIALS.finditer(text):
        end = m.end()
        while end > m.start() and text[end - 1] in ".,;:!?)]}":
            end -= 1
        yield m.start(), end


# Every URL (opt-in): a scheme and "://", or "www." and a dotted host; up to whitespace, quotes
# or angle brackets, without trailing punctuation (and without a closing parenthesis that
# the URL did not open: "(see https://example.org/a)").
_URL = re.compile(
    r"(?:[A-Za-z](?<![\w.+-][A-Za-z])[A-Za-z0-9+.-]{1,15}://(?=[^\s\"'<>/])"
    r"|w(?<![\w.@-]w)ww\.(?=[A-Za-z0-9-]+\.[A-Za-z]))"
    r"[^\s\"'<>]+",
    re.ASCII,
)
_URL_TRAILING = ".,;:!?]}'\""


def find_urls(text: str) -> Iterator[Span]:
    if "://" not in text and "www." not in text:
        return
    for m in _URL.finditer(text):
        start, end = m.span()
        while end > start:
            last = text[end - 1]
            if last in _URL_TRAILING or (
                last == ")" and text.count("(", start, end) < text.count(")", start, end)
            ):
                end -= 1
            else:
                break
        if end - start > 8:
            yield start, end
