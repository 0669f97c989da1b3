"""Phone numbers: one regex proposes digit runs, structural rules in Python accept them.

International numbers (``+``, ``(+41)``, ``00``/``011`` prefixes) are checked against the
assigned country calling codes and, for ``+1``, the NANP rules. National numbers are written
in too many ways to enumerate per region (``0775 2212 211``, ``(020) 8231 7777``,
``09-7625400``, ``090-1234-5678``, ``11 1234-5678``, ``06 12 34 56 78``...), so the rules are
about shape instead: 7 to 13 digits in groups, and none of the shapes that numbers other than
phones take (dates, IPv4 addresses, SSNs, ZIP+4 codes, thousands, years). A run of digits
without separators (``0743544311``) is only a phone after a phone word ("phone", "tel",
"call", "móvil", "my number"...) shortly before it, since order numbers and epochs look the
same.

``phonenumbers`` (libphonenumber's metadata) checks these candidates against regions' numbering
plans only when a detector is built with ``phone_regions`` (:mod:`.phone_regions`, the
``[phones]`` extra): on mixed data it costs more recall than it gains precision (README).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from .context import lower_aligned

__all__ = ["calling_code", "find_phones", "intl_phone_valid", "nanp_valid"]

_NON_DIGITS = re.compile(r"[^0-9]+")
_DIGIT_GROUPS = re.compile(r"[0-9]+")

# A digit run with separators: spaces (also non-breaking), ".", "-", "/", parentheses. The
# first character is tested before the look-behind so the engine skips ahead quickly.
_SEP = r"(?:[ \u00a0]{0,2}[./-][ \u00a0]{0,2}|[ \u00a0]{1,2}\(?|\)[ \u00a0]{0,2}|\()"
_CANDIDATE = re.compile(
    r"[+(0-9](?<![\w.+/(-][+(0-9])(?<![\w.,][+(]\d)(?<![0-9:]:[+(0-9])"
    r"(?:(?<=\d)\d*+|(?<=\()\+?[ \u00a0]?\d++|(?<=\+)[ \u00a0]?\d++)"
    rf"(?:{_SEP}(?=\d)\d++)*+\)?"
    r"(?P<ext>[ \u00a0]?(?:x|ext\.?|extension|#)[ \u00a0]?\d{1,6}(?!\w))?"
)
_GLUE = frozenset(".,/-")


def _glued_after(text: str, end: int) -> bool:
    """A word character (alphanumeric or "_", as the regex class) at ``end``, or after a ".",
    ",", "/" or "-" there; cheaper than a regex call on every candidate."""
    after = text[end : end + 1]
    if after in _GLUE:
        after = text[end + 1 : end + 2]
    elif not after:
        return False
    return after.isalnum() or after == "_"


# What a phone line is, glued on with a dash ("212-555-0172-Fax"): the phone is before it.
_LINE_LABEL = re.compile(
    r"-(?:fax|tel|phone|home|work|office|mobile|cell|main|direct)(?![^\W\d_])", re.IGNORECASE
)
_CURRENCY = frozenset("$€£¥₹")
_MAX_CANDIDATE = 40
# Groups of four (cards) and dotted quads (IPv4): never phones, rejected before any other work.
_CARD_OR_IP = re.compile(r"\d{4}(?:([ -])\d{4})(?:\1\d{4}){1,3}|\d{1,3}(?:\.\d{1,3}){3}")
_MAX_WINDOW = 24  # the longest national number with its separators

# Phone words (several languages), up to 40 characters before a digit run without separators.
_CONTEXT = re.compile(
    r"(?:phone|tel\b|tel[eé]|t[eé]l\.|tlf|tf\.|\bcall|\bmobile?|\bcell|\bfax|\bdial|whats\s?app"
    r"|\bsms\b|\bm[oó]vil|\bllam|\bportable|\bhandy|\bruf|\bappel|numbers|n[uúùü]meros"
    r"|num[eé]ros|numeri|nummern|contact|reach"
    # "my number is ...": a number someone owns is a phone; "account number", "order number"
    # are not, so "number" alone only counts after a possessive.
    r"|\b(?:my|your|his|her|our|their)\s+(?:(?:home|work|new|private)\s+)?number\b)",
    re.IGNORECASE,
)
_CONTEXT_WINDOW = 40

# A date is not followed by more groups: "01.42.68.53.00" is a French phone.
_DATE = re.compile(
    r"(?:19|20)\d\d[./-]\d\d?[./-]\d\d?(?!\d)"
    r"|\d\d?[./-]\d\d?[./-](?:19|20)?\d\d(?!\d|[./-]\d)"
)
_YEAR_LED = re.compile(r"(?:19|20)\d\d[./-]\d")
_THOUSANDS = re.compile(r"\d{1,3}(?:([., ])\d{3})(?:\1\d{3})*")
_ZIP4 = re.compile(r"\d{5}-\d{4}")
# SSN-like (also with a longer last group). ISBN-like values (a single digit last) are told
# by _one_digit_last: as a regex branch (".*[ ./-]\d\Z") it cost half the call below.
_NOT_PHONE = re.compile(r"\d{3}([ -])\d\d\1\d+")
# Dates, years, SSN / ZIP+4 shapes (a dashed SSN also as the start), in one regex call.
_NOT_A_PHONE = re.compile(
    rf"(?:{_DATE.pattern})|{_YEAR_LED.pattern}|\d{{3}}-\d\d-\d{{4}}(?!\d)"
    rf"|(?:{_ZIP4.pattern}|{_NOT_PHONE.pattern})\Z"
)


def _not_a_phone_shape(value: str, groups: list[str]) -> bool:
    """``_NOT_A_PHONE.match(value)``, without the regex call when the digit groups rule every
    branch out. Each branch starts with digits: 4 (a year), 5 (ZIP+4), or at most 3 followed
    by a group of at most 2 (day/month, SSN shapes); common phones ("415-555-0132",
    "(020) 8231 7777", "020 7946 0958") have none of these. Only for ASCII values, where the
    regex's digit class is the [0-9] of ``groups``."""
    if value.isascii():
        if not "0" <= value[0] <= "9":
            return False
        first = len(groups[0])
        if first != 4 and first != 5 and (first > 3 or len(groups) < 2 or len(groups[1]) > 2):
            return False
    return _NOT_A_PHONE.match(value) is not None


