"""Grounded intents: keep only the fields the input supports.

A small model fills fields from its priors ("cheapest jacket" -> ``color: "red"``). Grounding
checks each returned value against the text the model was given:

- numbers must appear in the input (``"under $99.50"`` supports ``99.5``);
- strings must appear in it as words (case, accents, punctuation and a plural ``s`` ignored), or
  one of the value's declared synonyms must (``{"shoes": ["trainers", "sneakers"]}``); a string
  the model returned as a synonym is replaced by its canonical value;
- ``Literal``/``Enum`` values pass, unless synonyms are declared for the field: then they need
  the same support as a string;
- with ``cues`` declared for a number field, the number must also stand next to one of them
  (``{"max_price": ["under", "max", "$"]}``: "size 42 shoes" supports no price);
- a mention right after a negation (``"not red"``, ``"no heels"``, ``"sin tacón"``) supports
  nothing.

Unsupported fields are dropped (set to their default), so the view gets fewer fields rather
than wrong ones. Pure functions, no I/O: cheap enough to run inside the budget.
"""

from __future__ import annotations

import enum
import re
import typing
import unicodedata
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError, create_model

__all__ = ["Grounder", "GroundingResult", "answer_schema", "normalise", "numbers_in"]

_NUMBER_RE = re.compile(r"(?<![\w.])\d{1,3}(?:[ ,]\d{3})+(?:\.\d+)?(?!\d)|\d+(?:[.,]\d+)?")
_WORD_RE = re.compile(r"[^\w]+", re.UNICODE)
NEGATIONS = frozenset(
    {
        "not", "no", "without", "except", "excluding", "never", "nor", "non", "dont", "isnt",
        "pas", "sans", "sin", "nicht", "kein", "keine", "keinen", "ohne", "niente", "senza",
        "nao", "sem",
    }
)  # fmt: skip
_NEGATION_WINDOW = 2  # words before a mention that can negate it


def normalise(text: str) -> str:
    """Lower-case words separated by single spaces: accents, punctuation and apostrophes gone
    (``"Don't  Bérets!"`` -> ``"dont berets"``)."""
    decomposed = unicodedata.normalize("NFKD", text.replace("'", "").replace("\u2019", ""))
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(_WORD_RE.sub(" ", stripped.casefold()).replace("_", " ").split())


def numbers_in(text: str) -> list[float]:
    """Every number written in digits: ``"1,299.99"``, ``"1 000"``, ``"49,90"`` (decimal comma)."""
    return [value for value, _, _ in number_spans(text)]


def number_spans(text: str) -> list[tuple[float, int, int]]:
    """``(value, start, end)`` of every number written in digits."""
    out: list[tuple[float, int, int]] = []
    for match in _NUMBER_RE.finditer(text):
        raw = match.group(0)
        if re.fullmatch(r"\d{1,3}(?:[ ,]\d{3})+(?:\.\d+)?", raw):
            raw = raw.replace(",", "").replace(" ", "")  # thousands separators
        else:
            raw = raw.replace(",", ".")  # a decimal comma: 49,90
        try:
            out.append((float(raw), match.start(), match.end()))
        except ValueError:  # pragma: no cover - the regex only matches digits
            continue
    return out


_CUE_BEFORE_WORDS = 4
_CUE_AFTER_WORDS = 2


def _cued(text: str, start: int, end: int, words: list[str], symbols: list[str]) -> bool:
    """Whether a cue stands just before or after ``text[start:end]``."""
    near = text[max(0, start - 3) : start] + text[end : end + 3]
    if any(symbol in near for symbol in symbols):
        return True
    before = " " + " ".join(
        normalise(text[max(0, start - 40) : start]).split()[-_CUE_BEFORE_WORDS:]
    )
    after = " ".join(normalise(text[end : end + 30]).split()[:_CUE_AFTER_WORDS]) + " "
    return any(f" {cue} " in before + " " or f" {cue} " in " " + after for cue in words)


def plural_variants(phrase: str) -> set[str]:
    """The phrase with and without a plural ending on its last word."""
    words = phrase.split()
    if not words:
        return set()
    last = words[-1]
    forms = {last, last + "s", last + "es"}
    if last.endswith("es") and len(last) > 3:
        forms.add(last[:-2])
    if last.endswith("s") and len(last) > 2:
        forms.add(last[:-1])
    return {" ".join([*words[:-1], form]) for form in forms}


