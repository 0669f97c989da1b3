"""Grounded intents: a field the input does not support is dropped (and the reason recorded),
never handed to the view; Literal/Enum fields, synonyms, few-shot prompts."""

from __future__ import annotations

import enum
import json
from typing import Any, Literal

import httpx
import pytest
from pydantic import BaseModel, Field

from fault_server import FaultServer, reply
from llm_middleware import load_config
from llm_middleware.grounding import Grounder, UngroundedError, normalise, numbers_in
from llm_middleware.llm.prompts import default_prompt, render
from servers import serve_asgi_thread

Category = Literal["shoes", "hats", "jackets"]


class Colour(enum.Enum):
    RED = "red"
    BLACK = "black"


class Intent(BaseModel):
    category: Category | None = None
    color: Colour | None = None
    brand: str | None = None
    max_price: float | None = None


class Required(BaseModel):
    brand: str
    size: int | None = None


SYNONYMS = {
    "category": {"shoes": ["trainers", "sneaker", "zapato"], "hats": ["beanie"]},
    "color": {"red": ["rouge", "rojo"]},
}


def grounder(fields: list[str] | None = None) -> Grounder:
    return Grounder(Intent, fields, SYNONYMS)


def test_numbers_are_read_as_written() -> None:
    assert numbers_in("under $1,299.99, or 49,90 or 1 000 and 7") == [1299.99, 49.9, 1000.0, 7.0]
    assert normalise("Don't  Bérets!") == "dont berets"


@pytest.mark.parametrize(
    ("text", "answer", "kept", "dropped"),
    [
        # a price the text never states (the "black trainers" -> 10.99)
        ("black trainers", {"category": "shoes", "max_price": 10.99}, {"category": "shoes"},
         {"max_price": "number_not_in_input"}),
        # a category the text does not mention at all ("cheapest jacket" -> shoes)
        ("cheapest jacket", {"category": "shoes", "color": "red"}, {},
         {"category": "not_in_input", "color": "not_in_input"}),
        # a synonym in another language supports the enum value
        ("zapatos rojos bajo 80", {"category": "shoes", "color": "red", "max_price": 80},
         {"category": "shoes", "color": Colour.RED, "max_price": 80}, {}),
        # a negated mention supports nothing
        ("anything but red, no beanie", {"category": "hats", "color": "red"}, {},
         {"category": "negated", "color": "negated"}),
        # a free string must appear as words (case, accents and plural ignored)
        ("Some ADIDAS sneakers", {"brand": "adidas"}, {"brand": "adidas"}, {}),
        ("some sneakers", {"brand": "Bienvenu"}, {}, {"brand": "not_in_input"}),
    ],
)  # fmt: skip
def test_unsupported_fields_are_dropped(
    text: str, answer: dict[str, Any], kept: dict[str, Any], dropped: dict[str, str]
) -> None:
    result = grounder().ground(Intent.model_validate(answer), text)
    assert result.obj.model_dump(exclude_none=True) == kept
    assert result.dropped == dropped
    if dropped:
        assert result.reason is not None and result.reason.startswith("ungrounded:")
        assert "Bienvenu" not in result.reason  # reasons name fields, never values


def test_a_choice_without_synonyms_passes_and_listed_fields_only_are_checked() -> None:
    plain = Grounder(Intent, None, {})
    assert plain.ground(Intent(category="hats"), "something warm").obj.category == "hats"
    only_price = Grounder(Intent, ["max_price"], SYNONYMS)
    result = only_price.ground(Intent(brand="acme", max_price=20), "acme things")
    assert result.obj.brand == "acme" and result.obj.max_price is None


def test_a_synonym_answer_is_replaced_by_its_canonical_value() -> None:
    class Free(BaseModel):
        category: str | None = None

    g = Grounder(Free, None, {"category": {"shoes": ["trainers"]}})
    assert g.ground(Free(category="Trainers"), "black trainers").obj.category == "shoes"


def test_dropping_a_required_field_rejects_the_answer() -> None:
    with pytest.raises(UngroundedError):
        Grounder(Required).ground(Required(brand="acme", size=42), "size 42 please")


