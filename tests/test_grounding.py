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
