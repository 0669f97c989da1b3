"""Values glued to an e-mail address, obfuscated addresses and cards named by their context
(issue 12): each rule with the shapes it must find and the ordinary text it must leave alone."""

from __future__ import annotations

import pytest

from llm_middleware.pii import PIIDetector, phone_regions
from pii_helpers import DETECTOR, found, only

# --------------------------------------------------------------------------- glued to an address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ann@shop.io321-54-9876", [("EMAIL_ADDRESS", "ann@shop.io"), ("US_SSN", "321-54-9876")]),
        (
            "jo\uff20shop.io321-54-9876",
            [("EMAIL_ADDRESS", "jo\uff20shop.io"), ("US_SSN", "321-54-9876")],
        ),
        (
            "to:b.k@mail.example.net5105105105105100;",
            [("EMAIL_ADDRESS", "b.k@mail.example.net"), ("CREDIT_CARD", "5105105105105100")],
        ),
        (
            "ops@corp.de415-555-0132 ok",
            [("EMAIL_ADDRESS", "ops@corp.de"), ("PHONE_NUMBER", "415-555-0132")],
        ),
        (
            "ip:root@host.org10.1.2.3",
            [("EMAIL_ADDRESS", "root@host.org"), ("IP_ADDRESS", "10.1.2.3")],
        ),
    ],
)
def test_value_glued_to_an_address_is_found_with_it(
    text: str, expected: list[tuple[str, str]]
) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "user@mail.server1",  # a TLD with a digit: no address
        "user@example.com2fa is invalid",
        "user@example.com12 is invalid",
        "sku ab@cd.ef" + "1" * 70,  # a long token: no value cut out of it
    ],
)
def test_tld_with_digits_is_no_address(text: str) -> None:
    assert found(text) == []


def test_glued_values_follow_entities_and_still_need_a_letter_free_start() -> None:
    text = "ann@shop.io321-54-9876"
    assert found(text, PIIDetector(entities=["US_SSN"])) == [("US_SSN", "321-54-9876")]
    assert found(text, PIIDetector(entities=["EMAIL_ADDRESS"])) == [
        ("EMAIL_ADDRESS", "ann@shop.io")
    ]
    # Only an address ends at a TLD: a code glued to letters is still no SSN.
    assert found("part ABC321-54-9876 shipped") == []
    assert found("v2.shop321-54-9876") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "ann [at] shopmail [dot] org4111111111111111",
            [("EMAIL_ADDRESS", "ann [at] shopmail [dot] org"), ("CREDIT_CARD", "4111111111111111")],
        ),
        (
            "ann(at)shopmail(dot)org321-54-9876 ok",
            [("EMAIL_ADDRESS", "ann(at)shopmail(dot)org"), ("US_SSN", "321-54-9876")],
        ),
        (
            "ann.lee@shopmail[DOT]org10.1.2.3",
            [("EMAIL_ADDRESS", "ann.lee@shopmail[DOT]org"), ("IP_ADDRESS", "10.1.2.3")],
        ),
    ],
)
def test_value_glued_to_an_obfuscated_address_is_found_with_it(
    text: str, expected: list[tuple[str, str]]
) -> None:
    # As for a plain address: the value glued on is reported, never left in clear.
    assert found(text) == expected


@pytest.mark.parametrize("text", ["ann(at)shopmail(dot)org2024", "ann [at] shop [dot] io12 x"])
def test_obfuscated_tld_with_digits_is_no_address(text: str) -> None:
    assert found(text) == []


@pytest.mark.skipif(not phone_regions.available(), reason="needs the [phones] extra")
def test_glued_phone_is_checked_against_phone_regions() -> None:
    us = PIIDetector(phone_regions=["US"])
    text = "ann@shop.io333-123-4567 bob@shop.io415-555-0132 cy@shop.io321-54-9876"
    # 333 is no US area code: the address still ends there, the phone is not reported.
    assert found(text, us) == [
        ("EMAIL_ADDRESS", "ann@shop.io"),
        ("EMAIL_ADDRESS", "bob@shop.io"),
        ("PHONE_NUMBER", "415-555-0132"),
        ("EMAIL_ADDRESS", "cy@shop.io"),
        ("US_SSN", "321-54-9876"),
    ]
    assert ("PHONE_NUMBER", "333-123-4567") in found(text)
    obfuscated = "ann(at)shop.io333-123-4567 bob(at)shop.io415-555-0132"
    assert found(obfuscated, us) == [
        ("EMAIL_ADDRESS", "ann(at)shop.io"),
        ("EMAIL_ADDRESS", "bob(at)shop.io"),
        ("PHONE_NUMBER", "415-555-0132"),
    ]


# --------------------------------------------------------------------------- obfuscated e-mails


