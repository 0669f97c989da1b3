from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import time
from urllib.parse import parse_qsl, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_middleware.pii import (
    PIIDetector,
    Vault,
    mask_form,
    mask_json,
    mask_query,
    mask_text,
    scrub,
)
from llm_middleware.pii.masking import DEFAULT_SENSITIVE_KEYS, is_exempt_key, mask_json_text

DETECTOR = PIIDetector()
EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"


# --------------------------------------------------------------------------- Vault


def test_placeholders_numbered_per_type_and_stable_per_value() -> None:
    vault = Vault()
    assert vault.placeholder_for("EMAIL_ADDRESS", "a@x.io") == "<EMAIL_ADDRESS_1>"
    assert vault.placeholder_for("EMAIL_ADDRESS", "b@x.io") == "<EMAIL_ADDRESS_2>"
    assert vault.placeholder_for("PHONE_NUMBER", "415-555-0132") == "<PHONE_NUMBER_1>"
    assert vault.placeholder_for("EMAIL_ADDRESS", "a@x.io") == "<EMAIL_ADDRESS_1>"
    assert vault.counts == {"EMAIL_ADDRESS": 3, "PHONE_NUMBER": 1}
    assert vault.values == {"a@x.io", "b@x.io", "415-555-0132"}


def test_restore_known_placeholders_only() -> None:
    vault = Vault()
    vault.placeholder_for("EMAIL_ADDRESS", "a@x.io")
    text = "Hi <EMAIL_ADDRESS_1>, not <EMAIL_ADDRESS_2> nor <email_address_1> nor <X>"
    assert vault.restore(text) == "Hi a@x.io, not <EMAIL_ADDRESS_2> nor <email_address_1> nor <X>"
    assert Vault().restore(text) == text


def test_restore_is_single_pass() -> None:
    vault = Vault()
    vault.placeholder_for("SECRET", "<SECRET_2>")
    vault.placeholder_for("SECRET", "s3cr3t")
    assert vault.restore("<SECRET_1> <SECRET_2>") == "<SECRET_2> s3cr3t"


def test_restore_obj_recurses_and_keeps_keys() -> None:
    vault = Vault()
    ph = vault.placeholder_for("EMAIL_ADDRESS", "a@x.io")
    obj = {ph: [ph, (ph, 1), {"n": None, "ok": True, "s": f"to {ph}"}], "x": 2.5}
    assert vault.restore_obj(obj) == {
        ph: ["a@x.io", ("a@x.io", 1), {"n": None, "ok": True, "s": "to a@x.io"}],
        "x": 2.5,
    }


def test_vault_repr_never_shows_values() -> None:
    vault = Vault()
    vault.placeholder_for("EMAIL_ADDRESS", "secret-person@x.io")
    vault.record("SECRET", "hunter2")
    shown = repr(vault) + str(vault)
    assert "secret-person" not in shown and "hunter2" not in shown
    assert "EMAIL_ADDRESS" in shown and "SECRET" in shown


def test_entity_names_are_made_placeholder_safe() -> None:
    vault = Vault()
    ph = vault.placeholder_for("person-name", "Jane")
    assert ph == "<PERSON_NAME_1>"
    assert vault.restore(f"Dear {ph}") == "Dear Jane"


def test_vaults_are_independent() -> None:
    first, second = Vault(), Vault()
    first.placeholder_for("EMAIL_ADDRESS", "a@x.io")
    assert second.restore("<EMAIL_ADDRESS_1>") == "<EMAIL_ADDRESS_1>"
    assert second.counts == {}


# --------------------------------------------------------------------------- mask_text


def test_mask_text_placeholder_roundtrip() -> None:
    vault = Vault()
    text = f"Mail {EMAIL} or {EMAIL}, card {CARD}, ssn 536-22-1234."
    masked = mask_text(text, DETECTOR, vault)
    assert masked == (
        "Mail <EMAIL_ADDRESS_1> or <EMAIL_ADDRESS_1>, card <CREDIT_CARD_1>, ssn <US_SSN_1>."
    )
    assert vault.restore(masked) == text
    assert vault.counts == {"EMAIL_ADDRESS": 2, "CREDIT_CARD": 1, "US_SSN": 1}


def test_mask_text_without_pii_is_unchanged() -> None:
    vault = Vault()
    text = "Order ORD-2024-000123 shipped 2024-05-01T12:30:45Z."
    assert mask_text(text, DETECTOR, vault) is text
    assert vault.counts == {}