def _mentioned(phrase: str, words: list[str]) -> bool | None:
    """``True`` if the normalised phrase occurs in ``words`` with no negation just before it,
    ``False`` if it occurs only negated, ``None`` if it does not occur."""
    seen_negated = False
    for variant in plural_variants(phrase):
        target = variant.split()
        n = len(target)
        for start in range(len(words) - n + 1):
            if words[start : start + n] != target:
                continue
            before = words[max(0, start - _NEGATION_WINDOW) : start]
            if any(w in NEGATIONS for w in before) or _anything_but(before):
                seen_negated = True
                continue
            return True
    return False if seen_negated else None


def _anything_but(before: list[str]) -> bool:
    return len(before) >= 2 and before[-1] == "but" and before[-2] in ("anything", "everything")


def _is_choice(annotation: Any) -> bool:
    """``Literal[...]`` or an ``Enum``, possibly inside ``Optional``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return True
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return True
    return any(_is_choice(arg) for arg in typing.get_args(annotation) if arg is not type(None))


@dataclass(slots=True)
class GroundingResult:
    obj: BaseModel
    dropped: dict[str, str] = field(default_factory=dict)  # field -> why (never the value)

    @property
    def reason(self) -> str | None:
        if not self.dropped:
            return None
        return "ungrounded:" + ",".join(f"{k}={v}" for k, v in sorted(self.dropped.items()))


class Grounder:
    """Built once per interceptor: ``fields`` to check (all when ``None``) and per-field
    synonyms ``{field: {canonical value: [words that mean it]}}``."""

    def __init__(
        self,
        schema: type[BaseModel],
        fields: Collection[str] | None = None,
        synonyms: Mapping[str, Mapping[str, Iterable[str]]] | None = None,
        cues: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.schema = schema
        names = list(schema.model_fields) if fields is None else list(fields)
        unknown = [n for n in names if n not in schema.model_fields]
        if unknown:
            raise ValueError(f"grounding: {schema.__name__} has no field(s) {', '.join(unknown)}")
        self.fields = names
        self.choice = {n: _is_choice(schema.model_fields[n].annotation) for n in names}
        # field -> normalised phrase -> canonical value
        self.synonyms: dict[str, dict[str, str]] = {}
        for name, table in (synonyms or {}).items():
            if name not in schema.model_fields:
                raise ValueError(f"synonyms: {schema.__name__} has no field {name!r}")
            phrases: dict[str, str] = {}
            for canonical, words in table.items():
                for word in [canonical, *words]:
                    key = normalise(word)
                    if key:
                        phrases.setdefault(key, canonical)
            self.synonyms[name] = phrases
        # field -> (normalised cue words, cue symbols such as "$")
        self.cues: dict[str, tuple[list[str], list[str]]] = {}
        for name, items in (cues or {}).items():
            if name not in schema.model_fields:
                raise ValueError(f"cues: {schema.__name__} has no field {name!r}")
            items = list(items)
            self.cues[name] = (
                [normalise(c) for c in items if normalise(c)],
                [c.strip() for c in items if c.strip() and not normalise(c)],
            )

    def canonical(self, field_name: str, value: str) -> str | None:
        """The canonical value a declared synonym stands for, or ``None``."""
        table = self.synonyms.get(field_name)
        if not table:
            return None
        norm = normalise(value)
        for variant in plural_variants(norm):
            if variant in table:
                return table[variant]
        return None

    def ground(self, obj: BaseModel, text: str) -> GroundingResult:
        words = normalise(text).split()
        numbers = number_spans(text)
        data = obj.model_dump(mode="python")
        dropped: dict[str, str] = {}
        for name in self.fields:
            value = data.get(name)
            if value is None:
                continue
            kept, why = self._check(name, value, words, numbers, text)
            if why is None:
                data[name] = kept
            else:
                dropped[name] = why
                data.pop(name)
        if not dropped and data == obj.model_dump(mode="python"):
            return GroundingResult(obj)
        try:
            return GroundingResult(type(obj).model_validate(data), dropped)
        except ValidationError:
            # A required field was dropped, or a canonical value the schema refuses: the
            # model's answer cannot be trusted as a whole.
            raise UngroundedError(dropped) from None

    def _check(
        self,
        name: str,
        value: Any,
        words: list[str],
        numbers: list[tuple[float, int, int]],
        text: str,
    ) -> tuple[Any, str | None]:
        if isinstance(value, bool):
            return value, None  # a yes/no flag cannot be looked up in the text
        if isinstance(value, int | float):
            spans = [(a, b) for n, a, b in numbers if abs(value - n) <= 0.005 * max(1.0, abs(n))]
            if not spans:
                return value, "number_not_in_input"
            cues = self.cues.get(name)
            if cues and not any(_cued(text, a, b, *cues) for a, b in spans):
                return value, "number_without_cue"
            return value, None
        if isinstance(value, enum.Enum):
            value = value.value
            if not isinstance(value, str):
                return value, None
        if isinstance(value, str):
            return self._check_string(name, value, words)
        if isinstance(value, list):
            kept_items = []
            for item in value:
                kept, why = self._check(name, item, words, numbers, text)
                if why is None:
                    kept_items.append(kept)
            if value and not kept_items:
                return value, "no_item_in_input"
            return kept_items, None
        return value, None  # nested objects and others: not checked

    def _check_string(self, name: str, value: str, words: list[str]) -> tuple[Any, str | None]:
        table = self.synonyms.get(name)
        canonical = self.canonical(name, value)
        if table is None:
            if self.choice[name]:
                return value, None  # a declared choice with no synonyms: it passes
            found = _mentioned(normalise(value), words)
            if found:
                return value, None
            return value, "negated" if found is False else "not_in_input"
        # Synonyms declared: the value (or what it stands for) must be mentioned, by any of
        # the phrases that mean it.
        target = canonical if canonical is not None else value
        phrases = [p for p, c in table.items() if c == target] or [normalise(value)]
        if canonical is None:
            phrases.append(normalise(value))
        negated = False
        for phrase in phrases:
            found = _mentioned(phrase, words)
            if found:
                return target, None
            negated |= found is False
        return value, "negated" if negated else "not_in_input"


def _choice_values(annotation: Any) -> list[Any] | None:
    """The values of a ``Literal``/``Enum`` annotation (inside ``Optional`` too)."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [m.value for m in annotation]
    for arg in typing.get_args(annotation):
        if arg is not type(None) and (found := _choice_values(arg)) is not None:
            return found
    return None