@pytest.mark.parametrize(
    "value",
    [
        "ann.lee@shopmail[DOT]org",
        "ann.lee@shopmail[.]org",
        "ann.lee@shop(dot)co(dot)uk",
        "ann.lee@shopmail dot org",
        "ann [at] shopmail [dot] org",
        "ann[at]shopmail[dot]org",
        "ann(at)shopmail.org",
        "ann (AT) shopmail (DOT) org",
        "ann{at}shopmail.org",
        "ann [@] shopmail.org",
        "ann.lee at gmail.com",  # webmail, a local part no word has
        "a_lee at yahoo dot com",
        "lee99 at outlook.com",
    ],
)
def test_obfuscated_email_found_whole(value: str) -> None:
    assert found(f"Reach her: {value}. Thanks") == [("EMAIL_ADDRESS", value)]


@pytest.mark.parametrize(
    "text",
    [
        "My email is ann at shopmail.org",
        "e-mail: ann at shopmail dot org",
        "Send mail to support at acme-corp.com please",
    ],
)
def test_bare_at_after_an_email_word(text: str) -> None:
    assert len(only("EMAIL_ADDRESS", text)) == 1
    assert only("EMAIL_ADDRESS", text)[0].endswith((".org", "dot org", ".com"))


@pytest.mark.parametrize(
    "text",
    [
        "meet at noon.",
        "look at example.com",
        "at home.com",
        "Take a look at github.com for the code.",
        "She works at acme.com and likes it.",
        "I logged in at gmail.com yesterday",  # webmail, but an English word before "at"
        "ann at gmail.com",  # a name: too close to "meet Ann at ..."
        "email me at gmail.com",  # a pronoun
        "Check your email at outlook.com",  # the e-mail word is the local part
        "My email is down, look at status.example.com",  # another clause
        "The mail came. Look at example.com",  # another sentence
        "we arrive at 10.30 at the station",
        "see foo (at) bar and [at] noon",
        "value = items[at] + self.offset",  # code: no domain after the brackets
        "jane@example.com",  # plain: found once, by the plain finder
    ],
)
def test_ordinary_english_is_no_obfuscated_email(text: str) -> None:
    assert only("EMAIL_ADDRESS", text) == (["jane@example.com"] if "@" in text else [])


def test_obfuscated_dot_extends_a_plain_address() -> None:
    # The plain finder stops at "[" ("ann@mail.shop"); the whole address wins.
    assert found("ann@mail.shop[dot]org") == [("EMAIL_ADDRESS", "ann@mail.shop[dot]org")]


# --------------------------------------------------------------------------- cards in context


@pytest.mark.parametrize(
    "text",
    [
        "credit card: 7111 1111 1111 1114",  # Luhn-valid, no issuer in the table
        "Debit card 7111-1111-1111-1114, exp 10/28",
        "my payment card is 7111111111111114",
        "CC# 0000 0000 0000 0000",  # a placeholder: masked, it costs nothing
        "credit card 7111 111111 11113",  # 4-6-5
        "Kreditkarte 7111 1111 1111 1114",
    ],
)
def test_luhn_valid_number_after_a_card_word(text: str) -> None:
    assert len(only("CREDIT_CARD", text)) == 1


@pytest.mark.parametrize(
    "text",
    [
        "7111 1111 1111 1114",  # no card word
        "0000 0000 0000 0000",
        "The gift card 7111 1111 1111 1114 did not work.",  # not a payment card word
        "credit card 4111 1111 1111 1112",  # Luhn-invalid even in context
        "Credit card: 1234567890123456",
        "credit card 7111 1111 1111 11140",  # 17 digits outside the table
        "credit card 7111 1111-1111 1114",  # mixed separators
        "Credit card expired. Order 7111 1111 1111 1114",  # another sentence
        "credit card, then ref 7111 1111 1111 1114",  # another clause
    ],
)
def test_card_word_does_not_make_other_numbers_cards(text: str) -> None:
    assert only("CREDIT_CARD", text) == []


def test_issuer_table_card_unchanged_by_context() -> None:
    assert only("CREDIT_CARD", "credit card 4111 1111 1111 1111") == ["4111 1111 1111 1111"]
    assert only("CREDIT_CARD", "credit card ref 12 4111 1111 1111 1111") == ["4111 1111 1111 1111"]


# --------------------------------------------------------------------------- long texts

NEW_PIECES = [
    "write to jo.lee [at] acme [dot] com today",
    "my email is jo at acme.com, thanks",
    "jo.lee@acme[dot]com was bounced",
    "mail jo@acme.com123-45-6789 then",
    "credit card 7111 1111 1111 1114 declined",
    "look at acme.com for details",  # no PII
]


@pytest.mark.parametrize("piece", NEW_PIECES)
@pytest.mark.parametrize("pad", ["A" * 3000, "we met at noon at the cafe (at 12). " * 90])
def test_new_rules_find_the_same_in_a_long_text(piece: str, pad: str) -> None:
    expected = [(f.entity_type, f.start, f.end) for f in DETECTOR.detect(piece)]
    assert expected or piece.startswith("look")
    got = [(f.entity_type, f.start, f.end) for f in DETECTOR.detect(f"{pad} {piece} {pad}")]
    shift = len(pad) + 1
    assert [(t, s - shift, e - shift) for t, s, e in got] == expected
