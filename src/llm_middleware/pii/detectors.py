"""Regex + checksum PII detectors: stdlib only, deterministic, no network.

Each built-in detector runs a cheap pre-filter (a substring test such as ``"@" in text``),
one compiled regex, and validates candidates in Python (Luhn, IBAN mod-97, ``ipaddress``,
SSN area/group rules, calling codes). Two decisions carry most of the speed:

* Phones, cards, SSNs, IPv4 addresses and IBANs share one regex, so the text is scanned once
  for all of them; ``Match.lastgroup`` says which shape matched.
* Patterns start with a character class and check what precedes it afterwards
  (``\\d(?<!\\w\\d)...`` rather than ``(?<!\\w)\\d...``): the regex engine then jumps from one
  candidate character to the next instead of trying an assertion at every position.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from . import context
from . import phone_regions as phone_regions_module
from .phones import find_phones

__all__ = [
    "BUILTIN_ENTITIES",
    "Detector",
    "Finding",
    "NerCallable",
    "PIIDetector",
    "make_detector",
    "register_detector",
    "unregister_detector",
]


@dataclass(frozen=True, slots=True, init=False)
class Finding:
    """One detected value; ``text`` is left out of ``repr`` so a logged finding leaks nothing."""

    entity_type: str
    start: int
    end: int
    text: str = field(repr=False)
    score: float

    def __init__(self, entity_type: str, start: int, end: int, text: str, score: float) -> None:
        # What the frozen dataclass's own __init__ does (it calls object.__setattr__, looked
        # up at run time, for each field) through the slots' descriptors: a third faster,
        # and every text with a value builds at least one.
        _set_entity_type(self, entity_type)
        _set_start(self, start)
        _set_end(self, end)
        _set_text(self, text)
        _set_score(self, score)


_SlotSetter = Callable[[Finding, Any], None]
_set_entity_type: _SlotSetter = Finding.__dict__["entity_type"].__set__
_set_start: _SlotSetter = Finding.__dict__["start"].__set__
_set_end: _SlotSetter = Finding.__dict__["end"].__set__
_set_text: _SlotSetter = Finding.__dict__["text"].__set__
_set_score: _SlotSetter = Finding.__dict__["score"].__set__


Finder = Callable[[str], Iterable[Finding]]
NerCallable = Callable[[str], Iterable[tuple[str, int, int, float]]]
Validator = Callable[[str], bool]
SpanFinder = Callable[[str], Iterable[tuple[int, int]]]


@dataclass(frozen=True, slots=True)
class Detector:
    """A finder and the entity types it can report.

    :class:`PIIDetector` skips it on text that lacks ``hint``, a substring such as ``"@"``,
    and, when ``digits`` is set, on text without a digit. ``near_digits`` says more: every
    value it finds holds a digit and its context lies within 128 characters before that digit
    and 64 after, so in a long text it is only run on those parts.
    """

    entity_types: frozenset[str]
    find: Finder
    hint: str = ""
    digits: bool = False
    near_digits: bool = False


_HAS_DIGIT = re.compile(r"[0-9]").search
# In a text longer than this, finders of values with digits only see the parts around digits:
# each of them would otherwise step through the whole text in a regex (a few ns a character),
# while finding the digits is ten memchr scans.
_LONG_TEXT = 2048
_BEFORE_DIGITS = 128  # the furthest context word: a NINO's, up to 80 characters before
_AFTER_DIGITS = 64  # a value's end after its last digit, "... is my birthday" after a date
_DIGITS = "0123456789"


def _digit_windows(text: str) -> list[tuple[int, int]] | None:
    """Spans of ``text`` around its digits, merged when they touch; None when digits are so
    dense (over one in 64 characters) that scanning the whole text is cheaper."""
    limit = len(text) >> 6
    positions: list[int] = []
    find = text.find
    for digit in _DIGITS:
        i = find(digit)
        while i != -1:
            positions.append(i)
            if len(positions) > limit:
                return None
            i = find(digit, i + 1)
    positions.sort()
    windows: list[tuple[int, int]] = []
    if not positions:
        return windows
    start = max(0, positions[0] - _BEFORE_DIGITS)
    end = positions[0] + 1 + _AFTER_DIGITS
    for i in positions:
        if i - _BEFORE_DIGITS > end:
            windows.append((start, end))
            start = i - _BEFORE_DIGITS
        end = i + 1 + _AFTER_DIGITS
    windows.append((start, min(end, len(text))))
    return windows


_START = attrgetter("start")
_NON_DIGITS = re.compile(r"[^0-9]+")


# --------------------------------------------------------------------------- EMAIL_ADDRESS

# Narrower than RFC 5322 on purpose: quotes, '=', '/', '?'... are rare inside real local parts
# but common right before an address ("email=jane@x.io", "'jane@x.io'").
# Letters include combining marks (Devanagari, Thai... vowel signs are not \w); a TLD may be
# punycode ("xn--p1ai").
_MARK = "\u0300-\u036f\u0900-\u0dff\u0e31-\u0e4e"
_EMAIL_LOCAL_RUN = re.compile(rf"[\w+%.{_MARK}-]*")
_EMAIL_DOMAIN = re.compile(
    rf"(?:[^\W_](?:[\w{_MARK}-]{{0,61}}(?:[^\W_]|[{_MARK}]))?\.)+"
    rf"(?:xn--[a-z0-9-]{{2,59}}|[^\W\d_](?:[^\W\d_]|[{_MARK}]){{1,62}})"
    # Digits may follow the TLD (a TLD is letters or punycode): "a@b.com123-45-6789" is an
    # address glued to the next value.
    rf"(?![^\W\d]|[{_MARK}-]|\.[^\W_])"
)
_AT_SIGNS = ("@", "\uff20")  # "＠", the full-width form
_EMAIL_MAX_LOCAL = 64
# The ASCII characters _EMAIL_LOCAL_RUN takes (its \w is [A-Za-z0-9_] in ASCII, the marks are
# not ASCII).
_EMAIL_LOCAL_ASCII = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+%.-"


def _local_run(text: str, lowest: int, at: int) -> int:
    """Length of the run of local-part characters ending at ``at``, from ``lowest`` on: what
    _EMAIL_LOCAL_RUN matches on the reversed slice, by a C-level rstrip when the run stops at
    an ASCII character (or the slice start), which is the exact answer there."""
    window = text[lowest:at]
    rest = window.rstrip(_EMAIL_LOCAL_ASCII)
    if rest and not rest[-1].isascii():  # a letter or mark of another script may go on
        run = _EMAIL_LOCAL_RUN.match(window[::-1])
        return run.end() if run else 0
    return len(window) - len(rest)


def _find_emails(text: str) -> list[Finding]:
    # Anchored on '@' (a fast substring search) rather than a regex tried at every word start:
    # the domain is matched forwards, the local part backwards (on the reversed prefix).
    # PIIDetector calls it only on texts with "@" (the full-width form has its own detector).
    return _find_emails_at(text, "@")


def _find_fullwidth_emails(text: str) -> list[Finding]:
    return _find_emails_at(text, "\uff20")


def _emails_glued_phones(sign: str, valid: Validator) -> Finder:
    def find(text: str) -> list[Finding]:
        return _find_emails_at(text, sign, valid)

    return find


def _find_emails_at(text: str, sign: str, valid_phone: Validator | None = None) -> list[Finding]:
    # A list built in place rather than a generator: no generator to create and resume.
    found: list[Finding] = []
    floor = 0
    at = text.find(sign)
    while at != -1:
        domain = _EMAIL_DOMAIN.match(text, at + 1)
        if domain is not None:
            lowest = max(floor, at - _EMAIL_MAX_LOCAL - 1)
            size = _local_run(text, lowest, at)
            start = at - size
            while start < at and text[start] == ".":
                start += 1
            local = text[start:at]
            # A run reaching the window start is too long, or glued to the previous address.
            # "user@host@example.org" is no address (two '@' in one token).
            if (
                local
                and local[-1] != "."
                and ".." not in local
                and (size < at - lowest or not lowest)
                and (not start or text[start - 1] not in _AT_SIGNS)
            ):
                end = domain.end()
                glued = _glued_after(text, end, valid_phone)
                if glued is not None:
                    found.append(Finding("EMAIL_ADDRESS", start, end, text[start:end], 0.9))
                    found.extend(glued)
                    floor = end
        at = text.find(sign, at + 1)
    return found


_NOTHING_GLUED: list[Finding] = []


def _glued_after(text: str, end: int, valid_phone: Validator | None) -> list[Finding] | None:
    """What follows an address ending at ``end``: ``None`` when it is no address (a TLD has
    no digits: "x@y.com2"), else the values glued to it ("x@y.com123-45-6789": the SSN). A
    phone's shape ends the address; with phone_regions the phone itself is reported only when
    valid there, like any other phone."""
    if end == len(text) or text[end] not in _DIGIT_SET:
        return _NOTHING_GLUED
    glued = _find_glued(text, end)
    if not glued or glued[0].start > end:
        return None
    return [
        f
        for f in glued
        if f.entity_type != "PHONE_NUMBER" or valid_phone is None or valid_phone(f.text)
    ]


_GLUED_MAX = 64
_DIGIT_SET = frozenset(_DIGITS)
_GLUED_TYPES = ("CREDIT_CARD", "US_SSN", "IP_ADDRESS", "PHONE_NUMBER")
_SPACE = re.compile(r"\s")


def _find_glued(text: str, start: int) -> list[Finding]:
    """Values glued to the end of an address, found as if a space stood between them (sorted
    by start): the digit finders do not start a value right after a letter (a SKU is no SSN),
    but no value glued to a TLD is part of the address."""
    space = _SPACE.search(text, start, start + _GLUED_MAX)
    if space is None and len(text) > start + _GLUED_MAX:
        return []  # a long token, which a value would be cut from
    tail = text[start : space.start() if space else len(text)]
    found = [
        Finding(f.entity_type, f.start + start, f.end + start, f.text, f.score)
        for f in (*_find_numeric(tail), *_find_phones(tail))
    ]
    found.sort(key=_START)
    return found


# -- obfuscated: "jane [at] example [dot] com", "jane(at)example.com", "jane@example[DOT]com"

# The '@' or "at" in brackets (any of [], (), {}, <>), or "at" between spaces.
_OBF_BRACKET_AT = re.compile(r"[\[({<][ \t]*(?:[aA][tT]|@)[ \t]*[\])}>][ \t]*")
# Lower case only: the search for a word of several characters steps through the whole text
# (a regex beats str.find here: 0.6 ns a character where " at " is absent).
_BARE_AT = re.compile(" at ")
_BARE_DOT = re.compile(" dot ")
_OBF_DOMAIN_MAX = 256
_OBF_DOT = r"(?:[ \t]*[\[({<][ \t]*(?:dot|\.)[ \t]*[\])}>][ \t]*|[ \t]+dot[ \t]+|\.)"
_OBF_DOMAIN = re.compile(
    rf"(?:[^\W_](?:[\w{_MARK}-]{{0,61}}(?:[^\W_]|[{_MARK}]))?{_OBF_DOT})+"
    rf"(?:xn--[a-z0-9-]{{2,59}}|[^\W\d_](?:[^\W\d_]|[{_MARK}]){{1,62}})"
    rf"(?![^\W\d]|[{_MARK}-]|{_OBF_DOT}[^\W_])",
    re.IGNORECASE,
)
_OBF_SEPARATOR = re.compile(
    r"[ \t]*[\[({<][ \t]*(?:dot|\.)[ \t]*[\])}>][ \t]*|[ \t]+dot[ \t]+", re.IGNORECASE
)
_OBF_CONTEXT = re.compile(r"\b(?:e-?mail|mail|courriel|correo)\b", re.IGNORECASE)
_OBF_CONTEXT_WINDOW = 40
_CLAUSE_BREAK = re.compile(r"[,;!?\n]|\.\s+[A-Z]")
# A bare "at" is mostly English ("look at example.com", "she works at acme.com"): it joins an
# address only after an e-mail word in the same sentence, or before a webmail domain with a
# local part no English word has (a digit, '.', '_', '+' or '-').
_WEBMAIL = frozenset(
    (
        "gmail.com", "googlemail.com", "yahoo.com", "ymail.com", "hotmail.com", "outlook.com",
        "live.com", "msn.com", "aol.com", "icloud.com", "me.com", "mac.com", "protonmail.com",
        "proton.me", "pm.me", "gmx.com", "gmx.net", "gmx.de", "web.de", "mail.ru", "yandex.ru",
        "yandex.com", "qq.com", "163.com", "126.com", "zoho.com", "fastmail.com", "tutanota.com",
        "hey.com", "hotmail.co.uk", "yahoo.co.uk", "btinternet.com", "orange.fr", "free.fr",
        "laposte.net", "t-online.de", "libero.it",
    )
)  # fmt: skip
_PRONOUNS = frozenset(
    ("me", "us", "him", "her", "them", "you", "it", "we", "i", "he", "she", "they", "one")
)
_LETTERS_ONLY = re.compile(r"[^\W\d_]+")


def _obfuscated_glued_phones(valid: Validator) -> Finder:
    def find(text: str) -> list[Finding]:
        return _find_obfuscated_emails(text, valid)

    return find


def _find_obfuscated_emails(text: str, valid_phone: Validator | None = None) -> list[Finding]:
    # Candidates from substring tests first: most texts have none, and a regex call costs more
    # than the rest of the e-mail detection. In a long text a regex steps through it faster
    # than str.find of a word.
    long = len(text) > _LONG_TEXT
    brackets = "[" in text or "(" in text or "{" in text or "<" in text
    bare = long or " at " in text
    plain_at = "@" in text
    if not (brackets or bare or (plain_at and " dot " in text)):
        return []
    ats: list[tuple[int, int]] = []  # where each '@', "[at]", " at " starts and ends
    if plain_at and (brackets or (_BARE_DOT.search(text) if long else " dot " in text)):
        i = text.find("@")
        while i != -1:
            # A plain address (no bracket or " dot " after the '@') is _find_emails' alone.
            after = text[i + 1 : i + _OBF_DOMAIN_MAX]
            if " dot " in after or (
                brackets and ("[" in after or "(" in after or "{" in after or "<" in after)
            ):
                ats.append((i, i + 1))
            i = text.find("@", i + 1)
    if brackets:
        ats.extend(m.span() for m in _OBF_BRACKET_AT.finditer(text))
    if bare:
        ats.extend((m.start() + 1, m.end()) for m in _BARE_AT.finditer(text))
    found: list[Finding] = []
    for at_start, at_end in ats:
        # Bounded: a bare " at " may also be a label ("x at a dot at dot at ...").
        domain = _OBF_DOMAIN.match(text, at_end, at_end + _OBF_DOMAIN_MAX)
        if domain is None:
            continue
        sign = text[at_start:at_end]
        bare_at = sign[0] in "aA"
        if sign == "@" and _OBF_SEPARATOR.search(domain[0]) is None:
            continue  # a plain address: _find_emails
        while sign != "@" and at_start and text[at_start - 1] in " \t":
            at_start -= 1
        lowest = max(0, at_start - _EMAIL_MAX_LOCAL - 1)
        start = at_start - _local_run(text, lowest, at_start)
        while start < at_start and text[start] == ".":
            start += 1
        local = text[start:at_start]
        if (
            not local
            or local[-1] == "."
            or ".." in local
            or at_start - start > _EMAIL_MAX_LOCAL
            or (start and text[start - 1] in _AT_SIGNS)
        ):
            continue
        if bare_at and not _bare_at_is_address(text, start, local, domain[0]):
            continue
        end = domain.end()
        glued = _glued_after(text, end, valid_phone)  # as for a plain address
        if glued is not None:
            found.append(
                Finding("EMAIL_ADDRESS", start, end, text[start:end], 0.8 if bare_at else 0.9)
            )
            found.extend(glued)
    return found


def _bare_at_is_address(text: str, start: int, local: str, domain: str) -> bool:
    if local.lower() in _PRONOUNS:
        return False
    lowest = max(0, start - _OBF_CONTEXT_WINDOW - 8)
    if any(
        start - c.end() <= _OBF_CONTEXT_WINDOW
        and _CLAUSE_BREAK.search(text, c.end(), start + 1) is None
        for c in _OBF_CONTEXT.finditer(text, lowest, start)
    ):
        return True
    plain = _OBF_SEPARATOR.sub(".", domain).lower()
    return plain in _WEBMAIL and _LETTERS_ONLY.fullmatch(local) is None


# --------------------------------------------------------------------------- digit-led entities

# One regex, one scan, for every shape that starts with a digit, a capital (IBAN), "(" or "+"
# (phones). No match starts right after a word character, ".", "+" or "-", nor a digit right
# after "::" or "<digit>:" (the end of an IPv6 address or a time: "::1 415-555-0132").
# An IBAN is found at its check digits (the scan only stops at digits), its country code
# being the two capitals before them.
_IBAN_SHAPE = (
    r"(?<=[A-Za-z][A-Za-z]\d)(?<![\w.+-][A-Za-z][A-Za-z]\d)"
    r"(?P<iban>\d(?:[ -]?[A-Za-z0-9]{4}){2,8}(?:[ -]?[A-Za-z0-9]{1,3})?)(?![A-Za-z0-9])"
)
_DIGIT_LED_SHAPES = (
    r"(?P<ipv4>\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3})(?![\w]|\.\d)",
    r"(?P<ssn>\d\d(?P<sep>[- .])\d\d(?P=sep)\d{4})(?![\w]|[.-]\d)",
    # Any 13+ digits with single space/dash separators; _find_cards_in_run sorts it out.
    # The look-ahead (12 more characters that a card run can hold) turns the short digit runs
    # of most texts away before the repeated group, the costliest part of the scan.
    r"(?=[0-9 ./-]{12})(?P<card>(?:(?:[ -]{1,2}|[./])?\d){12,})(?![\w]|\.\d)",
    r"(?P<bare9>\d{8})(?![\w]|-\d)",
)


# A UK NINO is found at its digits too, its letters being checked afterwards.
_NINO_SHAPE = rf"(?P<nino>{context.NINO_AFTER_FIRST_DIGIT})"


def _numeric_pattern(digit_led: Iterable[str]) -> re.Pattern[str]:
    # No shape starts right after a digit: one look-behind rejects the digits inside a run
    # before the shapes' own look-behinds are tried.
    return re.compile(
        r"[0-9](?<![0-9][0-9])(?:"
        rf"{_NINO_SHAPE}|{_IBAN_SHAPE}|(?<![\w.+-]\d)(?<![0-9:]:\d)(?:{'|'.join(digit_led)}))",
        re.ASCII,
    )


_NUMERIC = _numeric_pattern(_DIGIT_LED_SHAPES)
# For what a card run holds besides its cards ("4111 1111 1111 1111 536-22-1234").
_NUMERIC_NO_CARD = _numeric_pattern(s for s in _DIGIT_LED_SHAPES if "<card>" not in s)


def _ipv4_valid(candidate: str) -> bool:
    """What ``ipaddress.IPv4Address`` accepts, for a match of the ipv4 shape (four dotted
    groups of one to three ASCII digits): every octet at most 255, no leading zero. A tenth
    of the constructor's time (its exceptions and objects), for every dotted quad."""
    for octet in candidate.split("."):
        if (octet[0] == "0" and len(octet) > 1) or int(octet) > 255:
            return False
    return True


