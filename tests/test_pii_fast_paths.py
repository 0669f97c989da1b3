"""Fast paths must find what the plain paths find. Long texts: finders of values with digits
run only around the digits, secret prefixes are looked for only around their '-' / '_'.
Short texts: one search for every context hint; e-mails gated on their '@'.

Every value here is written for this test (fictional numbers, documentation ranges).
"""

from __future__ import annotations

import random
import re

import pytest

from llm_middleware.pii import PIIDetector
from llm_middleware.pii import detectors as det

PIECES = [
    "call (415) 555-0132 today",
    "SSN 078-05-1120 on file",
    "Tel. 020 7946 0958",
    "national insurance number on the form is QQ123456C",
    "born on 17/06/1976 in Leeds",
    "1985-01-01 is my birthday",
    "passport X1234567 expires",
    "card 4111 1111 1111 1111 exp 09/27",
    "IBAN DE89 3704 0044 0532 0130 00",
    "server 10.1.2.3 and fe80::1 are down",
    "key sk-abcdefghijklmnopqrstuv1234 leaked",
    "ghp_" + "a1B2" * 9 + " was pushed",
    "token glpat-abcdefghij0123456789 here",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAK\n-----END RSA PRIVATE KEY-----",
    "mail jane.doe@example.com now",
    "order 12345 shipped",  # no PII
]


def findings(detector: PIIDetector, text: str) -> list[tuple[str, int, int, str]]:
    return [(f.entity_type, f.start, f.end, f.text) for f in detector.detect(text)]


def whole_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(det, "_LONG_TEXT", 10**9)