def test_mask_text_redact() -> None:
    vault = Vault()
    masked = mask_text(f"to {EMAIL} now", DETECTOR, vault, "redact")
    assert masked == "to [EMAIL_ADDRESS] now"
    assert vault.counts == {"EMAIL_ADDRESS": 1}
    assert vault.restore(masked) == masked


def test_mask_text_hash_is_keyed_and_deterministic() -> None:
    digest = hmac.new(b"pepper", EMAIL.encode(), hashlib.sha256).hexdigest()[:32]
    masked = mask_text(f"to {EMAIL}", DETECTOR, Vault(), "hash", salt=b"pepper")
    assert masked == f"to <EMAIL_ADDRESS:{digest}>"
    assert mask_text(f"to {EMAIL}", DETECTOR, Vault(), "hash", salt=b"pepper") == masked
    assert mask_text(f"to {EMAIL}", DETECTOR, Vault(), "hash", salt=b"other") != masked
    long_salt = mask_text(f"to {EMAIL}", DETECTOR, Vault(), "hash", salt=b"x" * 100)
    assert long_salt.startswith("to <EMAIL_ADDRESS:")


def test_mask_text_partial() -> None:
    vault = Vault()
    masked = mask_text(f"card {CARD}, call 415-555-0132", DETECTOR, vault, "partial")
    assert masked == "card ****1111, call ****0132"
    assert vault.counts == {"CREDIT_CARD": 1, "PHONE_NUMBER": 1}
    short = PIIDetector(extra=[], entities=["SECRET"])
    assert mask_text("Bearer abcd1234", short, Vault(), "partial") == "Bearer ****1234"


def test_mask_text_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="strategy"):
        mask_text(EMAIL, DETECTOR, Vault(), "shuffle")  # type: ignore[arg-type]


def test_every_strategy_records_values_for_scrubbing() -> None:
    for strategy in ("placeholder", "redact", "hash", "partial"):
        vault = Vault()
        mask_text(f"to {EMAIL}", DETECTOR, vault, strategy, salt=b"key")
        assert vault.values == {EMAIL}


def test_hash_without_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a key"):
        mask_text(f"to {EMAIL}", DETECTOR, Vault(), "hash")


def test_non_ascii_text() -> None:
    vault = Vault()
    text = "Grüße, José! Écris à josé@exemple.fr ou appelle +33 1 23 45 67 89 — 東京 ☎️"
    masked = mask_text(text, DETECTOR, vault)
    assert masked == "Grüße, José! Écris à <EMAIL_ADDRESS_1> ou appelle <PHONE_NUMBER_1> — 東京 ☎️"
    assert vault.restore(masked) == text


# --------------------------------------------------------------------------- mask_json


def test_mask_json_nested() -> None:
    vault = Vault()
    body = {
        "user": {"email": EMAIL, "age": 41, "vip": True, "note": None},
        "messages": [f"call me at 415-555-0132 or {EMAIL}", {"text": "no pii here"}],
        "ip": ["10.0.0.1", 8080],
    }
    masked = mask_json(body, DETECTOR, vault)
    assert masked == {
        "user": {"email": "<EMAIL_ADDRESS_1>", "age": 41, "vip": True, "note": None},
        "messages": ["call me at <PHONE_NUMBER_1> or <EMAIL_ADDRESS_1>", {"text": "no pii here"}],
        "ip": ["<IP_ADDRESS_1>", 8080],
    }
    assert body["user"]["email"] == EMAIL  # type: ignore[index]
    assert vault.restore_obj(masked) == body


def test_mask_json_masks_keys_and_numbers() -> None:
    # A value used as a key, or a card sent as a JSON number, is still a value.
    masked = mask_json({EMAIL: "primary", "pan": 4111111111111111, "n": 7}, DETECTOR, Vault())
    assert masked == {"<EMAIL_ADDRESS_1>": "primary", "pan": "<CREDIT_CARD_1>", "n": 7}


@pytest.mark.parametrize(
    ("key", "entity"),
    [
        ("password", "SECRET"),
        ("Password", "SECRET"),
        ("user_password", "SECRET"),
        ("passwd", "SECRET"),
        ("client_secret", "SECRET"),
        ("access_token", "SECRET"),
        ("API-Key", "SECRET"),
        ("apikey", "SECRET"),
        ("x_api_key", "SECRET"),
        ("Authorization", "SECRET"),
        ("cvv", "SECRET"),
        ("ssn", "US_SSN"),
        ("customer_SSN", "US_SSN"),
        ("card_number", "CREDIT_CARD"),
        ("cardNumber", "CREDIT_CARD"),
        ("cc_number", "CREDIT_CARD"),
        ("iban", "IBAN_CODE"),
    ],
)
def test_mask_json_sensitive_keys_masked_whole(key: str, entity: str) -> None:
    vault = Vault()
    masked = mask_json({key: "hunter2 and more", "n": {key: 123456}}, DETECTOR, vault)
    assert masked == {key: f"<{entity}_1>", "n": {key: f"<{entity}_2>"}}
    assert vault.values == {"hunter2 and more", "123456"}
    assert vault.counts == {entity: 2}


