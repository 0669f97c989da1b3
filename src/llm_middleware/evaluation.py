"""``llm-middleware eval``: measure an intent rule on labelled cases, through the real engine.

Each case goes through the same rule, prompt, providers, budget, masking and grounding as a
live request (the request is built from the interceptor's ``source``). Reported per variant
(prompt version x provider): per-field precision, recall and accuracy, exact match, outcome and
schema-valid rates, latency p50/p95, tokens and cost.

Data: JSON Lines, one case per line::

    {"id": "neg-1", "input": "running shoes, not red", "expected": {"category": "shoes"},
     "accept": {"color": [null]}, "tags": ["negation"]}

``expected`` lists the fields the input states (a field left out is expected to be null);
``accept`` lists other values that also count as right for a field (``null`` among them means
"leaving it empty is fine too"); ``tags`` group the results. Values match when equal after
normalisation: numbers within a tolerance, strings case/accents/plural-insensitive or through
the rule's declared synonyms.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO
from urllib.parse import urlencode

from pydantic import BaseModel

from .config import Config, IntentExtraction, Prompt, load_config
from .deadline import Deadline
from .engine import Engine
from .exchange import Headers, RequestExchange
from .grounding import Grounder, UngroundedError, normalise, plural_variants

__all__ = [
    "Case",
    "EvalReport",
    "Variant",
    "check_gates",
    "evaluate",
    "load_cases",
    "to_markdown",
]

OK_OUTCOMES = ("ok", "cached")


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    input: str
    expected: dict[str, Any]
    accept: dict[str, list[Any]] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


def load_cases(path: str | Path) -> list[Case]:
    """Read a JSONL file of cases; a bad line raises ``ValueError`` naming it."""
    cases: list[Case] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                raw = json.loads(line)
                text = raw["input"]
                expected = raw.get("expected") or {}
                accept = raw.get("accept") or {}
                if not isinstance(text, str) or not isinstance(expected, dict):
                    raise TypeError("input must be a string and expected an object")
                if not isinstance(accept, dict) or not all(
                    isinstance(v, list) for v in accept.values()
                ):
                    raise TypeError("accept must map field names to lists of values")
                cases.append(
                    Case(
                        id=str(raw.get("id", number)),
                        input=text,
                        expected=expected,
                        accept=accept,
                        tags=tuple(raw.get("tags") or ()),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a valid case ({exc})") from None
    if not cases:
        raise ValueError(f"{path}: no cases")
    return cases


@dataclass(frozen=True, slots=True)
class Variant:
    """One column of the report: a prompt (``None``: the rule's own), providers (``None``: the
    config's), grounding (``None``: as the rule says; ``True``/``False`` overrides)."""

    label: str
    prompt: Prompt | Literal["default"] | None = None
    providers: list[dict[str, Any]] | None = None
    grounded: bool | None = None
    # Derived: score the base variant's answers again with grounding applied (no new calls;
    # on a rule with answer_synonyms the variant is run for real instead).
    derived_from: str | None = None


# -- scoring ---------------------------------------------------------------------------------


class Matcher:
    def __init__(self, grounder: Grounder | None, tolerance: float) -> None:
        self.grounder = grounder
        self.tolerance = tolerance

    def same(self, name: str, predicted: Any, expected: Any) -> bool:
        if predicted is None or expected is None:
            return predicted is None and expected is None
        if isinstance(expected, bool) or isinstance(predicted, bool):
            return bool(predicted == expected)
        if isinstance(expected, int | float) and isinstance(predicted, int | float):
            return bool(abs(predicted - expected) <= self.tolerance)
        if isinstance(expected, str) and isinstance(predicted, str):
            a, b = normalise(predicted), normalise(expected)
            if a == b or a in plural_variants(b):
                return True
            if self.grounder is not None:
                ca, cb = self.grounder.canonical(name, a), self.grounder.canonical(name, b)
                return ca is not None and ca == (cb if cb is not None else b)
            return False
        if isinstance(expected, list) and isinstance(predicted, list):
            return len(expected) == len(predicted) and all(
                self.same(name, p, e) for p, e in zip(sorted(predicted, key=str),
                                                      sorted(expected, key=str), strict=True)
            )  # fmt: skip
        return bool(predicted == expected)


@dataclass(slots=True)
class FieldScore:
    predicted: int = 0  # non-null answers
    correct_predicted: int = 0
    relevant: int = 0  # non-null expectations (unless null is accepted)
    found: int = 0
    agree: int = 0  # right, null included
    cases: int = 0

    @property
    def precision(self) -> float | None:
        return self.correct_predicted / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        return self.found / self.relevant if self.relevant else None

    @property
    def accuracy(self) -> float | None:
        return self.agree / self.cases if self.cases else None


@dataclass(slots=True)
class CaseResult:
    case: Case
    outcome: str
    reason: str | None
    predicted: dict[str, Any]
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    wrong: list[str] = field(default_factory=list)


@dataclass(slots=True)
class EvalReport:
    variant: str
    fields: list[str]
    results: list[CaseResult]
    scores: dict[str, FieldScore]
    price_in: float = 0.0
    price_out: float = 0.0

    @property
    def n(self) -> int:
        return len(self.results)

    @property
    def exact_match(self) -> float:
        return sum(not r.wrong for r in self.results) / self.n

    @property
    def outcomes(self) -> dict[str, int]:
        return dict(Counter(r.outcome for r in self.results))

    @property
    def schema_valid(self) -> float:
        return sum(r.outcome in OK_OUTCOMES for r in self.results) / self.n

    def _micro(self, attr: str) -> float | None:
        if attr == "precision":
            num = sum(s.correct_predicted for s in self.scores.values())
            den = sum(s.predicted for s in self.scores.values())
        else:
            num = sum(s.found for s in self.scores.values())
            den = sum(s.relevant for s in self.scores.values())
        return num / den if den else None

    @property
    def precision(self) -> float | None:
        """Micro-averaged over fields: of all non-null answers, the share that is right."""
        return self._micro("precision")

    @property
    def recall(self) -> float | None:
        return self._micro("recall")

    def latency(self, q: float) -> float:
        return percentile([r.latency_ms for r in self.results], q)

    @property
    def tokens(self) -> tuple[int, int]:
        return (
            sum(r.prompt_tokens for r in self.results),
            sum(r.completion_tokens for r in self.results),
        )

    @property
    def cost(self) -> float:
        tin, tout = self.tokens
        return (tin * self.price_in + tout * self.price_out) / 1_000_000

    def as_dict(self) -> dict[str, Any]:
        tin, tout = self.tokens
        return {
            "variant": self.variant,
            "cases": self.n,
            "precision": self.precision,
            "recall": self.recall,
            "exact_match": self.exact_match,
            "schema_valid": self.schema_valid,
            "outcomes": self.outcomes,
            "latency_ms": {"p50": self.latency(50), "p95": self.latency(95)},
            "tokens": {"prompt": tin, "completion": tout},
            "cost": self.cost,
            "fields": {
                name: {
                    "precision": s.precision,
                    "recall": s.recall,
                    "accuracy": s.accuracy,
                    "predicted": s.predicted,
                    "relevant": s.relevant,
                }
                for name, s in self.scores.items()
            },
            "tags": self.by_tag(),
            "failures": [
                {
                    "id": r.case.id,
                    "outcome": r.outcome,
                    "reason": r.reason,
                    "wrong": r.wrong,
                    "predicted": r.predicted,
                }
                for r in self.results
                if r.wrong
            ],  # fmt: skip
        }

    def by_tag(self) -> dict[str, dict[str, float | int]]:
        tags: dict[str, list[CaseResult]] = {}
        for r in self.results:
            for tag in r.case.tags:
                tags.setdefault(tag, []).append(r)
        return {
            tag: {"cases": len(rs), "exact_match": sum(not r.wrong for r in rs) / len(rs)}
            for tag, rs in sorted(tags.items())
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def score(
    variant: str,
    fields: list[str],
    results: list[CaseResult],
    matcher: Matcher,
    price_in: float = 0.0,
    price_out: float = 0.0,
) -> EvalReport:
    scores = {name: FieldScore() for name in fields}
    for r in results:
        r.wrong = []
        for name in fields:
            s = scores[name]
            s.cases += 1
            pred = r.predicted.get(name)
            exp = r.case.expected.get(name)
            alternatives = r.case.accept.get(name, [])
            right = matcher.same(name, pred, exp) or any(
                matcher.same(name, pred, alt) for alt in alternatives
            )
            if pred is not None:
                s.predicted += 1
                s.correct_predicted += right
            if exp is not None and None not in alternatives:
                s.relevant += 1
                s.found += right and pred is not None
            s.agree += right
            if not right:
                r.wrong.append(name)
    return EvalReport(variant, fields, results, scores, price_in, price_out)


# -- running ---------------------------------------------------------------------------------


def build_exchange(source: str, path: str, method: str, text: str) -> RequestExchange:
    """The request a client would send to put ``text`` where the interceptor reads it."""
    kind, _, name = source.partition(":")
    headers: list[tuple[str, str]] = []
    query = ""
    body: bytes | None = None
    if kind == "query":
        query = urlencode({name: text})
    elif kind == "form":
        body = urlencode({name: text}).encode()
        headers.append(("content-type", "application/x-www-form-urlencoded"))
    elif kind == "json":
        document: Any = text
        for part in reversed([p for p in name.split("/")[1:] if p]):
            document = {part.replace("~1", "/").replace("~0", "~"): document}
        body = json.dumps(document, ensure_ascii=False).encode()
        headers.append(("content-type", "application/json"))
    elif kind == "header":
        headers.append((name.lower(), text))
    else:
        body = text.encode()
        headers.append(("content-type", "text/plain; charset=utf-8"))
    if body is not None:
        headers.append(("content-length", str(len(body))))
    return RequestExchange(method, path, query, Headers(headers), body, client_key="eval")


_EVAL_BREAKER_FAILURES = 1_000_000


def _variant_config(
    config: Config, rule_index: int, interceptor: int, variant: Variant, budget_ms: int | None
) -> Config:
    data = config.model_dump(by_alias=True)
    # The circuit breaker stays shut: an evaluation measures answers, and a run of timeouts
    # (a slow or loaded machine) would otherwise turn the following cases into
    # circuit_open, scoring the machine instead of the prompt. Timeouts still count.
    data["breaker_failures"] = _EVAL_BREAKER_FAILURES
    rule = data["rules"][rule_index]
    rule["mode"] = "enforce"
    rule["sample"] = 1.0
    if budget_ms is not None:
        rule["budget_ms"] = budget_ms
    icpt = rule["interceptors"][interceptor]
    if variant.prompt == "default":
        icpt["prompt"] = None  # the built-in default prompt
    elif isinstance(variant.prompt, Prompt):
        icpt["prompt"] = variant.prompt.model_dump()
    if variant.grounded is not None:
        icpt["grounded"] = variant.grounded
        if not variant.grounded:
            # Synonym answers exist only for grounding to map back: ungrounded, the model
            # answers in the view's own schema.
            icpt["answer_synonyms"] = False
    if variant.providers is not None:
        data["providers"] = variant.providers
    return load_config(data)


def find_rule(config: Config, method: str, path: str) -> tuple[int, int, IntentExtraction]:
    """(rule index, interceptor index, intent config) of the rule a request would match."""
    engine = Engine(config)
    compiled = engine.match(method, path)
    if compiled is None:
        raise ValueError(f"{method} {path}: no rule matches")
    for index, icpt in enumerate(compiled.config.interceptors):
        if isinstance(icpt, IntentExtraction):
            return compiled.index, index, icpt
    raise ValueError(f"{method} {path}: rule {compiled.label!r} has no intent interceptor")


Progress = Callable[[str, int, int], None]


async def _run_variant(
    config: Config,
    method: str,
    path: str,
    icpt_name: str,
    source: str,
    cases: Sequence[Case],
    label: str,
    progress: Progress | None,
) -> list[CaseResult]:
    engine = Engine(config)
    rule = engine.match(method, path)
    assert rule is not None
    out: list[CaseResult] = []
    try:
        for done, case in enumerate(cases):
            exchange = build_exchange(source, path, method, case.input)
            result, stats = await engine.run_measured(rule, exchange, Deadline(rule.budget_s))
            obj: BaseModel | None = result.intents.get(icpt_name)
            predicted = obj.model_dump(mode="json") if obj is not None else {}
            out.append(
                CaseResult(
                    case=case,
                    outcome=result.outcomes.get(icpt_name, "error"),
                    reason=result.reasons.get(icpt_name),
                    predicted=predicted,
                    latency_ms=result.added_ms,
                    prompt_tokens=stats.prompt_tokens,
                    completion_tokens=stats.completion_tokens,
                )
            )
            if progress is not None:
                progress(label, done + 1, len(cases))
    finally:
        await engine.aclose()
    return out


def _regrounded(
    results: list[CaseResult], grounder: Grounder, schema: type[BaseModel]
) -> list[CaseResult]:
    out = []
    for r in results:
        predicted, reason = r.predicted, r.reason
        if r.outcome in OK_OUTCOMES:
            try:
                grounded = grounder.ground(schema.model_validate(r.predicted), r.case.input)
                predicted, reason = grounded.obj.model_dump(mode="json"), grounded.reason
            except UngroundedError as exc:
                predicted, reason = {}, str(exc)
        out.append(CaseResult(r.case, r.outcome, reason, predicted, r.latency_ms,
                              r.prompt_tokens, r.completion_tokens))  # fmt: skip
    return out


async def evaluate_async(
    cases: Sequence[Case],
    config: Config | Any,
    path: str,
    *,
    method: str | None = None,
    variants: Sequence[Variant] = (),
    tolerance: float = 0.01,
    price_in: float = 0.0,
    price_out: float = 0.0,
    budget_ms: int | None = None,
    progress: Progress | None = None,
) -> list[EvalReport]:
    """Run ``cases`` through the intent rule matching ``path``, once per variant (the config
    as it is when none is given); one report per variant, in order. ``budget_ms`` overrides
    the rule's budget (to measure quality apart from latency on a loaded machine)."""
    config = load_config(config)
    if method is None:  # the first of GET, POST that the rule takes
        method = next(
            (m for m in ("GET", "POST") if Engine(config).match(m, path) is not None), "GET"
        )
    rule_index, icpt_index, _ = find_rule(config, method, path)
    variants = list(variants) or [Variant(label="config")]
    raw: dict[str, list[CaseResult]] = {}
    reports: list[EvalReport] = []
    for variant in variants:
        vconfig = _variant_config(config, rule_index, icpt_index, variant, budget_ms)
        icpt = vconfig.rules[rule_index].interceptors[icpt_index]
        assert isinstance(icpt, IntentExtraction)
        name = _interceptor_name(vconfig, rule_index, icpt_index)
        fields = list(icpt.schema_.model_fields)
        synonyms_grounder = Grounder(icpt.schema_, [], icpt.synonyms)
        matcher = Matcher(synonyms_grounder, tolerance)
        # A rule whose model answers with synonyms gets its grounded answers from another
        # answer schema than the ungrounded run's: those are measured with their own calls.
        if variant.derived_from is not None and not icpt.answer_synonyms:
            fields_grounder = Grounder(
                icpt.schema_,
                icpt.grounded if isinstance(icpt.grounded, list) else None,
                icpt.synonyms,
                icpt.cues,
            )
            results = _regrounded(raw[variant.derived_from], fields_grounder, icpt.schema_)
        else:
            results = await _run_variant(
                vconfig, method, path, name, icpt.source, cases, variant.label, progress
            )
            raw[variant.label] = results
        reports.append(score(variant.label, fields, results, matcher, price_in, price_out))
    return reports


def _interceptor_name(config: Config, rule_index: int, icpt_index: int) -> str:
    seen: dict[str, int] = {}
    name = ""
    for cfg in config.rules[rule_index].interceptors[: icpt_index + 1]:
        base = cfg.name or cfg.type
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}#{seen[base]}"
    return name


def evaluate(
    cases: Sequence[Case] | str | Path, config: Config | Any, path: str, **kwargs: Any
) -> list[EvalReport]:
    """Synchronous :func:`evaluate_async`; ``cases`` may be a JSONL path."""
    if isinstance(cases, str | Path):
        cases = load_cases(cases)
    return asyncio.run(evaluate_async(cases, config, path, **kwargs))


# -- reporting -------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def to_markdown(reports: Sequence[EvalReport]) -> str:
    if not reports:
        return ""
    fields = reports[0].fields
    head = ["metric", *(r.variant for r in reports)]
    rows: list[list[str]] = [
        ["cases", *(str(r.n) for r in reports)],
        ["field precision (all)", *(_fmt(r.precision) for r in reports)],
        ["field recall (all)", *(_fmt(r.recall) for r in reports)],
    ]
    for name in fields:
        rows.append([f"{name} precision", *(_fmt(r.scores[name].precision) for r in reports)])
        rows.append([f"{name} recall", *(_fmt(r.scores[name].recall) for r in reports)])
        rows.append([f"{name} accuracy", *(_fmt(r.scores[name].accuracy) for r in reports)])
    rows += [
        ["exact match", *(_fmt(r.exact_match) for r in reports)],
        ["schema-valid rate", *(_fmt(r.schema_valid) for r in reports)],
        ["outcomes", *(" ".join(f"{k}:{v}" for k, v in sorted(r.outcomes.items()))
                       for r in reports)],
        ["latency p50 (ms)", *(f"{r.latency(50):.0f}" for r in reports)],
        ["latency p95 (ms)", *(f"{r.latency(95):.0f}" for r in reports)],
        ["tokens in/out", *(f"{r.tokens[0]}/{r.tokens[1]}" for r in reports)],
        ["cost", *(f"{r.cost:.4f}" for r in reports)],
    ]  # fmt: skip
    tags = sorted({t for r in reports for t in r.by_tag()})
    for tag in tags:
        rows.append(
            [f"exact match [{tag}]",
             *(_fmt(r.by_tag().get(tag, {}).get("exact_match")) for r in reports)]
        )  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_json(reports: Sequence[EvalReport]) -> str:
    return json.dumps([r.as_dict() for r in reports], indent=2, ensure_ascii=False)


def check_gates(
    reports: Iterable[EvalReport],
    *,
    min_field_precision: float | None = None,
    min_field_recall: float | None = None,
    min_exact_match: float | None = None,
    max_p95_ms: float | None = None,
) -> list[str]:
    """What fails the gates, one line each (empty: all pass). Field gates apply to every field
    that has answers (precision) or expectations (recall)."""
    failures: list[str] = []
    for r in reports:
        for name, s in r.scores.items():
            low_p = min_field_precision is not None and (s.precision or 0.0) < min_field_precision
            if low_p and s.predicted:
                failures.append(f"{r.variant}: {name} precision {s.precision or 0.0:.3f} "
                                f"< {min_field_precision}")  # fmt: skip
            low_r = min_field_recall is not None and (s.recall or 0.0) < min_field_recall
            if low_r and s.relevant:
                failures.append(f"{r.variant}: {name} recall {s.recall or 0.0:.3f} "
                                f"< {min_field_recall}")  # fmt: skip
        if min_exact_match is not None and r.exact_match < min_exact_match:
            failures.append(f"{r.variant}: exact match {r.exact_match:.3f} < {min_exact_match}")
        if max_p95_ms is not None and r.latency(95) > max_p95_ms:
            failures.append(f"{r.variant}: latency p95 {r.latency(95):.0f} ms > {max_p95_ms}")
    return failures


class ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal, else every 10 %)."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.started = time.monotonic()
        self.tty = self.stream.isatty()
        self.last = -1

    def __call__(self, label: str, done: int, total: int) -> None:
        if done == 1:
            self.started = time.monotonic()
        step = done * 10 // total
        if not self.tty and step == self.last and done != total:
            return
        self.last = step
        filled = done * self.width // total
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (total - done)
        line = f"{label[:24]:<24} [{bar}] {done}/{total} {elapsed:.0f}s eta {eta:.0f}s"
        end = "\n" if done == total or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()