@pytest.mark.parametrize("seed", range(12))
def test_long_texts_find_what_a_whole_scan_finds(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    parts = []
    for _ in range(rng.randint(4, 12)):
        # Fillers shorter and longer than the margins around digits (windows merge or not).
        filler = rng.choice("abcxyz ") * rng.choice((3, 40, 130, 200, 700))
        parts.append(f"{filler} {rng.choice(PIECES)} ")
    text = "".join(parts) + "z" * 2100
    assert len(text) > det._LONG_TEXT
    detector = PIIDetector()
    windowed = findings(detector, text)
    whole_text(monkeypatch)
    whole = findings(detector, text)
    assert windowed == whole
    assert windowed  # the pieces hold PII


def test_each_piece_is_found_in_a_long_text() -> None:
    short = PIIDetector()
    for piece in PIECES:
        expected = findings(short, piece)
        pad = "A" * 3000
        got = findings(short, pad + " " + piece + " " + pad)
        shift = len(pad) + 1
        assert [(t, s - shift, e - shift, v) for t, s, e, v in got] == expected, piece


def test_digit_windows() -> None:
    text = "a" * 3000 + "12" + "b" * 100 + "3" + "c" * 3000 + "4" + "d" * 10
    windows = det._digit_windows(text)
    assert windows is not None
    # 12 and 3 are close: one window; 4 another, cut at the end of the text.
    assert windows == [(3000 - 128, 3102 + 1 + 64), (6103 - 128, len(text))]
    # A digit near the start: the window starts at the text start.
    assert det._digit_windows("7" + "x" * 3000) == [(0, 65)]
    assert all(text[a:b].strip("abcd") for a, b in windows)


def test_dense_digits_are_scanned_whole() -> None:
    text = ("1234 " * 20 + "x" * 100) * 30  # a digit in every 10 characters
    assert det._digit_windows(text) is None


def test_around_keeps_every_prefix_next_to_its_mark() -> None:
    text = "A" * 5000 + " sk-abc " + "B" * 5000 + "xoxb-1 " + "C" * 200
    near = det._around(text, "-")
    assert len(near) < 100
    assert "sk-" in near and "xoxb-" in near and "gl" not in near
    # Short texts and texts full of the mark are searched as they are.
    assert det._around("sk-x", "-") == "sk-x"
    dashed = "a-" * 3000
    assert det._around(dashed, "-") is dashed


def test_a_custom_digit_detector_still_sees_the_whole_long_text() -> None:
    # ``digits`` alone skips texts without digits but does not cut long texts.
    seen: list[int] = []

    def spans(text: str) -> list[tuple[int, int]]:
        seen.append(len(text))
        at = text.find("REF")
        return [(at, at + 3)] if at != -1 else []

    custom = det.make_detector("REFERENCE", spans)
    custom = det.Detector(custom.entity_types, custom.find, digits=True)
    text = "REF " + "x" * 5000 + " 7"
    found = PIIDetector(["REFERENCE"], extra=[custom]).detect(text)
    assert [(f.entity_type, f.start) for f in found] == [("REFERENCE", 0)]
    assert seen == [len(text)]


SHORT_CONTEXT_TEXTS = [
    "DOB: 1990-01-01",
    "D.O.B. 02.12.1979",
    "geboren am 17.06.1976",
    "née le 3/4/1980",
    "Passport no. K4821937",
    "pasaporte X1234567",
    "DL D1234-5678 ok",
    "Driving Licence 4821 5530",
    "handled 1990-01-01 in 3 days",  # hint-like letters ("dl"), no context word
    "call 555-0132 at 10",  # digits, no hint
]


@pytest.mark.parametrize("text", SHORT_CONTEXT_TEXTS)
def test_short_text_hint_search_agrees_with_the_substring_tests(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_middleware.pii import context

    one_search = context.find_in_context(text)
    monkeypatch.setattr(context, "_SHORT_TEXT", -1)
    assert context.find_in_context(text) == one_search


def test_short_context_texts_find_their_values() -> None:
    from llm_middleware.pii import context

    kinds = [[k for k, _, _ in context.find_in_context(t)] for t in SHORT_CONTEXT_TEXTS]
    assert kinds[:8] == [["DATE_OF_BIRTH"]] * 4 + [["PASSPORT"]] * 2 + [["US_DRIVER_LICENSE"]] * 2
    assert kinds[8:] == [[], []]


def test_ascii_and_fullwidth_at_signs_in_one_text() -> None:
    found = PIIDetector().detect("ana＠example.org or jane@example.com")
    assert [(f.entity_type, f.text) for f in found] == [
        ("EMAIL_ADDRESS", "ana＠example.org"),
        ("EMAIL_ADDRESS", "jane@example.com"),
    ]


# --------------------------------------------------------------------------- phone checks


def test_glued_after_agrees_with_its_regex() -> None:
    from llm_middleware.pii import phones

    regex = re.compile(r"\w|[.,/-]\w")
    chars = ["", "a", "Z", "5", "_", " ", "-", ".", ",", "/", ":", "é", "٣", "\u00a0", "x", ")"]
    tails = [a + b for a in chars for b in chars]
    for tail in tails:
        text = "555-0132" + tail
        assert phones._glued_after(text, 8) is (regex.match(text, 8) is not None), repr(tail)


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("SKU 2031-884-1120", None),  # a label: no phone
        ("Order no. 415-555-0132", None),
        ("ZIP 415-555-0132", None),
        ("\u017fku 2031-884-1120", None),  # long s: the regex matches it as "sku"
        ("R\u00e9f.: sku 2031-884-1120", None),  # non-ASCII window: the regex decides
        ("pedido n\u00famero, order no. 415-555-0132", None),
        ("Tel\u00e9fono de la oficina 415-555-0132", "415-555-0132"),  # no label in it
        ("\u0130zmir order no. 415-555-0132", None),  # lower() lengthens "İ": the regex
        ("call 415-555-0132", "415-555-0132"),
        ("caf\u00e9 phone 415-555-0132", "415-555-0132"),  # non-ASCII window, no label
        ("order no. 12, call 415-555-0132", "415-555-0132"),  # a phone word after the label
    ],
)
def test_number_labels_with_and_without_ascii_windows(text: str, phone: str | None) -> None:
    found = [f.text for f in PIIDetector(["PHONE_NUMBER"]).detect(text)]
    assert found == ([phone] if phone else [])


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("paid 1,234,567 in total", None),  # thousands
        ("paid 1 234 567 euros", None),
        ("paid 12.345.678 euros", None),
        ("tel 1 234 567", "1 234 567"),  # the shape of thousands after a phone word: a phone
        ("tel 12.345.678", "12.345.678"),
        ("call 212 555 0172 now", "212 555 0172"),  # a last group of 4: no thousands
        ("call 1234 567 890", "1234 567 890"),  # a first group of 4: no thousands
        ("call 0049 30 1234567", "0049 30 1234567"),  # an international "00" prefix
        ("account 4155550132", None),  # bare digits, no phone word
        ("call 415 555 0 132", None),  # a one-digit group: counting, not dialling
        ("call 0415 555 0132 7", "0415 555 0132"),
        # Groups of four: the whole run is no phone (a card's shape); a shorter window is.
        ("call 4155 5501 32 now", "4155 5501"),
        ("call 1234 5678 9012 345", "1234 5678"),
        ("call 1234 567 8901", "1234 567 8901"),  # a group of four first, then not
    ],
)
def test_thousands_and_prefixes(text: str, phone: str | None) -> None:
    found = [f.text for f in PIIDetector(["PHONE_NUMBER"]).detect(text)]
    assert found == ([phone] if phone else [])