def _one_digit_last(value: str) -> bool:
    """A last group of one digit after " ", ".", "/" or "-" ("978-3-16-148410-0")."""
    # Candidates hold no line break, which the regex's "." would not have crossed.
    return len(value) > 1 and value[-2] in " ./-" and value[-1].isdecimal()


_IPV4_LED = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}(?![.\d])")
_SSN_LED = re.compile(r"\d{3}-\d\d-\d{4}(?!\d)")
_LOCAL_7 = re.compile(r"\d{3}[.-]\d{4}")

_CC_ONE = frozenset("17")
_CC_TWO = frozenset(map(str, (
    20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55,
    56, 57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98,
)))  # fmt: skip
# Every other assigned calling code has three digits and starts with one of these.
_CC_THREE_PREFIXES = frozenset(map(str, (
    21, 22, 23, 24, 25, 26, 29, 35, 37, 38, 42, 50, 59, 67, 68, 69, 80, 85, 87, 88, 96, 97, 99,
)))  # fmt: skip


def nanp_valid(national: str) -> bool:
    return (
        len(national) == 10
        and national[0] >= "2"
        and national[1:3] != "11"
        and national[3] >= "2"
        and national[4:6] != "11"
    )


def calling_code(digits: str) -> str | None:
    if digits[0] in _CC_ONE:
        return digits[0]
    if digits[:2] in _CC_TWO:
        return digits[:2]
    if digits[:2] in _CC_THREE_PREFIXES:
        return digits[:3]
    return None


def intl_phone_valid(digits: str) -> bool:
    """``digits``: the number after ``+``, trunk ``(0)`` removed."""
    if not 8 <= len(digits) <= 15:
        return False
    code = calling_code(digits)
    if code is None:
        return False
    national = digits[len(code) :]
    if code == "1":
        # Fictional 555 numbers and 1xx exchanges are still someone's way to write a phone.
        return len(national) == 10 and national[0] >= "2"
    return len(national) >= 6


