"""Configuration: one schema for dicts, objects and TOML; errors name the rule and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_middleware import (
    Config,
    ConfigError,
    IntentExtraction,
    OpenAICompatible,
    Rule,
    load_config,
)
from llm_middleware.cli import main as cli_main
from schemas import SearchIntent

PROVIDER = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}


def test_dict_and_objects_validate_to_the_same_config() -> None:
    from_dict = load_config(
        {
            "providers": [PROVIDER],
            "rules": [
                {
                    "path": "/search",
                    "interceptors": [
                        {"type": "intent", "schema": "schemas.SearchIntent", "source": "query:q"}
                    ],
                }
            ],
        }  # fmt: skip
    )
    from_objects = Config(
        providers=[OpenAICompatible(base_url="http://127.0.0.1:9/v1", model="m")],
        rules=[
            Rule(
                path="/search",
                interceptors=[IntentExtraction(schema=SearchIntent, source="query:q")],
            )
        ],
    )
    assert from_dict == from_objects
    assert from_dict.rules[0].interceptors[0].schema_ is SearchIntent  # type: ignore[union-attr]


def test_upper_case_settings_keys_and_kwargs() -> None:
    config = load_config({"PROVIDERS": [PROVIDER]}, max_in_flight=3)
    assert config.max_in_flight == 3 and config.providers[0].model == "m"


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "llm.toml"
    path.write_text(
        '[[providers]]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'
        '[[rules]]\npath = "/search"\nbudget_ms = 250\n'
        '[[rules.interceptors]]\ntype = "intent"\nschema = "schemas.SearchIntent"\n'
    )
    config = load_config(path)
    assert config.rules[0].budget_ms == 250


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"path": "/a", "budget_ms": 0}, "rules[1].budget_ms"),
        ({"path": "a"}, "rules[1].path"),
        ({"path": "re:("}, "invalid regex"),
        ({"path": "/a/{id"}, "rules[1].path"),
        ({"path": "/a", "methods": ["FETCH"]}, "unknown HTTP method(s): FETCH"),
        ({"path": "/a", "interceptors": [{"type": "intent", "schema": "nope.Missing"}]},
         "rules[1].interceptors[0].schema"),
        ({"path": "/a", "interceptors": [{"type": "intent", "schema": "schemas.SearchIntent",
                                          "source": "cookie:x"}]},
         "rules[1].interceptors[0].source"),
        ({"path": "/a", "interceptors": [{"type": "translate"}]}, "rules[1].interceptors[0]"),
        ({"path": "/a", "sample": 2}, "rules[1].sample"),
        ({"path": "/a", "interceptors": [{"type": "pii_masking", "entities": ["EMAIL"]}]},
         "no detector for entity types: EMAIL"),
        ({"path": "/a", "interceptors": [{"type": "pii_masking", "name": "datenschutz-€"}]},
         "rules[1].interceptors[0].name"),
        ({"path": "/a", "interceptors": [{"type": "enrichment", "schema": "schemas.Summary",
                                          "into": "header:X Summary"}]},
         "rules[1].interceptors[0].into"),
        ({"path": "/a", "interceptors": [{"type": "intent", "schema": "schemas.SearchIntent",
                                          "rewrite": {"price": "query:p"}}]},
         "SearchIntent has no field 'price'"),
        ({"path": "/a", "interceptors": [{"type": "intent", "schema": "schemas.SearchIntent",
                                          "rewrite": {"color": "header:x"}}]},
         "use query:NAME or json:/pointer"),
        ({"path": "/a", "typo_key": 1}, "rules[1].typo_key"),
    ],
)  # fmt: skip
def test_errors_name_the_rule_and_field(rule: dict[str, object], expected: str) -> None:
    ok_rule = {"path": "/ok"}
    with pytest.raises(ConfigError) as info:
        load_config({"providers": [PROVIDER], "rules": [ok_rule, rule]})
    message = str(info.value)
    assert expected in message
    if not rule["path"].startswith("re:") and rule["path"].startswith("/"):  # type: ignore[union-attr]
        assert f"(rule path {rule['path']!r})" in message


def test_provider_url_must_be_http() -> None:
    with pytest.raises(ConfigError, match=r"providers\[0\]\.base_url: .*not an http"):
        load_config({"providers": [{"kind": "openai", "base_url": "api.openai.com/v1",
                                    "model": "m"}]})  # fmt: skip


def test_llm_rule_without_provider_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"rules\[0\] \(/a\) uses an LLM interceptor"):
        load_config({"rules": [{"path": "/a", "interceptors": [
            {"type": "intent", "schema": "schemas.SearchIntent"}]}]})  # fmt: skip


def test_cli_check_and_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "llm.toml"
    path.write_text(
        '[[providers]]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'
        '[[rules]]\npath = "/articles/{id}"\nmethods = ["GET"]\n'
        '[[rules.interceptors]]\ntype = "intent"\nschema = "schemas.SearchIntent"\n'
    )
    assert cli_main(["check", str(path)]) == 0
    assert cli_main(["explain", str(path), "get", "/articles/7"]) == 0
    assert cli_main(["explain", str(path), "POST", "/articles/7"]) == 1
    out = capsys.readouterr().out
    assert "OK: 1 provider(s), 1 rule(s)" in out
    assert "rules[0] '/articles/{id}'" in out
    assert "no rule" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\npath = "nope"\n')
    assert cli_main(["check", str(bad)]) == 2
    assert "rules[0].path" in capsys.readouterr().err