# -- US_SSN

_SSN_CONTEXT = re.compile(r"\b(?:ssns?\b|ss#|social\s+security|itin\b)", re.IGNORECASE)
_SSN_CONTEXT_WINDOW = 30
_SENTENCE_BREAK = re.compile(r"[.!?]\s+[A-Z]|\n")


def _ssn_valid(digits: str) -> bool:
    area = digits[:3]
    return (
        area != "000"
        and area != "666"
        and area[0] != "9"
        and digits[3:5] != "00"
        and digits[5:] != "0000"
        and digits.count(digits[0]) != 9
    )


def _ssn_plausible(digits: str) -> bool:
    # After "SSN:": any area but 000, also 9xx (ITINs) and "111-11-1111"-style examples.
    area = digits[:3]
    return area != "000" and area != "666" and digits[3:5] != "00" and digits[5:] != "0000"


def _ssn_context_near(text: str, start: int) -> bool:
    # A context word ("ssn", "social security") shortly before the number, same sentence.
    lowest = max(0, start - _SSN_CONTEXT_WINDOW - 20)
    # Every match holds "ss", "social" or "itin" in the lower-cased window (when that copy
    # is aligned, see context.lower_aligned); without one, the regex (3 us over 50
    # characters, for every nine-digit number) cannot match.
    near = context.lower_aligned(text[lowest:start])
    if near is not None and "ss" not in near and "social" not in near and "itin" not in near:
        return False
    return any(
        start - c.end() <= _SSN_CONTEXT_WINDOW
        and _SENTENCE_BREAK.search(text, c.end(), start) is None
        for c in _SSN_CONTEXT.finditer(text, lowest, start)
    )


