"""``llm-middleware check | explain | demo | serve-model``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, import_string, load_config
from .engine import Engine


def _load(source: str) -> Config:
    """A TOML or JSON file, or ``module:ATTRIBUTE`` / ``module.ATTRIBUTE`` naming a dict."""
    path = Path(source)
    if path.suffix == ".toml" and path.is_file():
        return load_config(path)
    if path.suffix == ".json" and path.is_file():
        return load_config(json.loads(path.read_text()))
    value: Any = import_string(source.replace(":", "."))
    return load_config(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-middleware", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate a configuration and list its rules")
    check.add_argument("config", help="config.toml, config.json or module:SETTING")

    explain = sub.add_parser("explain", help="which rule a request would match")
    explain.add_argument("config")
    explain.add_argument("method")
    explain.add_argument("path")

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
            engine = Engine(_load(args.config))
            compiled = engine.match(args.method.upper(), args.path)
            if compiled is None:
                print(f"{args.method.upper()} {args.path}: no rule (passes through untouched)")
                return 1
            names = ", ".join(i.name for i in compiled.interceptors)
            budget = compiled.config.budget_ms
            where = f"rules[{compiled.index}] {compiled.label!r}"
            print(f"{args.method.upper()} {args.path}: {where} "
                  f"budget={budget}ms mode={compiled.mode} [{names}]")  # fmt: skip
            return 0
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


if __name__ == "__main__":
    raise SystemExit(main())