# How every match of _CONTEXT starts, lower-cased ("tel" for "tel", "tele", "tel."; "num"
# for "numbers", "numéros", "numeri", "nummern" and "... number").
_CONTEXT_STARTS = re.compile(
    r"phone|t[eé]l|tlf|tf\.|call|mobil|cell|fax|dial|whats|sms|m[oó]vil|llam|portable|handy"
    r"|ruf|appel|n[uúùü]m|contact|reach|my|your|his|her|our|their"
)


def _context_before(text: str, start: int) -> bool:
    lowest = max(0, start - _CONTEXT_WINDOW)
    window = text[lowest:start]
    cut = window.rfind("\n")
    low = lower_aligned(window)
    if low is not None:
        # _CONTEXT tries some thirty case-insensitive alternatives at each character (5 us
        # on a 13-character window without a match); its matches start where one of these
        # literals starts in the lower-cased window (same positions), found by a fast
        # scan: no such literal, no match; else the search starts there.
        first = _CONTEXT_STARTS.search(low, cut + 1)
        if first is None:
            return False
        cut = first.start() - 1
    return _CONTEXT.search(window, cut + 1) is not None


# Labels of numbers that are not phones ("ZIP 12345-67890", "SKU 2031-884-1120"), unless a
# phone word comes after them.
_NOT_PHONE_LABEL = re.compile(
    r"\b(?:zip|postal|post\s?code|isbn|sku|serial|tracking|invoice|order\s?(?:no|number|id|#)"
    r"|ref(?:erence)?(?:\s?(?:no|number|#))?)\b",
    re.IGNORECASE,
)
_LABEL_WINDOW = 24
_NANP_EXAMPLE = re.compile(r"\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4}")


def _not_phone_label(text: str, start: int) -> bool:
    window = text[max(0, start - _LABEL_WINDOW) : start]
    # In an aligned lower-cased copy (any ASCII window, most others: see lower_aligned),
    # without a label's substring the case-insensitive regex (microseconds per window)
    # cannot match.
    low = window.lower()
    if (window.isascii() or lower_aligned(window, low) is not None) and not (
        # A substring of every label above (chained tests: a third of the time of
        # any(map(...)), and no call for every candidate).
        "ref" in low
        or "order" in low
        or "zip" in low
        or "post" in low
        or "sku" in low
        or "serial" in low
        or "track" in low
        or "isbn" in low
        or "invoice" in low
    ):
        return False
    labels = _NOT_PHONE_LABEL.findall(window)
    if not labels:
        return False
    after = window.rfind(labels[-1]) + len(labels[-1])
    return _CONTEXT.search(window, after) is None


def _lead_plausible(value: str, digits: str, groups: list[str]) -> bool:
    """What the first digits say about a national number (no international prefix).

    Only grouped numbers without a trunk ``0`` whose first group has 3 digits (an area code
    of the NANP, Mexican, Indian kind) are judged: then 10 digits do not start with ``1``,
    except written as the well-known ``123-456-7890`` example, and 11 or more digits are not
    the area code and one block (``656 31243121``) unless the first group is a calling code.
    Bare runs (``1112345678``, Buenos Aires) and 2- or 4-digit area codes (``11 4321-8765``,
    ``3541 15 52-3456``) are left alone.
    """
    n = len(digits)
    lead = digits[0]
    if len(groups) < 2 or n < 10 or lead == "0" or (n > 10 and lead == "1"):
        return True
    if len(groups[0]) != 3:
        return True
    if n == 10:
        return lead != "1" or _NANP_EXAMPLE.fullmatch(value) is not None
    # A 3-digit area code is followed by 7 digits: one block of 8 or more is something else.
    return len(groups) > 2 or groups[0] == calling_code(digits)


