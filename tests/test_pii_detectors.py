from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from llm_middleware.pii import Finding, PIIDetector, register_detector
from llm_middleware.pii.detectors import BUILTIN_ENTITIES, make_detector, unregister_detector
from pii_helpers import DETECTOR, found, only

# --------------------------------------------------------------------------- per entity


@pytest.mark.parametrize(
    "value",
    [
        "jane.doe@example.com",
        "j.smith+news@mail.example.co.uk",
        "user_99@sub.example.io",
        "josé@exemple.fr",
    ],
)
def test_email_found(value: str) -> None:
    assert found(f"Write to {value}, thanks.") == [("EMAIL_ADDRESS", value)]


@pytest.mark.parametrize(
    "text",
    ["foo@bar", "user@localhost", "@example.com", "jane.@example.com", "ja..ne@example.com"],
)
def test_email_rejected(text: str) -> None:
    assert only("EMAIL_ADDRESS", text) == []


def test_email_surrounding_punctuation_excluded() -> None:
    text = "email=jane@x.io and 'bob@y.org' or <amy@z.net>."
    assert only("EMAIL_ADDRESS", text) == ["jane@x.io", "bob@y.org", "amy@z.net"]


@pytest.mark.parametrize(
    "value",
    [
        "(415) 555-0132",
        "415-555-0132",
        "415.555.0132",
        "415 555 0132",
        "1-800-555-0199",
        "+1 415 555 0132",
        "+1-415-555-0132",
        "+14155550132",
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "+33 1 23 45 67 89",
        "+49 30 123456",
        "+81 3 1234 5678",
    ],
)
def test_phone_found(value: str) -> None:
    assert found(f"Call me at {value} tonight.") == [("PHONE_NUMBER", value)]


@pytest.mark.parametrize(
    "text",
    [
        "+1 115 555 0132",
        "+28 1234 5678",  # unassigned calling code
        "+44 12",  # too short
        "12:30:45+0200",
    ],
)
def test_phone_rejected(text: str) -> None:
    assert only("PHONE_NUMBER", text) == []


def test_phone_trailing_unrelated_number_dropped() -> None:
    assert only("PHONE_NUMBER", "call +1 415 555 0132 24/7") == ["+1 415 555 0132"]


@pytest.mark.parametrize(
    "value",
    [
        "4111 1111 1111 1111",  # Visa
        "4111-1111-1111-1111",
        "4222222222222",  # Visa, 13 digits
        "5555555555554444",  # Mastercard
        "2223003122003222",  # Mastercard 2-series
        "3782 822463 10005",  # Amex
        "6011111111111117",  # Discover
        "3530111333300000",  # JCB
        "30569309025904",  # Diners
        "6200000000000005",  # UnionPay
    ],
)
def test_card_found(value: str) -> None:
    assert found(f"My card is {value}, expiring 09/27.") == [("CREDIT_CARD", value)]


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # bad Luhn
        "4111111111111112",
        "1234567812345670",  # Luhn-valid, no such issuer
        "7111 1111 1111 1114",
        "4111 1111-1111 1111",  # mixed separators
        "41111 111 1111 1111",  # odd grouping
        "55555555555544445",  # Mastercard has 16 digits
    ],
)
def test_card_rejected(text: str) -> None:
    assert only("CREDIT_CARD", text) == []


def test_card_next_to_other_numbers() -> None:
    assert only("CREDIT_CARD", "ref 12 4111 1111 1111 1111") == ["4111 1111 1111 1111"]
    assert only("CREDIT_CARD", "4111 1111 1111 1111 2024") == ["4111 1111 1111 1111"]


@pytest.mark.parametrize(
    "value",
    [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82 WEST 1234 5698 7654 32",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
        "BE68 5390 0754 7034",
        "CH93 0076 2011 6238 5295 7",
    ],
)
def test_iban_found(value: str) -> None:
    assert found(f"Wire it to {value} please.") == [("IBAN_CODE", value)]


