"""``llm-middleware check | explain | eval | demo | serve-model``."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from .config import Config, ConfigError, IntentExtraction, Prompt, import_string, load_config
from .engine import Engine

DESCRIPTION = """\
LLM middleware for existing web apps: path-matched intent extraction, PII masking and
response enrichment, each under a strict time budget with passthrough fallback.

commands:
  check CONFIG                 validate a configuration and list its rules
  explain CONFIG METHOD PATH   which rule a request would match, and what it would read
  eval DATA --config CONFIG --rule PATH
                               measure an intent rule on labelled cases (precision, recall...)
  demo                         the demo shop on the local model
  serve-model                  the local model alone, for the example apps

CONFIG is a .toml or .json file, or module:ATTRIBUTE naming a dict."""


def _version() -> str:
    try:
        return importlib.metadata.version("llm-middleware")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "unknown"


def _load(source: str) -> Config:
    """A TOML or JSON file, or ``module:ATTRIBUTE`` / ``module.ATTRIBUTE`` naming a dict."""
    path = Path(source)
    if path.suffix in (".toml", ".json") or "/" in source or "\\" in source:
        if not path.is_file():
            raise ValueError(f"{source}: no such file")
        if path.suffix == ".json":
            return load_config(json.loads(path.read_text()))
        return load_config(path)
    value: Any = import_string(source.replace(":", "."))
    return load_config(value)


def _load_prompt(source: str) -> Prompt | str:
    if source in ("default", "rule"):
        return source
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"--prompt {source}: no such file (or use 'default' / 'rule')")
    data = (
        tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    )
    return Prompt.model_validate(data.get("prompt", data))


def _parse_provider(spec: str, local_url: str | None) -> dict[str, Any]:
    """``local``, a JSON object, or ``[MODEL@]URL[#DIALECT]`` for an OpenAI-compatible server."""
    if spec == "local":
        assert local_url is not None
        return {"kind": "openai", "base_url": local_url, "model": "local",
                "dialect": "json_object", "max_tokens": 64, "max_retries": 0}  # fmt: skip
    if spec.lstrip().startswith("{"):
        value: dict[str, Any] = json.loads(spec)
        return value
    spec, _, dialect = spec.partition("#")
    model, _, url = spec.rpartition("@")
    return {"kind": "openai", "base_url": url, "model": model or "default",
            "dialect": dialect or "json_schema"}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llm-middleware",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate a configuration and list its rules")
    check.add_argument("config", help="config.toml, config.json or module:SETTING")

    explain = sub.add_parser("explain", help="which rule a request would match")
    explain.add_argument("config")
    explain.add_argument("method")
    explain.add_argument("path", help="a path, with its query string if any: '/search?q=x'")

    ev = sub.add_parser(
        "eval",
        help="measure an intent rule on labelled cases",
        description="Run labelled cases (JSON Lines: input, expected, accept, tags) through the "
        "real engine and report per-field precision, recall and accuracy, exact match, "
        "outcomes, latency, tokens and cost. Exit 1 when a gate fails.",
    )
    ev.add_argument("data", help="cases, one JSON object a line")
    ev.add_argument("--config", required=True, help="config.toml, config.json or module:ATTR")
    ev.add_argument("--rule", required=True, metavar="PATH", help="a request path the rule matches")
    ev.add_argument("--method", default=None, help="request method (default: GET, else POST)")
    ev.add_argument(
        "--prompt",
        action="append",
        default=[],
        help="a prompt file (TOML/JSON), 'default' or 'rule'; repeat to compare",
    )
    ev.add_argument(
        "--provider",
        action="append",
        default=[],
        help="'local', [MODEL@]URL[#DIALECT] or a JSON object; repeat to compare",
    )
    ev.add_argument(
        "--local-model",
        action="store_true",
        help="start the local model and use it (same as --provider local)",
    )
    ev.add_argument(
        "--grounded",
        choices=["rule", "on", "off", "both"],
        default="rule",
        help="grounding as the rule says, forced on/off, or both from one run",
    )
    ev.add_argument("--limit", type=int, default=None, help="the first N cases only")
    ev.add_argument(
        "--budget-ms",
        type=int,
        default=None,
        help="override the rule's budget (quality apart from latency)",
    )
    ev.add_argument("--tolerance", type=float, default=0.01, help="numeric tolerance")
    ev.add_argument("--price-in", type=float, default=0.0, help="cost per 1M prompt tokens")
    ev.add_argument("--price-out", type=float, default=0.0, help="cost per 1M output tokens")
    ev.add_argument("--markdown", help="write the Markdown report here (default: stdout)")
    ev.add_argument("--json", help="write the JSON report (with every failure) here")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument("--min-field-precision", type=float)
    ev.add_argument("--min-field-recall", type=float)
    ev.add_argument("--min-exact-match", type=float)
    ev.add_argument("--max-p95-ms", type=float)  # fmt: skip

    demo = sub.add_parser("demo", help="run the demo app on the local model")
    demo.add_argument(
        "--provider-url", help="an OpenAI-compatible /v1 URL instead of the local model"
    )
    demo.add_argument("--model", default="local")
    demo.add_argument("--dialect", default="json_object", choices=["json_schema", "json_object"])
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--budget-ms", type=int, default=None)

    model = sub.add_parser("serve-model", help="serve only the local model on a fixed port")
    model.add_argument("--port", type=int, default=8080)

    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            config = _load(args.config)
            Engine(config)  # compiles every rule, as at start-up
            print(f"OK: {len(config.providers)} provider(s), {len(config.rules)} rule(s)")
            for index, rule in enumerate(config.rules):
                kinds = ", ".join(i.type for i in rule.interceptors)
                methods = ",".join(rule.methods or ["*"])
                print(f"  rules[{index}] {methods} {rule.path} budget={rule.budget_ms}ms "
                      f"mode={rule.mode} [{kinds}]")  # fmt: skip
            return 0
        if args.command == "explain":
            return _explain(_load(args.config), args.method.upper(), args.path)
        if args.command == "eval":
            return _eval(args)
        if args.command == "serve-model":
            from .demo import serve_model

            return serve_model(args.port)
        from .demo import DEMO_BUDGET_MS, run_demo

        return run_demo(
            provider_url=args.provider_url,
            model=args.model,
            dialect=args.dialect,
            port=args.port,
            budget_ms=args.budget_ms or DEMO_BUDGET_MS,
        )
    except (ConfigError, ValueError, RuntimeError, OSError) as exc:
        print(f"llm-middleware {args.command}: {exc}", file=sys.stderr)
        return 2