# -- CREDIT_CARD

_LUHN_DOUBLE = str.maketrans("0123456789", "0246813579")  # digit -> digit sum of 2 * digit


def _luhn_valid(digits: str) -> bool:
    summed = digits[-1::-2] + digits[-2::-2].translate(_LUHN_DOUBLE)
    return (sum(summed.encode()) - 48 * len(summed)) % 10 == 0


def _card_brand_valid(digits: str) -> bool:
    # Issuer identification numbers (ISO/IEC 7812 ranges in use); prefixes of equal length
    # compare as strings exactly as they would as numbers.
    n = len(digits)
    first = digits[0]
    if first == "4":  # Visa
        return n == 16 or n == 13 or n == 19
    if first == "5":  # Mastercard 51-55; Maestro 50, 56-59; Dankort 5019
        if "1" <= digits[1] <= "5":
            return n == 16
        return 12 <= n <= 19
    if first == "2":
        four = digits[:4]
        if "2221" <= four <= "2720":  # Mastercard 2-series
            return n == 16
        if "2200" <= four <= "2204":  # Mir
            return 16 <= n <= 19
        return four == "2131" and n == 15  # JCB
    if first == "3":
        two = digits[:2]
        if two == "34" or two == "37":  # Amex
            return n == 15
        if two == "36" or two == "38" or two == "39" or "300" <= digits[:3] <= "305":  # Diners
            return 14 <= n <= 19
        return "3528" <= digits[:4] <= "3589" and 15 <= n <= 19  # JCB
    if first == "6":  # Maestro 6x, Discover, UnionPay, RuPay, Troy, InstaPayment
        return 12 <= n <= 19
    if first == "1":  # UATP (15 digits), JCB 1800
        return n == 15
    if first == "8":  # RuPay 81, 82; UnionPay 81
        return (digits[1] == "1" or digits[1] == "2") and n == 16
    if first == "9":  # Troy 9792
        return digits[:4] == "9792" and n == 16
    return False