def _national_valid(value: str, groups: list[str], text: str, start: int) -> bool:
    """``groups``: the digit groups of ``value``."""
    digits = groups[0] if len(groups) == 1 else "".join(groups)
    n = len(digits)
    if not 7 <= n <= 12:
        return False
    if digits == value:
        if digits.startswith("123456789"):
            return False  # a placeholder ("123456789", "1234567890"), not a number to protect
        return n <= 11 and _context_before(text, start)
    # The shapes told from the groups alone first: most windows of a longer run (a card, an
    # IBAN) fail one of them, before the regex calls below.
    for group in groups[1:]:
        if len(group) == 1:
            return False  # "1 2 3 4 5", ISBNs: counting, not dialling
    if len(groups) >= 4 and all(
        int(b) - int(a) == 1 for a, b in zip(groups, groups[1:], strict=False)
    ):
        return False  # "10 11 12 13 14": counting
    if (
        len(groups) >= 3
        and len(groups[0]) == 4  # the first test of all() below, without its generator
        and all(len(g) == 4 for g in groups[:-1])
        and len(groups[-1]) != 3
    ):
        return False  # part of a card number, or one cut short ("1234 5678 90")
    if not _lead_plausible(value, digits, groups):
        return False
    if _one_digit_last(value):
        return False
    if _not_a_phone_shape(value, groups) or (
        # Thousands ("1,234,567") have 1-3 digits, then groups of three.
        len(groups[0]) <= 3
        and len(groups) > 1
        and len(groups[1]) == 3
        and value[-4] in "., "  # the separator before a last group of three
        and _THOUSANDS.fullmatch(value)
        and not _context_before(text, start)
    ):
        return False
    if _not_phone_label(text, start):
        return False
    if value.count(".") >= 3 and _IPV4_LED.match(value):
        return False  # an IPv4 address, valid or not, alone or first ("0.1.2.3 (212) 555")
    if n <= 8:
        return _LOCAL_7.fullmatch(value) is not None or _context_before(text, start)
    return True


def _intl_digits(value: str) -> str | None:
    """The digits after an international prefix, or None when there is none."""
    head = value.lstrip("(")
    if head.startswith("+"):
        return _NON_DIGITS.sub("", value.replace("(0)", ""))
    if value[0] != "0":
        return None  # no "00" or "011" prefix: a national number
    if _SSN_LED.match(value):
        return None  # "007-01-0001 (212) 555-0172": an SSN, not "00" and a calling code
    if value.startswith("011") or (value.startswith("00") and value[2:].lstrip(" ")[:1] > "0"):
        skip = 3 if value[1] == "1" else 2
        # The first group holds the prefix and, when glued to it, a whole calling code
        # ("0044 20...", "001-212..."), never part of one ("002-01-0001").
        first = _DIGIT_GROUPS.match(value)
        code = first.group()[skip:] if first else ""
        if code and calling_code(code + "0000000") != code:
            return None
        return _NON_DIGITS.sub("", value)[skip:]
    return None


_LAST_GROUP = re.compile(r"(?:[ \u00a0]{0,2}[./-][ \u00a0]{0,2}|[ \u00a0]{1,2})\(?\d+\)?$")


def _phone_end(text: str, start: int, value: str) -> int | None:
    """End of the phone at the start of ``value`` (trailing groups may be another number)."""
    while True:
        # Only "+", "(" or "0" can start an international prefix: no call for the others.
        intl = _intl_digits(value) if value[0] in "+(0" else None
        if intl is not None:
            if intl_phone_valid(intl):
                return start + len(value)
        else:
            groups = _DIGIT_GROUPS.findall(value)
            if groups and _national_valid(value, groups, text, start):
                return start + len(value)
            return None  # "4567-8901-2345-6789" is no phone followed by a number
        tail = _LAST_GROUP.search(value)
        if tail is None or not tail.start():
            return None
        value = value[: tail.start()]


_HEX_COLON = frozenset("0123456789abcdefABCDEF:")


def _after_ipv6(text: str, start: int) -> bool:
    # Two or more colons in the run of hex digits and colons just before ``start``.
    j = start
    lowest = max(0, start - 45)
    while j > lowest and text[j - 1] in _HEX_COLON:
        j -= 1
    return text.count(":", j, start) >= 2


_EXT = _CANDIDATE.groupindex["ext"]


