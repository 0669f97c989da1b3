"""Other projects' own test suites, bare and with every app wrapped by llm_middleware.

Downloads each project's sdist (tests included) at the version installed in this venv, pinned
below, into a cache outside the repo (``~/.cache/llm-middleware-compat``, or
``$LLM_COMPAT_CACHE``), runs its tests once bare and once per wrapped mode (see ``wrap.py``),
and prints every test that passed bare but failed wrapped. Exit status 1 when there is one
that is not in ``EXPLAINED``.

    python bench/compat/run.py                       # starlette + flask, every mode (CI)
    python bench/compat/run.py --suites django,fastapi --modes refuse,hang,garbage,mask

Tests that fail bare (a missing optional dependency, say) are counted, never judged.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("LLM_COMPAT_CACHE", Path.home() / ".cache" / "llm-middleware-compat"))
PINS = {"starlette": "1.10.0", "flask": "3.1.3", "django": "5.2.19", "fastapi": "0.165.0"}
MODES = ["refuse", "hang", "garbage", "mask"]
# Django's request-handling labels.
DJANGO_LABELS = [
    "requests_tests", "handlers", "middleware", "middleware_exceptions", "csrf_tests",
    "test_client", "test_client_regress", "file_uploads", "view_tests", "httpwrappers",
    "responses", "urlpatterns", "urlpatterns_reverse", "conditional_processing", "decorators",
    "asgi", "wsgi", "generic_views",
]  # fmt: skip
# Tests that may pass bare and fail wrapped, each with the reason (suite, mode, test id regex).
EXPLAINED: list[tuple[str, str, str, str]] = [
    (
        "fastapi", "*", r"test_dump_json_fast_path::test_(default|explicit)_response_class",
        "patches json.dumps process-wide (starlette.responses.json is the json module) and "
        "counts calls during the request: our enrichment serialises the response it reads",
    ),
]  # fmt: skip


@dataclass
class Run:
    outcomes: dict[str, str]  # test id -> passed | failed | skipped
    seconds: float


# Test-only dependencies of a suite that this project's dev extra does not bring.
SUITE_DEPS = {
    "starlette": ["httpx2", "python-multipart"],
    "fastapi": ["httpx2", "python-multipart", "dirty-equals", "inline-snapshot", "pytest-timeout"],
}


def ensure_deps(project: str) -> None:
    missing = [d for d in SUITE_DEPS.get(project, []) if not _installed(d)]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def version_of(project: str) -> str:
    """The pin, unless another version is installed: a suite is run against its own code."""
    installed = metadata.version(project)
    if installed != PINS[project]:
        print(f"note: {project} {installed} is installed (pin {PINS[project]}): using its tests")
    return installed


def sdist(project: str) -> Path:
    version = version_of(project)
    ensure_deps(project)
    target = CACHE / f"{project}-{version}"
    if (target / ".extracted").exists():
        return target
    downloads = CACHE / "sdists"
    downloads.mkdir(parents=True, exist_ok=True)
    name = f"{project}=={version}"
    archives = [
        p for p in downloads.glob("*.tar.gz") if p.name.lower().startswith(f"{project}-{version}")
    ]
    if not archives:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "-q", "-d", str(downloads), name],
            check=True,
        )  # fmt: skip
        archives = [
            p
            for p in downloads.glob("*.tar.gz")
            if p.name.lower().startswith(f"{project}-{version}")
        ]
    with tarfile.open(archives[0]) as tar:
        root = tar.getnames()[0].split("/")[0]
        tar.extractall(CACHE, filter="data")
    (CACHE / root).rename(target) if (CACHE / root) != target else None
    (target / ".extracted").touch()
    return target


def _env(mode: str, *, site: bool) -> dict[str, str]:
    paths = [str(HERE / "site")] if site else []
    paths.append(str(HERE))
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    stats = str(CACHE / "wrapped.txt")
    return {**os.environ, "LLM_COMPAT_MODE": mode, "PYTHONPATH": os.pathsep.join(paths),
            "PYTHONDONTWRITEBYTECODE": "1", "LLM_COMPAT_STATS": stats}  # fmt: skip


def run_pytest(project: str, mode: str, extra: list[str]) -> Run:
    root = sdist(project)
    report = CACHE / f"{project}-{mode}.xml"
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "wrap", "-p", "no:cacheprovider", "-q",
         "--no-header", "-rN", "--continue-on-collection-errors",
         f"--junitxml={report}", *extra],
        cwd=root, env=_env(mode, site=False), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    return Run(_junit(report), time.monotonic() - started)


def _junit(path: Path) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    if not path.exists():
        return outcomes
    for case in ET.parse(path).iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            outcomes[test_id] = "failed"
        elif "skipped" in kinds:
            outcomes[test_id] = "skipped"
        else:
            outcomes[test_id] = "passed"
    return outcomes


# "test_x (module.Class.test_x) ... ok", the verdict on the next line after a docstring.
_DJANGO_LINE = re.compile(
    r"^(\w+) \(([\w.]+)\)(?:\n(?!\w+ \()[^\n]*?|[^\n]*?) \.\.\. "
    r"(ok|FAIL|ERROR|skipped|expected failure|unexpected success)",
    re.M,
)
_VERDICT = {"ok": "passed", "FAIL": "failed", "ERROR": "failed", "unexpected success": "failed"}


def run_django(mode: str, extra: list[str]) -> Run:
    root = sdist("django")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "runtests.py", "--parallel", "1", "-v", "2", *DJANGO_LABELS, *extra],
        cwd=root / "tests", env=_env(mode, site=True), capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    (CACHE / f"django-{mode}.log").write_text(proc.stderr)
    outcomes: dict[str, str] = {}
    for name, where, verdict in _DJANGO_LINE.findall(proc.stderr):
        outcomes[f"{where}::{name}"] = _VERDICT.get(verdict, "skipped")
    return Run(outcomes, time.monotonic() - started)


def run_suite(project: str, mode: str) -> Run:
    if project == "django":
        return run_django(mode, [])
    extra = {
        "starlette": ["tests"],
        "flask": ["tests"],
        "fastapi": _fastapi_paths(),
    }[project]
    return run_pytest(project, mode, extra)


# FastAPI's telemetry tests' conftests need OpenTelemetry, logfire and sentry: left out.
_FASTAPI_LEFT_OUT = {
    "tests/test_telemetry", "tests/benchmarks", "tests/memory_benchmarks",
    "tests/test_tutorial/test_opentelemetry",
}  # fmt: skip


def _fastapi_paths() -> list[str]:
    """Named one by one: pytest loads the conftest of every test* directory under an argument."""
    root = sdist("fastapi")
    paths: list[str] = []
    for top in sorted((root / "tests").iterdir()):
        rel = f"tests/{top.name}"
        if rel in _FASTAPI_LEFT_OUT or not top.name.startswith("test"):
            continue
        if any(left.startswith(rel + "/") for left in _FASTAPI_LEFT_OUT):
            inner = [f"{rel}/{p.name}" for p in sorted(top.iterdir()) if p.name.startswith("test")]
            paths += [p for p in inner if p not in _FASTAPI_LEFT_OUT]
        else:
            paths.append(rel)
    return paths


def explained(project: str, mode: str, test_id: str) -> str | None:
    for suite, where, pattern, reason in EXPLAINED:
        if suite == project and where in (mode, "*") and re.search(pattern, test_id):
            return reason
    return None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suites", default="starlette,flask")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    regressions = 0
    for project in args.suites.split(","):
        bare = run_suite(project, "bare")
        passed = {t for t, o in bare.outcomes.items() if o == "passed"}
        version = metadata.version(project)
        print(f"{project} {version}: bare {len(passed)} passed of {len(bare.outcomes)} "
              f"({bare.seconds:.0f} s)", flush=True)  # fmt: skip
        if not passed:
            print(f"  {project}: nothing passed bare: the suite could not run", flush=True)
            regressions += 1
            continue
        for mode in args.modes.split(","):
            (CACHE / "wrapped.txt").unlink(missing_ok=True)
            run = run_suite(project, mode)
            stats = CACHE / "wrapped.txt"
            wrapped = sum(int(n) for n in stats.read_text().split()) if stats.exists() else 0
            broken = sorted(t for t in passed if run.outcomes.get(t, "failed") == "failed")
            new = [t for t in broken if explained(project, mode, t) is None]
            print(f"  {mode:8} {len(broken)} pass bare / fail wrapped ({len(new)} unexplained), "
                  f"{wrapped} requests through the middleware, {run.seconds:.0f} s",
                  flush=True)  # fmt: skip
            if not wrapped:
                print("    REGRESSION: no request went through the middleware", flush=True)
                regressions += 1
            for test_id in broken:
                reason = explained(project, mode, test_id)
                print(f"    {'explained' if reason else 'REGRESSION'}: {test_id}"
                      + (f"  ({reason})" if reason else ""), flush=True)  # fmt: skip
            regressions += len(new)
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