_CARD_GROUPS = re.compile(r"[0-9]+")


def _card_groups(value: str) -> list[str] | None:
    """The digit groups of a card run written with one separator kind (" ", "-", ".", "/",
    two spaces), or None when it mixes them."""
    groups = _CARD_GROUPS.findall(value)
    sep = value[len(groups[0]) : value.index(groups[1], len(groups[0]))]
    return groups if sep.join(groups) == value else None


def _card_valid(value: str) -> bool:
    # One block of digits, or a 4-digit first group, 4-6 digit middle ones, one separator kind.
    if value.isdigit():
        digits = value
    else:
        groups = _card_groups(value)
        if groups is None or len(groups[-1]) > 6 or len(groups[0]) != 4:
            return False
        for group in groups[1:-1]:
            if not 4 <= len(group) <= 6:
                return False
        digits = "".join(groups)
    return 13 <= len(digits) <= 19 and _card_brand_valid(digits) and _luhn_valid(digits)


# After a payment-card word (same clause), a Luhn-valid number written like a card is masked
# even outside the issuer table (private-label and new ranges; placeholders such as
# "0000 0000 0000 0000" cost nothing). Luhn stays required: the labelled sources reject
# Luhn-invalid numbers after "Credit card:" (measured: 1 card gained for 4 false positives).
# Not after "card" alone (gift, SIM, library cards).
_CARD_CONTEXT = re.compile(
    r"\b(?:credit|debit|payment|bank|charge)[ -]?cards?\b|\bcc\s*(?:#|no\b|num)"
    r"|\bkreditkarte|\bcarte\s+(?:bancaire|de\s+cr[ée]dit)|\btarjeta\s+de\s+cr[ée]dito",
    re.IGNORECASE,
)
_CARD_CONTEXT_WINDOW = 40
_CARD_SHAPES = ((4, 4, 4, 4), (4, 6, 5))


def _card_shaped(value: str) -> bool:
    # 16 digits (as one block or 4-4-4-4) or 15 (one block or Amex's 4-6-5), one separator
    # kind, Luhn-valid.
    if value.isdigit():
        digits = value
    else:
        groups = _card_groups(value)
        if groups is None or tuple(map(len, groups)) not in _CARD_SHAPES:
            return False
        digits = "".join(groups)
    return (len(digits) == 15 or len(digits) == 16) and _luhn_valid(digits)


def _card_context_near(text: str, start: int) -> bool:
    lowest = max(0, start - _CARD_CONTEXT_WINDOW - 20)
    return any(
        start - c.end() <= _CARD_CONTEXT_WINDOW
        and _CLAUSE_BREAK.search(text, c.end(), start + 1) is None
        for c in _CARD_CONTEXT.finditer(text, lowest, start)
    )


def _find_cards_in_run(text: str, run_start: int, run_end: int) -> Iterator[Finding]:
    found = False
    for card in _cards_in_run(text, run_start, run_end, _card_valid):
        found = True
        yield card
    if not found and _card_context_near(text, run_start):
        yield from _cards_in_run(text, run_start, run_end, _card_shaped)