@pytest.mark.parametrize("key", ["total_tokens", "max_tokens", "password_hint_shown", "username"])
def test_mask_json_similar_keys_not_sensitive(key: str) -> None:
    assert mask_json({key: 42}, DETECTOR, Vault()) == {key: 42}


def test_mask_json_sensitive_containers_and_odd_values() -> None:
    vault = Vault()
    body = {"token": {"access": "abc", "expires": 3600, "ok": True}, "password": ["a", None, ""]}
    masked = mask_json(body, DETECTOR, vault, "redact")
    assert masked == {
        "token": {"access": "[SECRET]", "expires": "[SECRET]", "ok": True},
        "password": ["[SECRET]", None, ""],
    }


def test_mask_json_custom_and_empty_rules() -> None:
    body = {"Mother-Maiden-Name": "Smith", "password": "x"}
    custom = mask_json(body, DETECTOR, Vault(), sensitive_keys={"mother_maiden_name": "SECRET"})
    assert custom == {"Mother-Maiden-Name": "<SECRET_1>", "password": "x"}
    assert mask_json(body, DETECTOR, Vault(), sensitive_keys={}) == body
    assert DEFAULT_SENSITIVE_KEYS["password"] == "SECRET"


def test_mask_json_scalars() -> None:
    vault = Vault()
    assert mask_json(EMAIL, DETECTOR, vault) == "<EMAIL_ADDRESS_1>"
    assert mask_json(3.5, DETECTOR, vault) == 3.5
    assert mask_json(None, DETECTOR, vault) is None


# --------------------------------------------------------------------------- forms and queries


def test_mask_form_only_changed_fields_reencoded() -> None:
    vault = Vault()
    body = "name=Jane+Doe&contact=jane%40example.co&city=S%C3%A3o+Paulo&empty=&flag"
    masked = mask_form(body, DETECTOR, vault)
    assert masked == ("name=Jane+Doe&contact=%3CEMAIL_ADDRESS_1%3E&city=S%C3%A3o+Paulo&empty=&flag")
    assert dict(parse_qsl(masked, keep_blank_values=True))["contact"] == "<EMAIL_ADDRESS_1>"
    assert vault.values == {"jane@example.co"}


def test_mask_form_address_inside_a_sentence() -> None:
    vault = Vault()
    body = "msg=Hi%2C+write+to+jane%40example.co+please&n=1"
    masked = mask_form(body, DETECTOR, vault)
    assert masked == "msg=Hi%2C+write+to+%3CEMAIL_ADDRESS_1%3E+please&n=1"
    restored = vault.restore(dict(parse_qsl(masked))["msg"])
    assert restored == "Hi, write to jane@example.co please"


def test_mask_form_unchanged_body_is_returned_as_is() -> None:
    body = "a=1&b=hello%20world&c=%E2%9C%93"
    assert mask_form(body, DETECTOR, Vault()) is body
    assert mask_form("", DETECTOR, Vault()) == ""


def test_mask_form_sensitive_keys_and_strategies() -> None:
    body = "user=jane&password=hunter2&card_number=4111111111111111"
    assert mask_form(body, DETECTOR, Vault(), "redact") == (
        "user=jane&password=%5BSECRET%5D&card_number=%5BCREDIT_CARD%5D"
    )


def test_mask_query() -> None:
    vault = Vault()
    query = "q=red+shoes&email=jane%40example.co&page=2"
    assert mask_query(query, DETECTOR, vault) == "q=red+shoes&email=%3CEMAIL_ADDRESS_1%3E&page=2"
    assert vault.counts == {"EMAIL_ADDRESS": 1}


# --------------------------------------------------------------------------- scrub


def test_scrub() -> None:
    text = "user jane@x.io paid with 4111111111111111 (jane@x.io)"
    assert scrub(text, ["jane@x.io", "4111111111111111", ""]) == (
        "user [REDACTED] paid with [REDACTED] ([REDACTED])"
    )
    assert scrub(text, []) is text
    assert scrub("abcdef", ["abc", "abcdef"]) == "[REDACTED]"
    assert scrub("a.c abc", ["a.c"]) == "[REDACTED] abc"