# --------------------------------------------------------------------------- long-text gates

GATED_PIECES = [
    "Authorization: Basic dXNlcjpwYXNzd29yZA==",  # base64 of "user:password"
    "header bearer abcDEF0123456789xyz set",
    "key SG." + "a1B2c3D4e5F6g7H8i9J0kL" + "." + "m" * 20 + "N1" * 11 + "o" + " sent",
    "db postgres://admin:s3cret@db.example.org/app here",
    "mail jane.doe@example.com now",
]


@pytest.mark.parametrize("piece", GATED_PIECES)
@pytest.mark.parametrize("pad", ["A" * 3000, "lorem ipsum dolor sit amet " * 120])
def test_gated_pieces_in_long_texts(piece: str, pad: str) -> None:
    # The pads lack the gates' single characters ("s", "r", "G", ":") or hold them all.
    short = PIIDetector()
    expected = findings(short, piece)
    assert expected, piece
    got = findings(short, pad + " " + piece + " " + pad)
    shift = len(pad) + 1
    assert [(t, s - shift, e - shift, v) for t, s, e, v in got] == expected


def test_gated_prefixes_absent_from_a_long_text() -> None:
    text = "A" * 3000 + " Basic and bearer and SG.x and http:// and @ " + "A" * 3000
    assert PIIDetector().detect(text) == []


def test_around_threshold() -> None:
    # Up to one mark in 64 characters, the parts around them; more, the whole text.
    size = 64 * 40
    limit = size >> 6
    at_limit = ("-" + "x" * 63) * limit
    assert len(at_limit) == size
    assert det._around(at_limit, "-") != at_limit
    assert det._around(at_limit, "-").count("-") == limit
    over = "-" + at_limit[:-1]
    assert over.count("-") == limit + 1
    assert det._around(over, "-") is over


# --------------------------------------------------------------------------- cheaper pieces