def _cards_in_run(text: str, run_start: int, run_end: int, valid: Validator) -> Iterator[Finding]:
    # The run is any 13+ digits with short separators. Try it whole, then windows of whole
    # groups, longest first, so "ref 12 4111 1111 1111 1111" still finds the card.
    run = text[run_start:run_end]
    if valid(run):
        yield Finding("CREDIT_CARD", run_start, run_end, run, 0.9)
        return
    spans = [m.span() for m in _CARD_GROUPS.finditer(run)]
    i = 0
    while i < len(spans):
        # Every card is written as one block or starts with a group of four.
        first = spans[i][1] - spans[i][0]
        if first != 4 and not 13 <= first <= 19:
            i += 1
            continue
        hit = None
        j = i
        size = 0
        while j < len(spans) and size + spans[j][1] - spans[j][0] <= 19:
            size += spans[j][1] - spans[j][0]
            j += 1
        while j > i and size >= 13:
            window = run[spans[i][0] : spans[j - 1][1]]
            if valid(window):
                start = run_start + spans[i][0]
                yield Finding("CREDIT_CARD", start, start + len(window), window, 0.9)
                hit = j
                break
            j -= 1
            size -= spans[j][1] - spans[j][0]
        i = hit if hit is not None else i + 1


# -- IBAN_CODE

_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
_IBAN_TO_DIGITS = str.maketrans({chr(c): str(c - 55) for c in range(ord("A"), ord("Z") + 1)})


def _iban_checksum_valid(iban: str) -> bool:
    return int((iban[4:] + iban[:4]).translate(_IBAN_TO_DIGITS)) % 97 == 1


def _iban_end(text: str, start: int, end: int) -> int | None:
    """End of the valid IBAN at ``text[start:end]``, or None.

    The candidate may run on into a following 4-character token: it is cut at the length
    registered for its country, which must fall between two groups.
    """
    # Lower case ("de89 3704...") and dashes ("DE89-3704-...") are accepted, one kind of
    # separator per IBAN.
    length = _IBAN_LENGTHS.get(text[start : start + 2].upper())
    if length is None:
        return None
    candidate = text[start:end]
    if " " in candidate and "-" in candidate:
        return None
    compact = candidate.replace(" ", "").replace("-", "").upper()
    if len(compact) < length:
        return None
    if len(compact) > length:
        end = start
        seen = 0
        while seen < length:
            seen += text[end] != " " and text[end] != "-"
            end += 1
        if text[end] != " " and text[end] != "-":
            return None
        compact = compact[:length]
    return end if _iban_checksum_valid(compact) else None


def _find_numeric(
    text: str, pos: int = 0, endpos: int | None = None, pattern: re.Pattern[str] = _NUMERIC
) -> Iterator[Finding]:
    # When a candidate turns out shorter than its match, or no entity at all, scanning
    # resumes inside the match: the rest may hold another entity.
    search = pattern.search
    if endpos is None:
        endpos = len(text)
    while (m := search(text, pos, endpos)) is not None:
        kind = m.lastgroup
        start, pos = m.span()
        if kind == "card":
            covered = start
            for card in _find_cards_in_run(text, start, pos):
                if card.start > covered:
                    yield from _find_numeric(text, covered, card.start, _NUMERIC_NO_CARD)
                yield card
                covered = card.end
            if covered == start:
                yield from _find_numeric(text, start, pos, _NUMERIC_NO_CARD)
            else:
                pos = covered
        elif kind == "nino":
            nino = context.nino_start(text, start, pos)
            if nino is None:
                pos = start + 1
            else:
                yield Finding("UK_NINO", nino, pos, text[nino:pos], 0.8)
        elif kind == "iban":
            start -= 2
            iban_end = _iban_end(text, start, pos)
            if iban_end is None:
                pos = start + 3
            else:
                yield Finding("IBAN_CODE", start, iban_end, text[start:iban_end], 0.95)
                pos = iban_end
        elif kind == "ipv4":
            if _ipv4_valid(value := m.group()):
                yield Finding("IP_ADDRESS", start, pos, value, 0.8)
        elif kind == "ssn":
            value = m.group()
            sep = value[3]
            ssn_digits = value.replace(sep, "")
            # Dots and spaces only after an SSN word; a word also vouches for 9xx areas and repeated
            # digits. Well-known example values ("123-45-6789") are masked like real ones.
            valid = _ssn_valid(ssn_digits)
            if (sep == "-" and valid) or (
                _ssn_context_near(text, start) and (valid or _ssn_plausible(ssn_digits))
            ):
                yield Finding("US_SSN", start, pos, value, 0.85)

        elif _ssn_valid(value := m.group()) and _ssn_context_near(text, start):
            yield Finding("US_SSN", start, pos, value, 0.7)


# --------------------------------------------------------------------------- PHONE_NUMBER


def _find_phones(text: str) -> list[Finding]:
    return [
        Finding("PHONE_NUMBER", start, end, text[start:end], 0.7)
        for start, end in find_phones(text)
    ]


def _validated_phones(valid: Validator) -> Finder:
    def find(text: str) -> list[Finding]:
        return [
            Finding("PHONE_NUMBER", start, end, value, 0.7)
            for start, end in find_phones(text)
            if valid(value := text[start:end])
        ]

    return find


# --------------------------------------------------------------------------- IPv6

_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]*")
_IPV6_MAX = 45  # "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"