@pytest.mark.parametrize(
    "text",
    [
        "DE89 3704 0044 0532 0130 01",  # bad checksum
        "DE89370400440532013",  # too short for DE
        "XX89370400440532013000",  # no such country
    ],
)
def test_iban_rejected(text: str) -> None:
    assert only("IBAN_CODE", text) == []


def test_iban_cut_at_country_length() -> None:
    assert only("IBAN_CODE", "BE68 5390 0754 7034 CODE") == ["BE68 5390 0754 7034"]


def test_failed_iban_candidate_still_scanned_for_cards() -> None:
    assert found("AB12 4111 1111 1111 1111") == [("CREDIT_CARD", "4111 1111 1111 1111")]


@pytest.mark.parametrize("value", ["536-22-1234", "001-01-0001", "899-99-9999"])
def test_ssn_found(value: str) -> None:
    assert found(f"My number is {value}.") == [("US_SSN", value)]


@pytest.mark.parametrize(
    "value",
    [
        "000-12-3456",
        "666-12-3456",
        "536-00-1234",
        "536-22-0000",
        "536-22 1234",
    ],
)
def test_ssn_rejected(value: str) -> None:
    assert only("US_SSN", f"SSN {value}") == []


@pytest.mark.parametrize("value", ["900-12-3456", "999-12-3456", "111-11-1111", "536 22 1234"])
def test_ssn_unissued_areas_only_after_an_ssn_word(value: str) -> None:
    assert only("US_SSN", f"ref {value}") == []
    assert only("US_SSN", f"SSN {value}") == [value]
    assert only("US_SSN", f"Social Security: {value}") == [value]


@pytest.mark.parametrize("value", ["123-45-6789", "078-05-1120"])
def test_ssn_well_known_examples_are_masked(value: str) -> None:
    # Someone typing the example value in a form means an SSN goes there.
    assert only("US_SSN", f"my number is {value}") == [value]


def test_bare_ssn_needs_context() -> None:
    assert only("US_SSN", "SSN: 536221234") == ["536221234"]
    assert only("US_SSN", "my social security number is 536221234") == ["536221234"]
    assert only("US_SSN", "Reference number 536221234") == []
    assert only("US_SSN", "My SSN is on file. Reference 536221234.") == []


@pytest.mark.parametrize(
    "value",
    [
        "192.168.1.20",
        "8.8.8.8",
        "::1",
        "2001:db8::8a2e:370:7334",
        "2001:0db8:0000:0000:0000:ff00:0042:8329",
        "fe80::1",
        "::ffff:192.0.2.1",
    ],
)
def test_ip_found(value: str) -> None:
    assert found(f"Login from {value} failed.") == [("IP_ADDRESS", value)]


@pytest.mark.parametrize(
    "text",
    [
        "256.1.1.1",
        "192.168.01.1",
        "1.2.3.4.5",
        "2001:db8::g",
        "00:1B:44:11:3A:B7",  # MAC address
        "bad:: and cafe:face:",
        "x2001:db8::1",
    ],
)
def test_ip_rejected(text: str) -> None:
    assert only("IP_ADDRESS", text) == []


def test_ip_trailing_punctuation() -> None:
    assert only("IP_ADDRESS", "from fe80::1: denied, then 10.0.0.1.") == ["fe80::1", "10.0.0.1"]


@pytest.mark.parametrize(
    "value",
    [
        "sk-proj-abc123DEF456ghi789JKL012",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_0123456789abcdefghijABCDEFGHIJ012345",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "xoxb-123456789012-abcdefABCDEF",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc==\n-----END RSA PRIVATE KEY-----",
    ],
)
def test_secret_found(value: str) -> None:
    assert found(f"key: {value} oops") == [("SECRET", value)]


def test_bearer_value_only() -> None:
    assert found("Authorization: Bearer abc.def123456789") == [("SECRET", "abc.def123456789")]
    assert found("Bearer tokens are great, bearer authentication too") == []


def test_secret_lookalikes_rejected() -> None:
    assert found("the task-sk-learn-compatible-estimators and sk-learn-compatible-pipelines") == []