def test_finding_keeps_the_frozen_dataclass_behaviour() -> None:
    import copy
    import dataclasses
    import pickle

    made = det.Finding("US_SSN", 4, 15, "078-05-1120", 0.85)
    by_name = det.Finding(entity_type="US_SSN", start=4, end=15, text="078-05-1120", score=0.85)
    assert made == by_name and hash(made) == hash(by_name)
    assert (made.entity_type, made.start, made.end, made.text, made.score) == (
        "US_SSN",
        4,
        15,
        "078-05-1120",
        0.85,
    )
    assert made != det.Finding("US_SSN", 4, 15, "078-05-1120", 0.7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.start = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        det.Finding("US_SSN", 4, 15, "078-05-1120")  # type: ignore[call-arg]
    assert "078" not in repr(made) and "start=4" in repr(made)
    assert pickle.loads(pickle.dumps(made)) == made
    assert copy.copy(made) == made
    assert dataclasses.replace(made, score=0.5).score == 0.5
    assert [f.name for f in dataclasses.fields(made)] == [
        "entity_type",
        "start",
        "end",
        "text",
        "score",
    ]
    assert not hasattr(made, "__dict__")


def test_one_digit_last_agrees_with_the_regex_it_replaced() -> None:
    from llm_middleware.pii import phones

    regex = re.compile(r".*[ ./-]\d\Z")
    chars = ["1", "0", "٣", "²", " ", ".", "/", "-", "\u00a0", "(", ")", "x"]
    tails = [a + b + c for a in chars for b in chars for c in chars]
    for tail in tails:
        value = "212 555" + tail
        assert phones._one_digit_last(value) is (regex.match(value) is not None), repr(value)
    assert phones._one_digit_last("978-3-16-148410-0")
    assert not phones._one_digit_last("0775 2212 211")


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("card 4111 1111 1111 1111 ok", [("CREDIT_CARD", "4111 1111 1111 1111")]),
        ("card 4111111111111111", [("CREDIT_CARD", "4111111111111111")]),
        ("card 4111.1111.1111.1111", [("CREDIT_CARD", "4111.1111.1111.1111")]),
        ("card 4111  1111  1111  1111", [("CREDIT_CARD", "4111  1111  1111  1111")]),
        # Runs too short for a card: the look-ahead turns them away, other shapes still match.
        ("ssn 078-05-1120 only", [("US_SSN", "078-05-1120")]),
        ("host 10.1.2.3 only", [("IP_ADDRESS", "10.1.2.3")]),
        ("ref 4111 1111 111", []),
    ],
)
def test_card_look_ahead_keeps_cards_and_short_runs(
    text: str, found: list[tuple[str, str]]
) -> None:
    detector = PIIDetector(["CREDIT_CARD", "US_SSN", "IP_ADDRESS"])
    assert [(f.entity_type, f.text) for f in detector.detect(text)] == found


CONTEXT_PIECES = [
    "Date of Birth:",
    "DOB",
    "d.o.b.",
    "born on",
    "reborn",
    "BIRTHDAY",
    "geboren am",
    "nacido el",
    "Nacimiento",
    "naissance",
    "passport no",
    "PASSPORT",
    "Pasaporte",
    "passeport",
    "Reisepass",
    "password",
    "driver's license",
    "Drivers  Licence",
    "driving licence",
    "DL",
    "DLN",
    "dl",
    "license number",
    "licence #",
    "X1234567",
    "17/06/1976",
    "April 12, 1990",
    "D1234-5678",
    "dlx",
    ",",
    ".",
    "\n",
]


@pytest.mark.parametrize("seed", range(6))
def test_anchored_context_search_agrees_with_finditer(seed: int) -> None:
    from llm_middleware.pii import context

    rng = random.Random(seed)
    patterns = [
        (context._BIRTH, context._BIRTH_HINTS),
        (context._PASSPORT, context._PASSPORT_ANCHORS),
        (context._LICENSE, context._LICENSE_ANCHORS),
    ]
    matched = 0
    for _ in range(300):
        text = " ".join(rng.choice(CONTEXT_PIECES) for _ in range(rng.randint(1, 12)))
        for pattern, anchors in patterns:
            expected = [m.span() for m in pattern.finditer(text)]
            got = [m.span() for m in context._anchored(text, text.lower(), pattern, anchors)]
            assert got == expected, (text, pattern.pattern)
            matched += len(expected)
    assert matched > 300  # the pieces do hold contexts


@pytest.mark.parametrize(
    "text",
    [
        "Date of Birth: April 12, 1990. Passport: X1234567. DL D1234-5678.",
        "DOB 03/15/1989, driver's license D1234567",
        # Not ASCII: the plain case-insensitive search over the whole text decides.
        "Date of Birth \u2014 17/06/1976, passport X1234567, driver's license D1234567",
        "caf\u00e9 DOB 17/06/1976",
        "n\u00e9 le 17/06/1976",
        "nothing here 17/06/1976",
    ],
)
def test_in_context_finds_what_the_plain_search_finds(text: str) -> None:
    from llm_middleware.pii import context

    plain = (
        [("DATE_OF_BIRTH", s, e) for s, e in context._dates_of_birth(text)]
        + [("PASSPORT", s, e) for s, e in context._passports(text)]
        + [("US_DRIVER_LICENSE", s, e) for s, e in context._driver_licenses(text)]
    )
    assert context.find_in_context(text) == plain