def _ipv6_valid(candidate: str) -> bool:
    colons = candidate.count(":")
    if "::" not in candidate and colons != 7 and not (colons == 6 and "." in candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _find_ipv6(text: str) -> Iterator[Finding]:
    # Every IPv6 address has "::" or at least six colons (PIIDetector checks for one digit).
    if "::" not in text and text.count(":") < 6:
        return
    # Anchored on ':' (a fast substring search): the address is the run of hex digits, colons
    # and dots around it, which must not touch a word character.
    colon = text.find(":")
    while colon != -1:
        ahead = _IPV6_CHARS.match(text, colon)
        end = ahead.end() if ahead else colon + 1
        # The run before this colon holds no colon (the previous run ended at a character
        # outside it, and no colon lies between): with no second colon ahead, the candidate
        # has one colon and is no address, so the backward match is not needed.
        if text.find(":", colon + 1, end) == -1:
            colon = text.find(":", end)
            continue
        back = _IPV6_CHARS.match(text[max(0, colon - _IPV6_MAX) : colon][::-1])
        start = colon - (back.end() if back else 0)
        colon = text.find(":", end)
        candidate = text[start:end]
        if (
            (start and (text[start - 1].isalnum() or text[start - 1] == "_"))
            or (end < len(text) and (text[end].isalnum() or text[end] == "_"))
            or candidate[0] == "."
            or len(candidate) > _IPV6_MAX + 1
            or candidate.count(":") < 2
            # A digit is required so that words like "bad::" or "cafe:face:" are never IPs.
            or _HAS_DIGIT(candidate) is None
        ):
            continue
        if not _ipv6_valid(candidate):
            candidate = candidate[:-1]  # trailing punctuation, as in "at fe80::1: it failed"
            if candidate[-1] == "." or not _ipv6_valid(candidate):
                continue
        yield Finding("IP_ADDRESS", start, start + len(candidate), candidate, 0.8)


# --------------------------------------------------------------------------- SECRET

# Each pattern starts with its literal prefix (which the regex engine finds with a fast
# substring search) and only then checks that the prefix does not start mid-word.
_OPENAI_KEY = re.compile(r"sk-(?<![\w-]sk-)[A-Za-z0-9_-]{20,}")
_SLACK_TOKEN = re.compile(r"xox(?<!\wxox)[bpas]-[A-Za-z0-9-]{10,}")
# The body runs to the next "-----" (its END line, or the next key when END is missing).
_PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z0-9 ]* PRIVATE KEY-----(?:[^-]|-(?!----))*+"
    r"(?:-----END[A-Z0-9 ]* PRIVATE KEY-----)?"
)
_GITHUB_TOKEN = re.compile(r"gh(?<!\wgh)[pousr]_[A-Za-z0-9]{36,255}(?!\w)", re.ASCII)
_GITHUB_PAT = re.compile(r"github_pat_(?<!\wgithub_pat_)\w{22,255}", re.ASCII)
_AWS_KEY_ID = re.compile(r"A(?<![A-Za-z0-9]A)[KS]IA[0-9A-Z]{16}(?![A-Za-z0-9])")
_JWT = re.compile(r"eyJ(?<![\w-]eyJ)[\w-]{5,}\.eyJ[\w-]{5,}\.[\w-]*", re.ASCII)
_STRIPE_KEY = re.compile(r"[rs]k_(?<!\w[rs]k_)(?:live|test)_[A-Za-z0-9]{16,}")
_GOOGLE_KEY = re.compile(r"AIza(?<!\wAIza)[0-9A-Za-z_-]{35}(?![\w-])")
_GITLAB_TOKEN = re.compile(r"gl(?<![\w-]gl)(?:pat|dt|rt|ptt|cbt)-[0-9A-Za-z_-]{20,}")
_PREFIXED_TOKEN = re.compile(  # npm, Hugging Face, Anthropic-style, SendGrid, Shopify, PyPI
    r"(?<![\w-])(?:npm_[A-Za-z0-9]{36}|hf_[A-Za-z0-9]{30,}|SG\.[\w-]{22}\.[\w-]{43}"
    r"|shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}|pypi-[\w-]{50,})(?![\w-])"
)
_BASIC = re.compile(r"\b[Bb]asic[ \t]+([A-Za-z0-9+/]{6,}={0,2})(?![\w+/=])")
_BEARER = re.compile(r"\b[Bb]earer[ \t]+([A-Za-z0-9._~+/-]{8,}=*)")


def _token_like(value: str) -> bool:
    # "Bearer tokens are..." or "sk-learn-compatible-estimators" must not become secrets.
    return _HAS_DIGIT(value) is not None or (
        len(value) >= 20 and not value.islower() and not value.isupper()
    )


def _basic_credentials(value: str) -> bool:
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded


_AROUND = 10  # the longest prefix test below ("-----BEGIN", "github_pat_") less one


def _around(text: str, mark: str) -> str:
    """Where to look for a prefix holding ``mark`` within its first 11 characters: in a long
    text with few ``mark``, the characters around each (a substring search of several
    characters steps through the whole text, ``str.find`` of one character is a memchr)."""
    size = len(text)
    if size <= _LONG_TEXT:
        return text
    # str.find of one character is a memchr; str.count steps through every character.
    limit = size >> 6
    parts: list[str] = []
    i = text.find(mark)
    while i != -1:
        if len(parts) == limit:
            return text
        parts.append(text[max(0, i - _AROUND) : i + _AROUND + 1])
        i = text.find(mark, i + 1)
    return "\0".join(parts)


def _find_secrets(text: str) -> list[Finding]:
    # Single-character tests (memchr) first: a substring search of a short needle costs a
    # step every few characters, which adds up on long texts.
    candidates: list[tuple[re.Match[str], float]] = []
    prefixed = False
    if "-" in text:
        near = _around(text, "-")
        if "sk-" in near:
            candidates.extend((m, 0.9) for m in _OPENAI_KEY.finditer(text) if _token_like(m[0]))
        if "xox" in near:
            candidates.extend((m, 0.9) for m in _SLACK_TOKEN.finditer(text))
        if "-----BEGIN" in near:
            candidates.extend((m, 1.0) for m in _PRIVATE_KEY.finditer(text))
        if "gl" in near:
            candidates.extend((m, 0.9) for m in _GITLAB_TOKEN.finditer(text))
        prefixed = "pypi-" in near
    if "_" in text:
        near = _around(text, "_")
        if "gh" in near:
            candidates.extend((m, 0.9) for m in _GITHUB_TOKEN.finditer(text))
        if "github_pat_" in near:
            candidates.extend((m, 0.9) for m in _GITHUB_PAT.finditer(text))
        if "sk_" in near or "rk_" in near:
            candidates.extend((m, 0.9) for m in _STRIPE_KEY.finditer(text))
        prefixed = prefixed or "npm_" in near or "hf_" in near or "shp" in near
    # A substring search of several characters steps through a long text; a single character
    # is a memchr: each test below starts with one.
    if prefixed or ("G" in text and "SG." in text):
        candidates.extend((m, 0.9) for m in _PREFIXED_TOKEN.finditer(text))
    if "z" in text and "AIza" in text:
        candidates.extend((m, 0.9) for m in _GOOGLE_KEY.finditer(text))
    if "I" in text and "IA" in text:
        candidates.extend((m, 0.9) for m in _AWS_KEY_ID.finditer(text))
    if "J" in text and "eyJ" in text:
        candidates.extend((m, 0.9) for m in _JWT.finditer(text))
    found = [Finding("SECRET", m.start(), m.end(), m[0], score) for m, score in candidates]
    if "s" in text and "asic" in text:  # "Basic", "basic": base64 of "user:password"
        for m in _BASIC.finditer(text):
            if _basic_credentials(m[1]):
                found.append(Finding("SECRET", m.start(1), m.end(1), m[1], 0.85))
    if "r" in text and "earer" in text:  # "Bearer", "bearer"
        for m in _BEARER.finditer(text):
            if _token_like(m[1]):
                found.append(Finding("SECRET", m.start(1), m.end(1), m[1], 0.85))
    return found


# --------------------------------------------------------------------------- in context


_IN_CONTEXT_SCORES = {"DATE_OF_BIRTH": 0.8, "PASSPORT": 0.7, "US_DRIVER_LICENSE": 0.65}


def _find_in_context(text: str) -> list[Finding]:
    return [
        Finding(kind, start, end, text[start:end], _IN_CONTEXT_SCORES[kind])
        for kind, start, end in context.find_in_context_with_digits(text)
    ]