# --------------------------------------------------------------------------- decoys


@pytest.mark.parametrize(
    "text",
    [
        "Order ORD-2024-000123 has shipped.",
        "Invoice INV-00012345 dated 12/05/2024.",
        "Running v1.2.3, or 1.2.3, or 2.14.0 of the app.",
        "Tracking id 123e4567-e89b-12d3-a456-426614174000.",
        "Last update: 2024-05-01T12:30:45Z, then 2024-05-01 12:30:45.123+02:00.",
        "Ship to San Francisco, CA 94107 or 94107-1234.",
        "The total was $1,234.56 (or €99.99) including tax.",
        "Reference number 482913374 was attached.",
        "Gift card 4111 1111 1111 1112 did not work.",
        "We met at 12:30 in room 101, queue 12-345 had 6789 tickets.",
        "Phone numbers are 10 digits long; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15.",
        "Ünïcödé tëxt wïth nö PII, 東京 123 and ١٢٣٤٥٦٧٨٩.",
    ],
)
def test_decoys_not_flagged(text: str) -> None:
    assert found(text) == []


def test_version_that_is_a_valid_ipv4_is_an_ip() -> None:
    assert found("version 1.2.3.4") == [("IP_ADDRESS", "1.2.3.4")]
    assert found("v1.2.3.4") == []


# --------------------------------------------------------------------------- detector API


def test_findings_sorted_with_offsets_and_text() -> None:
    text = "Mail jane@x.io, call (415) 555-0132, ip 10.1.2.3."
    findings = DETECTOR.detect(text)
    assert [f.entity_type for f in findings] == ["EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS"]
    for f in findings:
        assert text[f.start : f.end] == f.text
        assert 0 < f.score <= 1


def test_finding_is_frozen_and_repr_hides_value() -> None:
    finding = DETECTOR.detect("jane@x.io")[0]
    with pytest.raises(AttributeError):
        finding.start = 3  # type: ignore[misc]
    assert "jane" not in repr(finding)
    assert not hasattr(finding, "__dict__")


def test_entities_filter() -> None:
    text = "jane@x.io 4111 1111 1111 1111 536-22-1234"
    assert found(text, PIIDetector(["CREDIT_CARD"])) == [("CREDIT_CARD", "4111 1111 1111 1111")]
    assert found(text, PIIDetector({"EMAIL_ADDRESS", "US_SSN"})) == [
        ("EMAIL_ADDRESS", "jane@x.io"),
        ("US_SSN", "536-22-1234"),
    ]
    assert PIIDetector().entities == BUILTIN_ENTITIES


def test_unknown_entity_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="PERSN"):
        PIIDetector(["PERSN"])


def test_overlap_keeps_higher_score_then_longer() -> None:
    text = "id 4111 1111 1111 1111"
    low = make_detector("TICKET", r"id \d+", score=0.5)
    high = make_detector("TICKET", r"id \d+", score=0.99)
    assert found(text, PIIDetector(extra=[low])) == [("CREDIT_CARD", "4111 1111 1111 1111")]
    # The card loses its first group to the ticket but the rest is not left in clear.
    assert found(text, PIIDetector(extra=[high])) == [
        ("TICKET", "id 4111"),
        ("CREDIT_CARD", "1111 1111 1111"),
    ]
    longer = make_detector("TICKET", r"\d{4} \d{4}", score=0.9)
    assert found(text, PIIDetector(extra=[longer])) == [("CREDIT_CARD", "4111 1111 1111 1111")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A phone running into an IPv6 address or a date: both masked, the phone whole.
        ("212-555-0100 10::1", [("PHONE_NUMBER", "212-555-0100"), ("IP_ADDRESS", "10::1")]),
        ("(200) 200-0000 10::", [("PHONE_NUMBER", "(200) 200-0000"), ("IP_ADDRESS", "10::")]),
        # What is left outside the winner has fewer than 4 letters or digits: dropped.
        ("id 4111 1111 1111 1111", [("TICKET", "id 4111 1111 1111 11")]),
    ],
)
def test_overlap_loser_keeps_what_lies_outside_the_winner(
    text: str, expected: list[tuple[str, str]]
) -> None:
    ticket = make_detector("TICKET", r"id [\d ]{17}", score=0.99)
    assert found(text, PIIDetector(extra=[ticket])) == expected