def find_phones(text: str) -> Iterator[tuple[int, int]]:
    """Spans of phone numbers in ``text``."""
    pos = 0
    search = _CANDIDATE.search
    while (m := search(text, pos)) is not None:
        start, end = m.span()
        pos = end
        if end - start < 7:
            continue  # too short for 7 digits ("12", "2024", "10:30")
        if start:
            before = text[start - 1]
            if before in _CURRENCY:
                continue
            if before == ":" and _after_ipv6(text, start):
                # "::e:0 (415) 555-0132": the first group ends an IPv6 address.
                cut = text.find(" ", start, end)
                if cut != -1:
                    pos = cut
                continue
        value = m.group()
        ext = m.start(_EXT)
        if ext != -1:
            value = value[: ext - start]
        elif _glued_after(text, end) and not _LINE_LABEL.match(text, end):
            # "2024-05-01T12:30" or "555-123-4567-A": the last chunk is no phone; what is
            # before its whitespace may be one.
            cut = max(value.rfind(" "), value.rfind("\u00a0"))
            if cut > 0:
                yield from _windows(text, start, value[:cut].rstrip(" \u00a0"), whole=True)
            continue
        if (len(value) >= 14 or value.count(".") == 3) and _CARD_OR_IP.fullmatch(value):
            continue  # the numeric detector's (checked there by Luhn / parsing)
        if len(value) > _MAX_CANDIDATE:
            # A long run of digit groups: only short whitespace-delimited windows are tried.
            yield from _windows(text, start, value, whole=True)
            continue
        if value.count(")") > value.count("("):
            value = value.rstrip(")")
        elif value[0] == "(" and value.find(")") == len(value) - 1 and value[1] != "+":
            start += 1  # "(020 8231 7777)": the number inside the parentheses
            value = value[1:-1]
        phone_end = _phone_end(text, start, value)
        if phone_end is not None:
            if ext != -1 and phone_end == start + len(value):
                phone_end = end
            elif phone_end < start + len(value):
                pos = phone_end  # "+1 415 555 0132 (415) 555-0133": the rest is scanned again
            yield start, phone_end
        elif (" " in value or "\u00a0" in value) and value.lstrip("(")[0] != "+":
            # Several numbers in a row ("0.0.0.0 (415) 555-0132", "415 555 0132 415 555 0133"):
            # whitespace-delimited windows, longest first (a bounded number of tries).
            yield from _windows(text, start, value)


def _is_group4(value: str, span: tuple[int, int]) -> bool:
    return span[1] - span[0] == 4 and value[span[0] : span[1]].isdigit()


def _is_area_group(value: str, span: tuple[int, int]) -> bool:
    group = value[span[0] : span[1]].strip("()")
    return len(group) <= 4 and group.isdigit()


_CHUNK = re.compile(r"[^ \u00a0]+")


def _windows(text: str, start: int, value: str, whole: bool = False) -> Iterator[tuple[int, int]]:
    chunks = [m.span() for m in _CHUNK.finditer(value)]
    # Digits before each chunk: windows with too few or too many digits are never tried.
    before = [0]
    for a, b in chunks:
        before.append(before[-1] + sum(map(str.isdigit, value[a:b])))
    i = 0
    while i < len(chunks):
        first = chunks[i][0]
        if i and _is_group4(value, chunks[i - 1]) and _is_group4(value, chunks[i]):
            i += 1  # inside a run of 4-digit groups (a card, not a phone)
            continue
        # After a short group of digits, a 7-8 digit window is the rest of a number that was
        # rejected whole ("111 3124312"), not a local number of its own.
        short_tail = i and _is_area_group(value, chunks[i - 1])
        last = i
        while last + 1 < len(chunks) and chunks[last + 1][1] - first <= _MAX_WINDOW:
            last += 1
        for j in range(last, i - 1, -1):
            if (i, j) == (0, len(chunks) - 1) and not whole:
                continue  # the whole value was tried already
            window = value[first : chunks[j][1]]
            if (
                not 7 <= before[j + 1] - before[i] <= 15
                or (short_tail and before[j + 1] - before[i] <= 8)
                or window[0] in "./-"
                or window[-1] in "./-("
            ):
                continue
            phone_end = _phone_end(text, start + first, window)
            if phone_end is not None:
                yield start + first, phone_end
                # Go on after the phone, which may end before the window does.
                while i + 1 < len(chunks) and chunks[i + 1][0] < phone_end - start:
                    i += 1
                break
        i += 1