PHONE_WORDS = [
    "phone",
    "Telephone",
    "tel",
    "TEL.",
    "tele",
    "tlf",
    "tf.",
    "recall",
    "Call",
    "mobile",
    "automobile",
    "cellar",
    "fax",
    "dial",
    "WhatsApp",
    "whats app",
    "sms",
    "movil",
    "llamar",
    "portable",
    "handy",
    "ruf",
    "appel",
    "numbers",
    "numeros",
    "numeri",
    "Nummern",
    "contact",
    "reach",
    "my",
    "My new number",
    "your work number",
    "their number",
    "other",
    "hour",
    "number",
    "account",
    "card:",
    "\n",
    "x" * 30,
    # Not ASCII: lower-cased copies that keep positions, and the characters that do not.
    "Tel\u00e9fono",
    "T\u00c9L.",
    "M\u00f3vil",
    "N\u00daMEROS",
    "n\u00fcmeros",
    "\u017fms",  # long s: the case-insensitive regex reads "sms"
    "mob\u0131le",  # dotless i: "mobile"
    "\u0130stanbul",  # lower() makes two characters of it
    "\u212aontakt",  # Kelvin sign, lower-cased to "k"
    "caf\u00e9",
]


@pytest.mark.parametrize("seed", range(6))
def test_phone_context_agrees_with_the_plain_search(seed: int) -> None:
    from llm_middleware.pii import phones

    rng = random.Random(seed)
    hits = misses = 0
    for _ in range(400):
        text = " ".join(rng.choice(PHONE_WORDS) for _ in range(rng.randint(1, 3))) + " "
        start = len(text)
        text += "5550132"
        window = text[max(0, start - phones._CONTEXT_WINDOW) : start]
        expected = phones._CONTEXT.search(window, window.rfind("\n") + 1) is not None
        assert phones._context_before(text, start) is expected, text
        hits += expected
        misses += not expected
    assert hits > 20 and misses > 20


def test_lower_aligned() -> None:
    from llm_middleware.pii.context import lower_aligned

    assert lower_aligned("Call ME") == "call me"
    assert lower_aligned("T\u00c9L\u00c9FONO") == "t\u00e9l\u00e9fono"
    assert lower_aligned("\u212aontakt") == "kontakt"
    assert lower_aligned("\u017fms") is None  # "ſ" matches "s" case-insensitively
    assert lower_aligned("mob\u0131le") is None  # "ı" matches "i"
    assert lower_aligned("\u0130stanbul") is None  # two characters once lower-cased


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("\u017fms 5550132", "5550132"),  # the regex reads "sms"
        ("mob\u0131le 5550132", "5550132"),
        ("tel\u00e9fono 5550132", "5550132"),  # not ASCII: the plain search decides
        ("m\u00f3vil 5550132", "5550132"),
        ("caf\u00e9 recall 5550132", None),
        ("recall 5550132", None),
        ("Tf. 5550132", "5550132"),
        ("my new number 5550132", "5550132"),
        ("my other 5550132", None),
    ],
)
def test_bare_numbers_after_phone_words(text: str, phone: str | None) -> None:
    found = [f.text for f in PIIDetector(["PHONE_NUMBER"]).detect(text)]
    assert found == ([phone] if phone else [])


SSN_WORDS = ["SSN", "ssns", "SS#", "Social  Security", "social", "ITIN", "itinerary", "class",
             "assn", "no.", ". Next", "\n", "number", "is", "x" * 25, "n\u00famero",
             "\u017fsn", "SOCIAL \u017fECURITY", "\u0131t\u0131n", "\u0130TIN"]  # fmt: skip


def _ssn_context_reference(text: str, start: int) -> bool:
    lowest = max(0, start - det._SSN_CONTEXT_WINDOW - 20)
    return any(
        start - c.end() <= det._SSN_CONTEXT_WINDOW
        and det._SENTENCE_BREAK.search(text, c.end(), start) is None
        for c in det._SSN_CONTEXT.finditer(text, lowest, start)
    )