def _spans_as(entity_type: str, spans: SpanFinder, score: float) -> Finder:
    def find(text: str) -> Iterator[Finding]:
        for start, end in spans(text):
            yield Finding(entity_type, start, end, text[start:end], score)

    return find


# --------------------------------------------------------------------------- registry

_URL_CREDENTIALS = Detector(
    frozenset({"URL"}), _spans_as("URL", context.find_url_credentials, 0.95), hint="://"
)
_PHONES = Detector(frozenset({"PHONE_NUMBER"}), _find_phones, digits=True, near_digits=True)
_EMAILS = Detector(frozenset({"EMAIL_ADDRESS", *_GLUED_TYPES}), _find_emails, hint="@")
_FULLWIDTH_EMAILS = Detector(_EMAILS.entity_types, _find_fullwidth_emails, hint="\uff20")
_OBFUSCATED_EMAILS = Detector(_EMAILS.entity_types, _find_obfuscated_emails)
_BUILTINS: tuple[Detector, ...] = (
    # An address also reports the values glued to it (``_find_glued``).
    _EMAILS,
    _FULLWIDTH_EMAILS,
    _OBFUSCATED_EMAILS,
    Detector(
        frozenset({"CREDIT_CARD", "US_SSN", "IP_ADDRESS", "IBAN_CODE", "UK_NINO"}),
        _find_numeric,
        digits=True,
        near_digits=True,
    ),
    _PHONES,
    Detector(frozenset({"IP_ADDRESS"}), _find_ipv6, hint=":", digits=True, near_digits=True),
    Detector(frozenset({"SECRET"}), _find_secrets),
    Detector(frozenset(_IN_CONTEXT_SCORES), _find_in_context, digits=True, near_digits=True),
    _URL_CREDENTIALS,
)
# Every URL, when ``entities`` names URL (the default reports only URLs with credentials):
# plain URLs are not personal data by themselves, and masking them would break the links an
# app sends to its model, unless the app asks for it.
# Same score as a URL with credentials: an address or IP inside a URL is masked with it.
_ALL_URLS = Detector(frozenset({"URL"}), _spans_as("URL", context.find_urls, 0.95))
BUILTIN_ENTITIES: frozenset[str] = frozenset().union(*(d.entity_types for d in _BUILTINS))

_ENTITY_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_REGISTRY: dict[str, Detector] = {}


def make_detector(
    entity_type: str,
    pattern_or_callable: str | re.Pattern[str] | SpanFinder,
    validator: Validator | None = None,
    *,
    score: float = 0.8,
) -> Detector:
    """Build a detector from a regex (its whole match) or a ``callable(text) -> [(start, end)]``.

    ``validator(value) -> bool``, when given, filters the candidates.
    """
    if _ENTITY_NAME.fullmatch(entity_type) is None:
        raise ValueError(f"entity type must be UPPER_SNAKE_CASE, got {entity_type!r}")
    types = frozenset({entity_type})
    if isinstance(pattern_or_callable, str | re.Pattern):
        pattern = re.compile(pattern_or_callable)

        def find_pattern(text: str) -> Iterator[Finding]:
            for m in pattern.finditer(text):
                value = m.group()
                if value and (validator is None or validator(value)):
                    yield Finding(entity_type, m.start(), m.end(), value, score)

        return Detector(types, find_pattern)
    find_spans = pattern_or_callable

    def find_callable(text: str) -> Iterator[Finding]:
        for start, end in find_spans(text):
            value = text[start:end]
            if 0 <= start < end <= len(text) and (validator is None or validator(value)):
                yield Finding(entity_type, start, end, value, score)

    return Detector(types, find_callable)


def register_detector(
    name: str,
    pattern_or_callable: str | re.Pattern[str] | SpanFinder,
    validator: Validator | None = None,
    *,
    score: float = 0.8,
) -> Detector:
    """Register a custom detector for entity type ``name``, replacing one of the same name.

    It joins every :class:`PIIDetector` created afterwards; existing ones keep their set.
    """
    detector = make_detector(name, pattern_or_callable, validator, score=score)
    _REGISTRY[name] = detector
    return detector


def unregister_detector(name: str) -> None:
    _REGISTRY.pop(name, None)


# --------------------------------------------------------------------------- PIIDetector


def _resolve_cluster(cluster: list[Finding], kept: list[Finding]) -> None:
    """Greedy by priority: higher score first, then the longer span, then the earlier one. A
    finding that loses part of its span keeps what lies outside the winners when that still
    holds a value's worth of characters (``_REMAINDER``): "212-555-0100 10::1" read as a
    phone running into an IPv6 address masks both, instead of leaving the phone in clear."""
    if len(cluster) == 1:
        kept.append(cluster[0])
        return
    chosen: list[Finding] = []
    starts: list[int] = []
    pending = sorted(cluster, key=lambda f: (-f.score, f.start - f.end, f.start))
    while pending:
        f = pending.pop(0)
        i = bisect.bisect_right(starts, f.start)
        if (i and chosen[i - 1].end > f.start) or (i < len(chosen) and chosen[i].start < f.end):
            rest = _outside(f, chosen, max(0, i - 1))
            if rest:
                pending[:0] = rest  # same priority: placed before anything below it
            continue
        starts.insert(i, f.start)
        chosen.insert(i, f)
    kept.extend(chosen)


#: The part of a finding outside a winner is kept when it still has 4 letters or digits.
_REMAINDER = re.compile(r"[^\W_](?:[\W_]*[^\W_]){3}")
_EDGE = " \t\r\n\xa0\u2009\u202f\u3000.,;:-/()[]{}<>\"'"


def _outside(f: Finding, chosen: list[Finding], first: int) -> list[Finding]:
    # ``chosen`` is sorted by start and non-overlapping; none before ``first`` reaches ``f``.
    parts: list[Finding] = []
    at = f.start
    for j in range(first, len(chosen)):
        c = chosen[j]
        if c.start >= f.end:
            break
        if c.end <= at:
            continue
        if c.start > at:
            parts.append(_part(f, at, c.start))
        at = max(at, c.end)
    if at < f.end and at > f.start:
        parts.append(_part(f, at, f.end))
    return [p for p in parts if p.end > p.start and _REMAINDER.search(p.text)]


def _part(f: Finding, start: int, end: int) -> Finding:
    # Separators are trimmed only where a winner cut the span; the finding's own ends stay.
    text = f.text[start - f.start : end - f.start]
    if end < f.end:
        text = text.rstrip(_EDGE)
    if start > f.start:
        trimmed = text.lstrip(_EDGE)
        start += len(text) - len(trimmed)
        text = trimmed
    return Finding(f.entity_type, start, start + len(text), text, f.score)


