"""PII detection and masking: pure, framework-free, stdlib only."""

from __future__ import annotations

from .detectors import (
    BUILTIN_ENTITIES,
    Detector,
    Finding,
    NerCallable,
    PIIDetector,
    make_detector,
    register_detector,
    unregister_detector,
)
from .masking import (
    DEFAULT_SENSITIVE_KEYS,
    MaskStrategy,
    Vault,
    mask_form,
    mask_json,
    mask_query,
    mask_text,
    scrub,
)

__all__ = [
    "BUILTIN_ENTITIES",
    "DEFAULT_SENSITIVE_KEYS",
    "Detector",
    "Finding",
    "MaskStrategy",
    "NerCallable",
    "PIIDetector",
    "Vault",
    "make_detector",
    "mask_form",
    "mask_json",
    "mask_query",
    "mask_text",
    "register_detector",
    "scrub",
    "unregister_detector",
]
