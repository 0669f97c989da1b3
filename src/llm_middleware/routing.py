"""Compile path rules once; match (method, path) with one dict lookup and at most one regex."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

_CONVERTERS = {"str": "[^/]+", "path": ".+", "int": r"\d+"}
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(path|int|str))?\}")


def compile_path(pattern: str) -> str | re.Pattern[str]:
    """Return the exact path (a ``str``) or a compiled regex for a rule's ``path``.

    exact ``/search``; template ``/articles/{id}``, ``/files/{rest:path}``; glob ``/api/*``
    (``*`` = one segment, ``**`` = any depth); regex ``re:^/api/v\\d+/search$``.
    """
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as exc:
            raise ValueError(f"invalid regex {pattern[3:]!r}: {exc}") from None
    if not pattern.startswith("/"):
        raise ValueError(f"path {pattern!r} must start with '/' (or 're:' for a regex)")
    if "{" not in pattern and "*" not in pattern:
        if "}" in pattern:
            raise ValueError(f"path {pattern!r} has an unbalanced '}}'")
        return pattern
    out: list[str] = []
    pos = 0
    for match in _PARAM_RE.finditer(pattern):
        out.append(_glob_to_regex(pattern[pos : match.start()]))
        name, conv = match.group(1), match.group(2)
        out.append(f"(?P<{name}>{_CONVERTERS[conv or 'str']})")
        pos = match.end()
    tail = pattern[pos:]
    out.append(_glob_to_regex(tail))
    if "{" in tail or "}" in tail:
        raise ValueError(f"path {pattern!r} has a malformed '{{param}}'")
    try:
        return re.compile("^" + "".join(out) + "$")
    except re.error as exc:  # duplicate group names, for instance
        raise ValueError(f"path {pattern!r}: {exc}") from None


def _glob_to_regex(text: str) -> str:
    if "{" in text or "}" in text:
        raise ValueError(f"malformed '{{param}}' near {text!r}")
    parts = re.split(r"(\*\*|\*)", text)
    return "".join(
        ".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part) for part in parts
    )


class Router(Generic[T]):
    """First matching rule wins, in declaration order, across exact and pattern rules."""

    __slots__ = ("_exact", "_patterns", "_any")

    def __init__(self, entries: Sequence[tuple[str, frozenset[str] | None, T]]) -> None:
        self._exact: dict[str, list[tuple[int, frozenset[str] | None, T]]] = {}
        self._patterns: list[tuple[int, re.Pattern[str], frozenset[str] | None, T]] = []
        for index, (pattern, methods, target) in enumerate(entries):
            compiled = compile_path(pattern)
            if isinstance(compiled, str):
                self._exact.setdefault(compiled, []).append((index, methods, target))
            else:
                self._patterns.append((index, compiled, methods, target))
        # One combined regex rejects an unmatched path in a single C-level call.
        self._any = _combine([regex for _, regex, _, _ in self._patterns])

    def matcher(self) -> Callable[[str, str], T | None]:
        """The fastest ``match`` for these rules: without pattern rules, one dict lookup."""
        if self._patterns:
            return self.match
        exact_get = self._exact.get

        def match_exact(method: str, path: str) -> T | None:
            entries = exact_get(path)
            if entries is None:
                return None
            for _, methods, target in entries:
                if methods is None or method in methods:
                    return target
            return None

        return match_exact

    def prefilter(self) -> tuple[frozenset[str], Callable[[str], object] | None]:
        """For an adapter's hot path, without a call into Python: ``(paths, search)``. A
        path not in ``paths`` for which ``search`` is None or returns None matches no rule,
        whatever the method; any other path needs ``match``."""
        if not self._patterns:
            return frozenset(self._exact), None
        if self._any is not None:
            return frozenset(self._exact), self._any.search
        return frozenset(self._exact), _ALWAYS.search  # patterns not combinable: always ask

    def match(self, method: str, path: str) -> T | None:
        best_index = 1 << 30
        best: T | None = None
        exact = self._exact.get(path)
        if exact is not None:
            for index, methods, target in exact:
                if methods is None or method in methods:
                    best_index, best = index, target
                    break
        if not self._patterns or (self._any is not None and self._any.search(path) is None):
            return best
        for index, regex, methods, target in self._patterns:
            if index > best_index:
                break
            if (methods is None or method in methods) and regex.search(path) is not None:
                return target
        return best


_ALWAYS = re.compile("")
_BACKREF_RE = re.compile(r"\\\d|\(\?P=")
_NAMED_GROUP_RE = re.compile(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>")


def _combine(patterns: list[re.Pattern[str]]) -> re.Pattern[str] | None:
    if not patterns or any(_BACKREF_RE.search(p.pattern) for p in patterns):
        return None
    joined = "|".join(f"(?:{_NAMED_GROUP_RE.sub('(', p.pattern)})" for p in patterns)
    try:
        return re.compile(joined)
    except re.error:
        return None