@pytest.mark.parametrize("seed", range(4))
def test_ssn_context_gate_agrees_with_the_regex(seed: int) -> None:
    rng = random.Random(seed)
    hits = misses = 0
    for _ in range(400):
        text = " ".join(rng.choice(SSN_WORDS) for _ in range(rng.randint(1, 5))) + " "
        start = len(text)
        text += "078 05 1120"
        expected = _ssn_context_reference(text, start)
        assert det._ssn_context_near(text, start) is expected, text
        hits += expected
        misses += not expected
    assert hits > 20 and misses > 20


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("SSN 078 05 1120", ["078 05 1120"]),
        ("Social Security: 078051120", ["078051120"]),
        ("n\u00famero ITIN 912 70 1234", ["912 70 1234"]),  # not ASCII: the regex decides
        ("ref 078 05 1120", []),  # a spaced SSN shape without its word
        ("order 078051120", []),
        ("\u00e9t\u00e9 078051120", []),
    ],
)
def test_ssn_shapes_need_their_word(text: str, found: list[str]) -> None:
    assert [f.text for f in PIIDetector(["US_SSN"]).detect(text)] == found


def _ipv6_reference(text: str) -> list[tuple[int, int, str]]:
    """_find_ipv6 as it was before colons without a second colon ahead were skipped."""
    found = []
    colon = text.find(":")
    while colon != -1:
        back = det._IPV6_CHARS.match(text[max(0, colon - det._IPV6_MAX) : colon][::-1])
        start = colon - (back.end() if back else 0)
        ahead = det._IPV6_CHARS.match(text, colon)
        end = ahead.end() if ahead else colon + 1
        colon = text.find(":", end)
        candidate = text[start:end]
        if (
            (start and (text[start - 1].isalnum() or text[start - 1] == "_"))
            or (end < len(text) and (text[end].isalnum() or text[end] == "_"))
            or candidate[0] == "."
            or len(candidate) > det._IPV6_MAX + 1
            or candidate.count(":") < 2
            or det._HAS_DIGIT(candidate) is None
        ):
            continue
        if not det._ipv6_valid(candidate):
            candidate = candidate[:-1]
            if candidate[-1] == "." or not det._ipv6_valid(candidate):
                continue
        found.append((start, start + len(candidate), candidate))
    return found


IPV6_PIECES = ["fe80::1", "2001:db8::8a2e:370:7334", "::1", "10:30", "a:b", "ab12:", ":", "::"]


@pytest.mark.parametrize("seed", range(6))
def test_ipv6_colon_skip_agrees_with_the_plain_loop(seed: int) -> None:
    # Single colons ("10:30", "key:") around and glued to addresses: skipping a colon with
    # no second colon in its run ahead must not lose or move any address.
    rng = random.Random(seed)
    hits = 0
    for _ in range(300):
        text = "".join(
            rng.choice(IPV6_PIECES) if rng.random() < 0.5 else rng.choice(" .:,x_1f") * 2
            for _ in range(rng.randint(1, 10))
        )
        expected = _ipv6_reference(text)
        got = [(f.start, f.end, f.text) for f in det._find_ipv6(text)]
        assert got == expected, text
        hits += bool(expected)
    assert hits > 30


LOCAL_CHARS = "aZ09_+%.-@ \"'=/<>,;:\u00e9\u00df\u0436\u4e2d\u0915\u093f\u0e31\u00a0\uff20"