def _resolve_overlaps(found: list[Finding]) -> list[Finding]:
    # Linear apart from the sort: findings are cut into clusters of transitively overlapping
    # spans, and only a cluster (a handful of findings in practice) is resolved greedily.
    found.sort(key=_START)
    end = -1
    for f in found:
        if f.start < end:
            break
        end = f.end
    else:
        return found
    kept: list[Finding] = []
    cluster: list[Finding] = []
    end = -1
    for f in found:
        if f.start >= end and cluster:
            _resolve_cluster(cluster, kept)
            cluster = []
        cluster.append(f)
        end = max(end, f.end)
    _resolve_cluster(cluster, kept)
    return kept


def _ner_findings(
    text: str, spans: Iterable[tuple[str, int, int, float]], validated: list[Finding]
) -> Iterator[Finding]:
    """NER spans that overlap no pattern finding: a checksum- or structure-validated value
    (an IP address, a card, an e-mail) is never cut or relabelled by a model's guess."""
    taken = sorted((f.start, f.end) for f in validated)
    starts = [start for start, _ in taken]
    reach: list[int] = []  # the furthest end among the first i spans
    for _, end in taken:
        reach.append(max(end, reach[-1]) if reach else end)
    size = len(text)
    for entity_type, start, end, score in spans:
        if not 0 <= start < end <= size:
            continue
        i = bisect.bisect_left(starts, end)  # spans starting before this one ends
        if i and reach[i - 1] > start:
            continue
        yield Finding(entity_type, start, end, text[start:end], score)


class PIIDetector:
    """Detect PII in text.

    ``entities`` limits the entity types reported (default: all built-in and registered ones).
    Naming ``URL`` in ``entities`` reports every URL; by default only URLs with credentials.
    ``extra`` adds detectors to this instance only. ``ner`` is an optional
    ``callable(text) -> iterable of (entity_type, start, end, score)`` (a spaCy model for
    PERSON, say) whose results are merged with the regex findings.

    ``phone_regions`` (ISO 3166 codes, e.g. ``["US", "CA"]``; needs the ``[phones]`` extra)
    checks each phone candidate against libphonenumber's numbering plans: a national number
    must be valid in one of these regions as written, an international one for its country.
    Off by default: it costs recall on numbers from other regions (see the README).
    """

    __slots__ = ("_entities", "_finders", "_keep", "_ner", "_short_finders")

    def __init__(
        self,
        entities: Iterable[str] | None = None,
        *,
        extra: Iterable[Detector] = (),
        ner: NerCallable | None = None,
        phone_regions: Iterable[str] | None = None,
    ) -> None:
        detectors = (*_BUILTINS, *_REGISTRY.values(), *extra)
        if phone_regions is not None:
            if not phone_regions_module.available():
                raise ValueError("phone_regions needs phonenumbers: install llm_middleware[phones]")
            valid = phone_regions_module.region_validator(phone_regions)
            phones = Detector(
                _PHONES.entity_types, _validated_phones(valid), digits=True, near_digits=True
            )
            # Phones glued to an address are checked like the others.
            swap = {
                id(_PHONES): phones,
                id(_EMAILS): Detector(
                    _EMAILS.entity_types, _emails_glued_phones("@", valid), hint="@"
                ),
                id(_FULLWIDTH_EMAILS): Detector(
                    _EMAILS.entity_types,
                    _emails_glued_phones("\uff20", valid),
                    hint="\uff20",
                ),
                id(_OBFUSCATED_EMAILS): Detector(
                    _EMAILS.entity_types, _obfuscated_glued_phones(valid)
                ),
            }
            detectors = tuple(swap.get(id(d), d) for d in detectors)
        self._ner = ner
        self._keep: frozenset[str] | None = None
        if entities is None:
            self._entities = frozenset().union(*(d.entity_types for d in detectors))
        else:
            wanted = frozenset(entities)
            unknown = wanted.difference(*(d.entity_types for d in detectors))
            if unknown and ner is None:
                raise ValueError(f"no detector for entity types: {', '.join(sorted(unknown))}")
            detectors = tuple(
                _ALL_URLS if d is _URL_CREDENTIALS else d
                for d in detectors
                if d.entity_types & wanted
            )
            self._entities = wanted
            # Shared detectors (the digit scan) may report types that were not asked for.
            if any(d.entity_types - wanted for d in detectors) or ner is not None:
                self._keep = wanted
        # In a long text a hint's first character is looked for first: a memchr, where a
        # search of several characters ("://") steps through the whole text.
        self._finders = tuple(
            (
                d.hint,
                d.hint[:1] if len(d.hint) > 1 else "",
                d.digits or d.near_digits,
                d.near_digits,
                d.find,
            )
            for d in detectors
        )
        # What a text of at most _LONG_TEXT characters needs (no digit windows, no lead):
        # the same finders in the same order, three fields to unpack instead of five.
        self._short_finders = tuple((d.hint, d.digits or d.near_digits, d.find) for d in detectors)

    @property
    def entities(self) -> frozenset[str]:
        """Entity types reported (without ``entities``, NER types are not listed)."""
        return self._entities

    def detect(self, text: str) -> list[Finding]:
        """Findings sorted by start, non-overlapping (higher score, then longer span, wins)."""
        if not text:
            return []
        found: list[Finding] = []
        has_digit = None
        if len(text) <= _LONG_TEXT:
            for hint, digits, find in self._short_finders:
                if digits:
                    if has_digit is None:
                        has_digit = any(map(text.__contains__, _DIGITS))
                    if not has_digit:
                        continue
                if hint in text:
                    found.extend(find(text))
        else:
            self._detect_long(text, found)
        if self._ner is not None:
            found.extend(_ner_findings(text, self._ner(text), found))
        if self._keep is not None:
            found = [f for f in found if f.entity_type in self._keep]
        if len(found) < 2:
            return found
        return _resolve_overlaps(found)

    def _detect_long(self, text: str, found: list[Finding]) -> None:
        has_digit = None
        windows: list[tuple[int, int]] | None = None
        for hint, lead, digits, near_digits, find in self._finders:
            if digits:
                if has_digit is None:
                    has_digit = any(map(text.__contains__, _DIGITS))
                    if has_digit:
                        windows = _digit_windows(text)
                if not has_digit:
                    continue
            if lead not in text or hint not in text:
                continue
            if near_digits and windows is not None:
                for start, end in windows:
                    found.extend(
                        Finding(f.entity_type, f.start + start, f.end + start, f.text, f.score)
                        for f in find(text[start:end])
                    )
            else:
                found.extend(find(text))

    def __repr__(self) -> str:
        return f"PIIDetector(entities={sorted(self._entities)!r})"