def _explain(config: Config, method: str, target: str) -> int:
    path, _, query = target.partition("?")
    engine = Engine(config)
    compiled = engine.match(method, path)
    if compiled is None:
        print(f"{method} {target}: no rule (passes through untouched)")
        return 1
    names = ", ".join(i.name for i in compiled.interceptors)
    budget = compiled.config.budget_ms
    where = f"rules[{compiled.index}] {compiled.label!r}"
    print(f"{method} {target}: {where} budget={budget}ms mode={compiled.mode} [{names}]")
    params = dict(parse_qsl(query, keep_blank_values=True))
    for cfg, icpt in zip(compiled.config.interceptors, compiled.interceptors, strict=False):
        source = getattr(cfg, "source", None)
        if not isinstance(source, str):
            continue
        kind, _, name = source.partition(":")
        if kind == "query":
            state = "present" if params.get(name) else "absent: the interceptor is skipped"
            print(f"  {icpt.name} reads {source} ({state})")
        else:
            print(f"  {icpt.name} reads {source} (from the request body or headers)")
        if isinstance(cfg, IntentExtraction) and cfg.rewrite:
            for field, dest in cfg.rewrite.items():
                kept = dest.startswith("query:") and params.get(dest[6:])
                note = " (the client's value is kept)" if kept and not cfg.rewrite_overwrite else ""
                print(f"    rewrites {field} -> {dest}{note}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import asyncio

    from .evaluation import (
        ProgressBar,
        Variant,
        check_gates,
        evaluate_async,
        load_cases,
        to_json,
        to_markdown,
    )

    config = _load(args.config)
    cases = load_cases(args.data)[: args.limit]
    prompts = [_load_prompt(p) for p in args.prompt] or ["rule"]
    provider_specs = list(args.provider)
    if args.local_model and "local" not in provider_specs:
        provider_specs.append("local")
    with contextlib.ExitStack() as stack:
        local_url = None
        if "local" in provider_specs:
            from .demo import local_llm_server, warm_up

            print("starting the local model ...", file=sys.stderr)
            local_url = stack.enter_context(local_llm_server())
            warm_up(local_url, "local")
        providers: list[tuple[str, list[dict[str, Any]] | None]] = [
            (spec if len(provider_specs) > 1 else "", [_parse_provider(spec, local_url)])
            for spec in provider_specs
        ] or [("", None)]
        variants: list[Variant] = []
        for prompt in prompts:
            for provider_label, provider in providers:
                name = prompt if isinstance(prompt, str) else f"{prompt.name}@{prompt.version}"
                label = " ".join(x for x in (name, provider_label) if x)
                grounded = {"on": True, "off": False, "both": False}.get(args.grounded)
                variant_prompt: Any = None if prompt == "rule" else prompt
                variants.append(Variant(label, variant_prompt, provider, grounded))
                if args.grounded == "both":
                    variants.append(Variant(f"{label} +grounded", variant_prompt, provider,
                                            True, derived_from=label))  # fmt: skip
        reports = asyncio.run(
            evaluate_async(
                cases, config, args.rule, method=args.method, variants=variants,
                tolerance=args.tolerance, price_in=args.price_in, price_out=args.price_out,
                budget_ms=args.budget_ms,
                progress=None if args.quiet else ProgressBar(),
            )
        )  # fmt: skip
    markdown = to_markdown(reports)
    if args.markdown:
        Path(args.markdown).write_text(markdown)
    else:
        print(markdown)
    if args.json:
        Path(args.json).write_text(to_json(reports))
    failures = check_gates(
        reports,
        min_field_precision=args.min_field_precision,
        min_field_recall=args.min_field_recall,
        min_exact_match=args.min_exact_match,
        max_p95_ms=args.max_p95_ms,
    )
    for line in failures:
        print(f"GATE FAILED: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