def test_config_names_unknown_grounded_fields() -> None:
    from llm_middleware import ConfigError

    with pytest.raises(ConfigError, match="no field 'colour'"):
        load_config(
            providers=[{"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}],
            rules=[{"path": "/s", "interceptors": [
                {"type": "intent", "schema": Intent, "grounded": ["colour"]}]}],
        )  # fmt: skip


def test_default_prompt_lists_choices_and_primes_no_values() -> None:
    class Primed(BaseModel):
        category: Category | None = Field(default=None, description="the kind of product")
        max_price: float | None = None

    system = default_prompt(Primed, "intent").system
    assert "one of: shoes, hats, jackets" in system
    assert "e.g." not in system and "null" in system


def test_few_shot_examples_become_earlier_turns() -> None:
    config = load_config(
        providers=[{"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}],
        rules=[{"path": "/s", "interceptors": [{
            "type": "intent", "schema": Intent,
            "prompt": {"name": "p", "system": "S", "examples": [
                {"input": "red hat", "output": {"category": "hats", "color": "red"}}]},
        }]}],
    )  # fmt: skip
    icpt = config.rules[0].interceptors[0]
    messages = render(icpt.prompt, Intent, "a query")  # type: ignore[union-attr,arg-type]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "red hat" in messages[1]["content"]
    assert json.loads(messages[2]["content"]) == {
        "category": "hats", "color": "red", "brand": None, "max_price": None}  # fmt: skip
    assert "a query" in messages[3]["content"]


def _app(provider: str, **intent: Any) -> Any:
    from apps import build_starlette

    return build_starlette({
        "providers": [{"kind": "openai", "base_url": provider, "model": "m", "max_retries": 0}],
        "rules": [{"path": "/search", "budget_ms": 5000, "interceptors": [
            {"type": "intent", "schema": "test_grounding.Intent", "source": "query:q",
             "synonyms": SYNONYMS, **intent}]}],
    })  # fmt: skip


def test_the_view_gets_only_grounded_fields(fault_server: FaultServer) -> None:
    fault_server.default = reply({"category": "shoes", "color": "red", "max_price": 10.99})
    with serve_asgi_thread(_app(fault_server.url, grounded=True)) as base:
        data = httpx.get(base + "/search", params={"q": "black trainers"}, timeout=10).json()
    assert data["outcomes"] == {"intent": "ok"}
    assert data["intent"] == {"category": "shoes", "color": None, "brand": None,
                              "max_price": None}  # fmt: skip
    assert data["reasons"]["intent"] == (
        "ungrounded:color=not_in_input,max_price=number_not_in_input"
    )


def test_without_grounding_the_answer_is_passed_as_is(fault_server: FaultServer) -> None:
    fault_server.default = reply({"category": "hats", "brand": "acme", "max_price": 10.99})
    with serve_asgi_thread(_app(fault_server.url)) as base:
        data = httpx.get(base + "/search", params={"q": "black trainers"}, timeout=10).json()
    assert data["intent"] == {"category": "hats", "color": None, "brand": "acme",
                              "max_price": 10.99}  # fmt: skip
    assert "intent" not in data["reasons"]


@pytest.mark.parametrize(
    ("text", "price", "kept"),
    [
        ("size 42 shoes", 42, False),
        ("2 red shirts", 2, False),
        ("shoes for my 5 year old, under 30", 5, False),
        ("shoes for my 5 year old, under 30", 30, True),
        ("jackets at most $199.99", 199.99, True),
        ("a bag for 60 dollars", 60, True),
        ("zapatillas menos de 70", 70, True),
        ("hat 25€", 25, True),
    ],
)
def test_price_cues_tell_a_price_from_other_numbers(text: str, price: float, kept: bool) -> None:
    cues = {"max_price": ["under", "at most", "dollars", "menos de", "$", "€"]}
    result = Grounder(Intent, None, SYNONYMS, cues).ground(Intent(max_price=price), text)
    assert (result.obj.max_price == price) is kept
    if not kept:
        assert result.dropped == {"max_price": "number_without_cue"}


def test_answer_schema_widens_only_choice_fields_with_synonyms() -> None:
    from llm_middleware.grounding import answer_schema

    wide = answer_schema(Intent, SYNONYMS)
    props = wide.model_json_schema()["properties"]
    [category] = [s for s in props["category"]["anyOf"] if "enum" in s]
    assert category["enum"][:3] == ["shoes", "hats", "jackets"]  # canonical values first
    assert {"trainers", "sneaker", "zapato", "beanie"} <= set(category["enum"])
    [color] = [s for s in props["color"]["anyOf"] if "enum" in s]
    assert set(color["enum"]) == {"red", "black", "rouge", "rojo"}
    # Still a closed list; other fields as they were.
    with pytest.raises(ValueError):
        wide.model_validate({"category": "boots"})
    assert wide.model_fields["brand"].annotation == Intent.model_fields["brand"].annotation
    assert wide.__name__ == "Intent"
    # Nothing to widen: the schema itself.
    assert answer_schema(Intent, {}) is Intent
    assert answer_schema(Intent, {"brand": {"acme": ["acme inc"]}}) is Intent


def test_answer_synonyms_needs_grounding_on_those_fields() -> None:
    from llm_middleware import ConfigError

    def rule(**intent: Any) -> Any:
        return load_config(
            providers=[{"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}],
            rules=[{"path": "/s", "interceptors": [
                {"type": "intent", "schema": Intent, "answer_synonyms": True, **intent}]}],
        )  # fmt: skip

    for bad in [{"synonyms": SYNONYMS}, {"synonyms": SYNONYMS, "grounded": ["category"]},
                {"grounded": True}]:  # fmt: skip
        with pytest.raises(ConfigError, match="answer_synonyms"):
            rule(**bad)
    rule(synonyms=SYNONYMS, grounded=["category", "color"])


@pytest.mark.parametrize(
    ("answer", "text", "intent", "reason"),
    [
        # The model copied the shopper's words; the view gets the canonical values.
        ({"category": "trainers"}, "trainers en rojo", {"category": "shoes", "color": None},
         None),
        # A canonical answer still needs support in the input.
        ({"category": "shoes", "color": "red"}, "beanie", {"category": None, "color": None},
         "ungrounded:category=not_in_input,color=not_in_input"),
        # A synonym the input does not contain is dropped, like any other value.
        ({"category": "beanie"}, "black trainers", {"category": None, "color": None},
         "ungrounded:category=not_in_input"),
        ({"category": "sneaker"}, "anything but sneakers", {"category": None, "color": None},
         "ungrounded:category=negated"),
    ],
)  # fmt: skip
def test_synonym_answers_reach_the_view_as_canonical_values(
    fault_server: FaultServer,
    answer: dict[str, Any],
    text: str,
    intent: dict[str, Any],
    reason: str | None,
) -> None:
    fault_server.default = reply(answer)
    app = _app(fault_server.url, grounded=True, answer_synonyms=True)
    with serve_asgi_thread(app) as base:
        data = httpx.get(base + "/search", params={"q": text}, timeout=10).json()
    assert data["outcomes"] == {"intent": "ok"}
    assert data["intent"] == {**intent, "brand": None, "max_price": None}
    assert data["reasons"].get("intent") == reason
    # The provider was offered the synonyms as the closed list to answer from.
    sent = fault_server.requests[-1].json["response_format"]["json_schema"]["schema"]
    [enum_] = [s["enum"] for s in sent["properties"]["category"]["anyOf"] if "enum" in s]
    assert "trainers" in enum_ and "shoes" in enum_


def test_without_answer_synonyms_a_synonym_answer_is_invalid(fault_server: FaultServer) -> None:
    fault_server.default = reply({"category": "trainers"})
    with serve_asgi_thread(_app(fault_server.url, grounded=True)) as base:
        data = httpx.get(base + "/search", params={"q": "black trainers"}, timeout=10).json()
    assert data["outcomes"] == {"intent": "invalid"}
    assert data["intent"] is None


def test_synonym_answers_for_an_enum_field_through_the_engine(fault_server: FaultServer) -> None:
    from llm_middleware.evaluation import Case, evaluate

    fault_server.default = reply({"category": "zapato", "color": "rojo"})
    config = {
        "providers": [{"kind": "openai", "base_url": fault_server.url, "model": "m"}],
        "rules": [{"path": "/search", "interceptors": [
            {"type": "intent", "schema": Intent, "synonyms": SYNONYMS, "grounded": True,
             "answer_synonyms": True}]}],
    }  # fmt: skip
    cases = [Case("es", "zapatos rojos", {"category": "shoes", "color": "red"}),
             Case("fr", "chapeau rouge", {"color": "red"})]  # fmt: skip
    [report] = evaluate(cases, config, "/search")
    es, fr = report.results
    assert es.outcome == "ok" and es.predicted["category"] == "shoes"
    assert es.predicted["color"] == "red" and not es.wrong
    # No shoe in the French text: dropped. "rojo" means red and "rouge" says it: kept.
    assert fr.predicted == {"category": None, "color": "red", "brand": None, "max_price": None}
    assert fr.reason == "ungrounded:category=not_in_input" and fr.wrong == []