def test_vault_scrub_uses_every_value() -> None:
    vault = Vault()
    mask_text(f"{EMAIL} {CARD}", DETECTOR, vault)
    mask_json({"password": "hunter2"}, DETECTOR, vault, "redact")
    line = f"login {EMAIL} pw=hunter2 card={CARD}"
    assert vault.scrub(line) == "login [REDACTED] pw=[REDACTED] card=[REDACTED]"
    assert scrub(line, vault.values) == vault.scrub(line)
    assert Vault().scrub(line) == line


# --------------------------------------------------------------------------- round trip property

SAFE_WORDS = ("hello", "order", "the", "café", "naïve", "東京", "price:", "ok,", "(see", "note)")
DECOYS = (
    "ORD-2024-000123",
    "v1.2.3",
    "94107",
    "94107-1234",
    "$1,299.00",
    "2024-05-01T12:30:45Z",
    "12:30",
    "123e4567-e89b-12d3-a456-426614174000",
    "482913374",
)


def _luhn_complete(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


emails = st.builds(
    lambda user, n, domain: f"{user}{n}@{domain}",
    st.sampled_from(["jane", "j.doe", "li_wei", "amy+news"]),
    st.integers(0, 999),
    st.sampled_from(["example.com", "mail.example.org", "exemple.fr"]),
)
us_phones = st.builds(
    lambda area, exchange, line, fmt: fmt.format(area, exchange, line),
    st.integers(200, 999).filter(lambda a: a % 100 != 11),
    st.integers(200, 999).filter(lambda e: e % 100 != 11),
    st.integers(0, 9999).map(lambda n: f"{n:04d}"),
    st.sampled_from(["({}) {}-{}", "{}-{}-{}", "{}.{}.{}", "+1 {} {} {}"]),
)


def _card(prefix: str, rest: str, sep: str) -> str:
    number = _luhn_complete(prefix + rest[: 15 - len(prefix)])
    return sep.join(number[i : i + 4] for i in range(0, 16, 4))


cards = st.builds(
    _card,
    st.sampled_from(["4", "51", "55", "6011", "3530"]),
    st.text("0123456789", min_size=14, max_size=14),
    st.sampled_from([" ", "-", ""]),
)
ibans = st.builds(
    lambda bban: (lambda check: f"DE{check:02d}{bban}")(
        98 - int(bban + "131400") % 97  # "DE00" as digits: D=13, E=14
    ),
    st.text("0123456789", min_size=18, max_size=18),
)
ssns = st.builds(
    lambda area, group, serial: f"{area:03d}-{group:02d}-{serial:04d}",
    st.integers(1, 899).filter(lambda a: a != 666),
    st.integers(1, 99),
    st.integers(1, 9999),
).filter(lambda s: s not in {"123-45-6789", "078-05-1120"} and len(set(s) - {"-"}) > 1)
ips = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.integers(1, 2**128 - 1).map(lambda n: ipaddress.IPv6Address(n).compressed),
).filter(lambda ip: any(c.isdigit() for c in ip))
pii_values = st.one_of(emails, us_phones, cards, ibans, ssns, ips)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(SAFE_WORDS + DECOYS), pii_values), max_size=12))
def test_mask_restore_roundtrip(parts: list[str]) -> None:
    text = " ".join(parts)
    vault = Vault()
    masked = mask_text(text, DETECTOR, vault)
    assert vault.restore(masked) == text
    for value in parts:
        if value not in SAFE_WORDS and value not in DECOYS:
            assert value not in masked


# --------------------------------------------------------------------------- in-place JSON


def test_mask_json_text_changes_only_the_masked_values() -> None:
    # Numbers keep their spelling, duplicate keys and order stay, whitespace and escapes too.
    doc = (
        '{ "n": 12345678901234567890.123,"big":1E400 ,"a":1,"a":2,\n'
        '  "esc": "caf\\u00e9 \\/", "msg": "mail ' + EMAIL + '", "z": [9007199254740993.0] }'
    )
    masked = mask_json_text(doc, DETECTOR, Vault())
    assert masked == doc.replace(EMAIL, "<EMAIL_ADDRESS_1>")


def test_mask_json_text_masks_keys_numbers_and_named_fields() -> None:
    doc = json.dumps({EMAIL: "primary", "pan": 4111111111111111, "ssn": 536221234,
                      "user": {"password": ["x", 3]}, "n": 7})  # fmt: skip
    masked = json.loads(mask_json_text(doc, DETECTOR, Vault()))
    assert masked == {"<EMAIL_ADDRESS_1>": "primary", "pan": "<CREDIT_CARD_1>",
                      "ssn": "<US_SSN_1>", "user": {"password": ["<SECRET_1>", "<SECRET_2>"]},
                      "n": 7}  # fmt: skip