def test_register_detector_pattern_and_validator() -> None:
    try:
        register_detector("EMPLOYEE_ID", r"\bEMP-\d{6}\b", lambda v: not v.endswith("000000"))
        detector = PIIDetector()
        assert found("badge EMP-123456 and EMP-000000", detector) == [("EMPLOYEE_ID", "EMP-123456")]
        assert "EMPLOYEE_ID" in detector.entities
    finally:
        unregister_detector("EMPLOYEE_ID")
    assert found("badge EMP-123456") == []
    assert "EMPLOYEE_ID" not in PIIDetector().entities


def test_register_detector_callable() -> None:
    def spans(text: str) -> Iterator[tuple[int, int]]:
        for m in re.finditer(r"Project \w+", text):
            yield m.span()

    try:
        register_detector("PROJECT", spans, score=0.6)
        assert found("about Project Apollo", PIIDetector(["PROJECT"])) == [
            ("PROJECT", "Project Apollo")
        ]
    finally:
        unregister_detector("PROJECT")


def test_register_detector_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="UPPER_SNAKE_CASE"):
        register_detector("employee id", r"x")


def test_ner_hook_merged_and_filtered() -> None:
    def ner(text: str) -> list[tuple[str, int, int, float]]:
        start = text.index("Jane Doe")
        return [("PERSON", start, start + 8, 0.85), ("LOCATION", 0, 5, 0.7), ("PERSON", 5, 2, 1)]

    text = "Paris: Jane Doe, jane@x.io"
    assert found(text, PIIDetector(ner=ner)) == [
        ("LOCATION", "Paris"),
        ("PERSON", "Jane Doe"),
        ("EMAIL_ADDRESS", "jane@x.io"),
    ]
    assert found(text, PIIDetector(["PERSON"], ner=ner)) == [("PERSON", "Jane Doe")]


def test_empty_and_non_ascii_text() -> None:
    assert DETECTOR.detect("") == []
    text = "Grüße aus München! Schreib an müller@beispiel.de oder ruf +49 30 1234567 an. ☎️"
    assert found(text) == [
        ("EMAIL_ADDRESS", "müller@beispiel.de"),
        ("PHONE_NUMBER", "+49 30 1234567"),
    ]


def test_deterministic() -> None:
    text = "jane@x.io 4111 1111 1111 1111 DE89 3704 0044 0532 0130 00 ::1"
    assert DETECTOR.detect(text) == PIIDetector().detect(text)


def test_one_megabyte_text() -> None:
    chunk = (
        "Hello, write to jane.doe@example.com or call (415) 555-0132. Order ORD-2024-000123 "
        "shipped 2024-05-01T12:30:45Z to 94107; card 4111 1111 1111 1111, IBAN "
        "DE89 3704 0044 0532 0130 00, SSN 536-22-1234, from 10.0.0.1 and 2001:db8::1. "
    )
    text = chunk * (1_000_000 // len(chunk) + 1)
    findings = DETECTOR.detect(text)
    per_chunk = len(DETECTOR.detect(chunk))
    assert per_chunk == 7
    assert len(findings) == per_chunk * (len(text) // len(chunk))
    assert all(isinstance(f, Finding) for f in findings)


@pytest.mark.parametrize(
    "text",
    [
        "1 2 3 4 5 6 7 8 9 " * 20_000,
        "-----BEGIN RSA PRIVATE KEY----- x " * 10_000,
        "a:b::c:" * 50_000,
        "x@a.b." * 50_000,
        "1" * 300_000,
    ],
)
def test_pathological_inputs_stay_linear(text: str) -> None:
    DETECTOR.detect(text)  # completes quickly; no timing assertion
