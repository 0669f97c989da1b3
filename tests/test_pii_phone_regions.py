"""Phone candidates checked against libphonenumber's plans: ``PIIDetector(phone_regions=...)``.

The ``[phones]`` extra is opt-in; without regions the detector never imports ``phonenumbers``.
Every number here is written for this test (fictional or documentation ranges).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llm_middleware.pii import PIIDetector, phone_regions

needs_extra = pytest.mark.skipif(
    not phone_regions.available(), reason="the [phones] extra (phonenumbers) is not installed"
)


def phones(detector: PIIDetector, text: str) -> list[str]:
    return [f.text for f in detector.detect(text) if f.entity_type == "PHONE_NUMBER"]


def test_default_detector_never_imports_phonenumbers() -> None:
    code = (
        "import sys\n"
        "from llm_middleware.pii import PIIDetector\n"
        "found = PIIDetector().detect('call (415) 555-0132 or +44 20 7946 0958')\n"
        "assert [f.entity_type for f in found] == ['PHONE_NUMBER'] * 2, found\n"
        "print('phonenumbers' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_without_regions_shape_rules_alone_decide() -> None:
    # An unassigned NANP area code passes the shape rules: what the extra would change.
    assert phones(PIIDetector(), "Telephone (333) 123 4567") == ["(333) 123 4567"]


def test_regions_without_the_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phone_regions, "available", lambda: False)
    with pytest.raises(ValueError, match=r"\[phones\]"):
        PIIDetector(phone_regions=["US"])


@needs_extra
@pytest.mark.parametrize("regions", [[], ["ZZ"], ["US", "Atlantis"]])
def test_unknown_or_no_regions_are_rejected(regions: list[str]) -> None:
    with pytest.raises(ValueError, match="phone_regions"):
        PIIDetector(phone_regions=regions)


@needs_extra
@pytest.mark.parametrize(
    "text",
    [
        "Telephone (333) 123 4567",  # 333 is no NANP area code
        "Phone 0461 341 2215",  # no UK number starts 04, and no US one with 0
        "Tel 311 211 4567",  # N11 codes are service codes, not area codes
        "call +44 12 345",  # too short for the UK
    ],
)
def test_numbers_the_plans_reject(text: str) -> None:
    detector = PIIDetector(phone_regions=["US", "GB"])
    assert phones(detector, text) == []


@needs_extra
@pytest.mark.parametrize(
    "text,value",
    [
        ("call (415) 555-0132 today", "(415) 555-0132"),
        ("Tel. 020 7946 0958", "020 7946 0958"),  # national, with the UK's trunk 0
        ("+33 1 42 68 53 00 (Paris)", "+33 1 42 68 53 00"),  # any country when international
        ("dial 0033 1 42 68 53 00", "0033 1 42 68 53 00"),
        ("from the US: 011 33 1 42 68 53 00", "011 33 1 42 68 53 00"),
        ("Phone number is 555-123-4567.", "555-123-4567"),  # the fictional NANP forms stay
        ("write (123) 456-7890 down", "(123) 456-7890"),
        ("office 212-555-0172 x45", "212-555-0172 x45"),
    ],
)
def test_numbers_the_plans_accept(text: str, value: str) -> None:
    detector = PIIDetector(phone_regions=["us", "GB"])  # region codes in any case
    assert phones(detector, text) == [value]


@needs_extra
def test_a_region_decides_national_numbers() -> None:
    # A French national number is valid with FR configured and not without it.
    text = "Tél. 01 42 68 53 00"
    assert phones(PIIDetector(phone_regions=["FR"]), text) == ["01 42 68 53 00"]
    assert phones(PIIDetector(phone_regions=["US"]), text) == []
    assert phones(PIIDetector(), text) == ["01 42 68 53 00"]


@needs_extra
def test_national_numbers_need_the_trunk_prefix_their_region_requires() -> None:
    uk = PIIDetector(phone_regions=["GB"])
    assert phones(uk, "call 020 7946 0958") == ["020 7946 0958"]
    assert phones(uk, "call 20 7946 0958") == []  # London without the 0 the UK dials
    # The same digits are a valid NANP number (area code 207) for a US app.
    assert phones(PIIDetector(phone_regions=["US"]), "call 20 7946 0958") == ["20 7946 0958"]


@needs_extra
def test_other_entities_are_untouched() -> None:
    text = "jane@example.com, 4111 1111 1111 1111, 10.1.2.3, Telephone (333) 123 4567"
    types = [f.entity_type for f in PIIDetector(phone_regions=["US"]).detect(text)]
    assert types == ["EMAIL_ADDRESS", "CREDIT_CARD", "IP_ADDRESS"]