def answer_schema(
    schema: type[BaseModel], synonyms: Mapping[str, Mapping[str, Iterable[str]]]
) -> type[BaseModel]:
    """The schema the model answers in when a rule lets it answer synonyms: every
    ``Literal``/``Enum`` field of ``schema`` with declared ``synonyms`` also accepts those words
    (``"trainers"`` as well as ``"shoes"``), still a closed list, so a provider that turns the
    JSON schema into a grammar keeps the model to declared words. A small model copies a word
    of the input far more reliably than it classifies it; :class:`Grounder` then requires the
    word in the input and maps it to its canonical value, and the answer is validated against
    ``schema`` itself. ``schema`` unchanged when no field qualifies."""
    fields: dict[str, Any] = {}
    widened = False
    for name, info in schema.model_fields.items():
        values = _choice_values(info.annotation)
        table = synonyms.get(name)
        if values is None or not table or not all(isinstance(v, str) for v in values):
            fields[name] = (info.annotation, info)
            continue
        words: list[str] = list(values)
        for canonical, phrases in table.items():
            for word in [canonical, *phrases]:
                if word not in words:
                    words.append(word)
        wide: Any = typing.Literal[tuple(words)]
        optional = type(None) in typing.get_args(info.annotation)
        fields[name] = (wide | None if optional else wide, info)
        widened = True
    if not widened:
        return schema
    return create_model(
        schema.__name__, __doc__=schema.__doc__, __module__=schema.__module__, **fields
    )


class UngroundedError(ValueError):
    """Grounding dropped a field the schema requires."""

    def __init__(self, dropped: dict[str, str]) -> None:
        super().__init__("ungrounded required field(s): " + ", ".join(sorted(dropped)))
        self.dropped = dropped
