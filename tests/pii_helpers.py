"""What the detector tests compare: (entity, text) pairs from one shared default detector."""

from __future__ import annotations

from llm_middleware.pii import PIIDetector

DETECTOR = PIIDetector()


def found(text: str, detector: PIIDetector = DETECTOR) -> list[tuple[str, str]]:
    return [(f.entity_type, f.text) for f in detector.detect(text)]


def only(entity: str, text: str) -> list[str]:
    return [value for kind, value in found(text) if kind == entity]