@pytest.mark.parametrize("seed", range(4))
def test_local_run_agrees_with_the_reversed_regex(seed: int) -> None:
    # The rstrip fast path must measure the run exactly as the regex on the reversed slice,
    # including runs that reach letters and marks of other scripts.
    rng = random.Random(seed)
    fallbacks = 0
    for _ in range(500):
        text = "".join(rng.choice(LOCAL_CHARS) for _ in range(rng.randint(0, 90))) + "@x.io"
        at = len(text) - 5
        for lowest in (0, max(0, at - det._EMAIL_MAX_LOCAL - 1), at):
            run = det._EMAIL_LOCAL_RUN.match(text[lowest:at][::-1])
            assert det._local_run(text, lowest, at) == (run.end() if run else 0), text
        fallbacks += not text[:at].rstrip(det._EMAIL_LOCAL_ASCII)[-1:].isascii()
    assert fallbacks > 50


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("write to jos\u00e9.p\u00e9rez@example.com", ["jos\u00e9.p\u00e9rez@example.com"]),
        ("\u0436\u0435\u043d\u044f+x@example.ru ok", ["\u0436\u0435\u043d\u044f+x@example.ru"]),
        ("mail: a.b_c-d%e@example.org", ["a.b_c-d%e@example.org"]),
        ("email=jane@x.io", ["jane@x.io"]),
        ("..@example.com", []),
    ],
)
def test_local_parts_in_and_out_of_ascii(text: str, found: list[str]) -> None:
    assert [f.text for f in PIIDetector(["EMAIL_ADDRESS"]).detect(text)] == found


NOT_A_PHONE_DIGITS = "0123456789" * 3 + "\u0663"  # one Arabic-Indic digit in 31
NOT_A_PHONE_SEPS = [" ", ".", "-", "/", ") ", " (", "  ", "\u00a0", "-", "."]


def _random_candidate(rng: random.Random) -> str:
    value = rng.choice(["", "", "", "(", "+", "("])
    for i in range(rng.randint(1, 5)):
        if i:
            value += rng.choice(NOT_A_PHONE_SEPS)
        value += "".join(rng.choice(NOT_A_PHONE_DIGITS) for _ in range(rng.randint(1, 5)))
    return value


@pytest.mark.parametrize("seed", range(4))
def test_not_a_phone_gate_agrees_with_the_regex(seed: int) -> None:
    # Dates, years, SSN and ZIP+4 shapes: the group-length gate must never skip a value the
    # regex matches (non-ASCII digits, "\u0663", go to the regex).
    from llm_middleware.pii import phones

    rng = random.Random(seed)
    hits = 0
    for _ in range(3000):
        value = _random_candidate(rng)
        groups = phones._DIGIT_GROUPS.findall(value)
        if not groups:
            continue
        expected = phones._NOT_A_PHONE.match(value) is not None
        assert phones._not_a_phone_shape(value, groups) is expected, repr(value)
        hits += expected
    for value in ("1985-01-01", "01.02.1985", "078-05-1120", "12345-6789", "2024-5", "555 12 3"):
        assert phones._not_a_phone_shape(value, phones._DIGIT_GROUPS.findall(value)), value
    for value in ("415-555-0132", "(020) 8231 7777", "020 7946 0958", "+1 415 555 0132"):
        assert not phones._not_a_phone_shape(value, phones._DIGIT_GROUPS.findall(value)), value
    assert hits > 5


def _ipaddress_accepts(candidate: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:
        return False
    return True


def test_ipv4_check_agrees_with_ipaddress() -> None:
    # Every octet spelling the digit scan can produce (1-3 digits, leading zeros included),
    # in each of the four positions.
    octets = [str(i) for i in range(1000)] + [f"{i:02d}" for i in range(100)]
    octets += [f"{i:03d}" for i in range(1000)]
    for octet in octets:
        for position in range(4):
            parts = ["10", "1", "2", "3"]
            parts[position] = octet
            candidate = ".".join(parts)
            assert det._ipv4_valid(candidate) is _ipaddress_accepts(candidate), candidate
    for candidate in ("0.0.0.0", "255.255.255.255", "192.0.2.1"):
        assert det._ipv4_valid(candidate)
    for candidate in ("256.1.1.1", "1.1.1.01", "00.1.1.1", "1.999.1.1"):
        assert not det._ipv4_valid(candidate)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("from 192.0.2.1 and 10.0.0.255", ["192.0.2.1", "10.0.0.255"]),
        ("version 1.02.3.4 and 300.1.1.1", []),
        ("host 0.0.0.0 up", ["0.0.0.0"]),
    ],
)
def test_dotted_quads(text: str, found: list[str]) -> None:
    assert [f.text for f in PIIDetector(["IP_ADDRESS"]).detect(text)] == found
