"""Path patterns and first-match-wins routing."""

from __future__ import annotations

import pytest

from llm_middleware.routing import Router, compile_path


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/search", "/search", True),
        ("/search", "/search/", False),
        ("/articles/{id}", "/articles/42", True),
        ("/articles/{id}", "/articles/42/comments", False),
        ("/articles/{id:int}", "/articles/abc", False),
        ("/files/{rest:path}", "/files/a/b/c.txt", True),
        ("/api/*", "/api/users", True),
        ("/api/*", "/api/users/1", False),
        ("/api/**", "/api/users/1", True),
        ("/a.b", "/aXb", False),
        (r"re:^/api/v\d+/search$", "/api/v2/search", True),
        (r"re:^/api/v\d+/search$", "/api/vx/search", False),
    ],
)
def test_patterns(pattern: str, path: str, matches: bool) -> None:
    router = Router([(pattern, None, "rule")])
    assert (router.match("GET", path) == "rule") is matches
    assert compile_path(pattern) is not None


def test_first_matching_rule_wins_across_kinds() -> None:
    router = Router(
        [
            ("/api/*", frozenset({"POST"}), "glob-post"),
            ("/api/search", None, "exact"),
            ("/api/{name}", None, "template"),
            (r"re:^/api/", None, "regex"),
        ]
    )
    assert router.match("POST", "/api/search") == "glob-post"
    assert router.match("GET", "/api/search") == "exact"
    assert router.match("GET", "/api/other") == "template"
    assert router.match("GET", "/api/a/b") == "regex"
    assert router.match("GET", "/elsewhere") is None


def test_duplicate_parameter_names_across_templates_still_combine() -> None:
    router = Router([("/a/{id}", None, 1), ("/b/{id}", None, 2), (r"re:^/c/(x)\1$", None, 3)])
    assert router.match("GET", "/b/7") == 2
    assert router.match("GET", "/c/xx") == 3
    assert router.match("GET", "/d/7") is None