def test_mask_json_text_escaped_values_are_no_bypass() -> None:
    # "\u0040" is "@": the decoded value is what is checked, and a lone surrogate is data.
    doc = '{"m": "jane.doe\\u0040example.com \\ud800", "k": "\\udfff"}'
    masked = mask_json_text(doc, DETECTOR, Vault())
    assert json.loads(masked) == {"m": "<EMAIL_ADDRESS_1> \ud800", "k": "\udfff"}
    assert masked.endswith('"k": "\\udfff"}')  # untouched token: same characters
    masked.encode("utf-8")  # the escape stays an escape: still encodable


def test_mask_json_text_keep_and_exempt_fields_are_left_alone() -> None:
    doc = json.dumps({"email": EMAIL, "csrf_token": "tok-" + EMAIL, "page_token": "abc",
                      "authenticity_token": "s3cret", "note": EMAIL})  # fmt: skip
    masked = json.loads(mask_json_text(doc, DETECTOR, Vault(), keep_keys=frozenset({"email"})))
    assert masked == {"email": EMAIL, "csrf_token": "tok-" + EMAIL, "page_token": "abc",
                      "authenticity_token": "s3cret", "note": "<EMAIL_ADDRESS_1>"}  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=10,
))  # fmt: skip
def test_mask_json_text_without_findings_is_identity(document: object) -> None:
    for text in (json.dumps(document), json.dumps(document, indent=1, ensure_ascii=False)):
        vault = Vault()
        masked = mask_json_text(text, DETECTOR, vault)
        assert (masked == text) == (vault.counts == {})
        json.loads(masked)


def test_field_name_rules_never_match_anti_forgery_or_pagination_names() -> None:
    exempt = ["csrfmiddlewaretoken", "csrf_token", "_csrf", "authenticity_token", "X-CSRFToken",
              "X-CSRF-Token", "X-XSRF-TOKEN", "page_token", "nextPageToken"]  # fmt: skip
    for name in exempt:
        assert is_exempt_key(name), name
    for name in ("password", "api_key", "Authorization", "access_token", "x-amz-security-token"):
        assert not is_exempt_key(name), name


def test_mask_form_names_values_and_undecodable_bytes() -> None:
    body = "csrfmiddlewaretoken=abc&x=%ff%fe&" + quote_plus(EMAIL) + "=1&password=hunter2"
    masked = mask_form(body, DETECTOR, Vault())
    assert (
        masked == "csrfmiddlewaretoken=abc&x=%ff%fe&%3CEMAIL_ADDRESS_1%3E=1&password=%3CSECRET_1%3E"
    )
    undecodable = "m=" + quote_plus(EMAIL) + "%ff"
    assert mask_form(undecodable, DETECTOR, Vault()) == "m=%3CEMAIL_ADDRESS_1%3E%FF"


def test_hash_is_hmac_sha256_with_128_bits() -> None:
    masked = mask_text(EMAIL, DETECTOR, Vault(), "hash", salt=b"k")
    digest = hmac.new(b"k", EMAIL.encode(), hashlib.sha256).hexdigest()
    assert masked == f"<EMAIL_ADDRESS:{digest[:32]}>"


def test_known_values_are_masked_where_no_detector_finds_them() -> None:
    vault = Vault()
    mask_text("ssn 536-22-1234", DETECTOR, vault)
    restored = vault.restore("ID<US_SSN_1> and 536-22-1234")
    assert restored == "ID536-22-1234 and 536-22-1234"
    assert mask_text(restored, DETECTOR, vault) != "ID<US_SSN_1> and <US_SSN_1>"
    assert mask_text(restored, DETECTOR, vault, known=True) == "ID<US_SSN_1> and <US_SSN_1>"


def test_mask_json_text_is_linear() -> None:
    # A shape with a finding per token at two sizes, 32x apart: the time per byte must not
    # grow with the size (2.5x allows a busy machine's noise; quadratic would be 32x).
    def per_byte(n: int) -> float:
        text = "[" + ",".join(['"a@b.co"', "12345678901234567890.1", '{"k":[1]}'] * n) + "]"
        best = float("inf")
        for _ in range(3):
            start = time.thread_time()
            mask_json_text(text, DETECTOR, Vault())
            best = min(best, time.thread_time() - start)
        return best / len(text)

    small, large = per_byte(200), per_byte(6400)
    assert large < 2.5 * small, (small, large)
