"""End to end against the real local model: SmolLM2-135M behind llama.cpp's OpenAI-compatible
server on loopback, started once per session. A 135M model answers fast and often oddly:
assert structure, budget and fallback, never exact values."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from apps import build_starlette
from llm_middleware.demo import free_port, local_llm_server
from servers import serve_asgi_thread

pytestmark = pytest.mark.slow

HAVE_LOCAL = importlib.util.find_spec("llama_cpp") is not None
if not HAVE_LOCAL:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the local-model tests: install the [local] extra")
    pytest.skip("the [local] extra is not installed", allow_module_level=True)

BUDGET_MS = 8000
OWN_SLACK_MS = 5.0  # what the middleware itself may add past the budget on an idle machine


class LagProbe:
    """Measures scheduler delay while a test runs: a thread asks to sleep 5 ms again and again
    and records how late it wakes. On a loaded machine every deadline fires that late too, so
    a timing assertion allows the budget + our own slack + a multiple of the worst lag seen."""

    def __init__(self) -> None:
        self.worst_ms = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            time.sleep(0.005)
            late = (time.perf_counter() - started) * 1000 - 5.0
            self.worst_ms = max(self.worst_ms, late)

    def __enter__(self) -> LagProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def slack_ms(self) -> float:
        return OWN_SLACK_MS + 3 * self.worst_ms


QUERIES = ["red shoes under $100", "a yellow rain jacket", "black trail shoes", "cheap red hat"]
SCHEMA = "schemas.SearchIntent"


class RecordingProxy:
    """A loopback HTTP proxy in front of the model server that keeps every request body, so a
    test can prove what the model server received."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.bodies: list[bytes] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                proxy.bodies.append(body)
                upstream = httpx.post(
                    proxy.target + self.path, content=body,
                    headers={"content-type": "application/json"}, timeout=120,
                )  # fmt: skip
                self.send_response(upstream.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> RecordingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="session")
def local_llm() -> Iterator[str]:
    with local_llm_server() as url:
        yield url


def _config(url: str, **rule: Any) -> dict[str, Any]:
    return {
        "providers": [{"kind": "openai", "base_url": url, "model": "local",
                       "dialect": "json_object", "max_tokens": 96, "max_retries": 0}],
        "rules": [
            {"path": "/search", "budget_ms": BUDGET_MS,
             "interceptors": [{"type": "intent", "schema": SCHEMA, "source": "query:q"}]},
            {"path": "/article", "budget_ms": BUDGET_MS,
             "interceptors": [{"type": "enrichment", "schema": "schemas.Summary",
                               "source": "json:/body", "into": "json:/summary"}]},
            {"path": "/pii-echo", "budget_ms": BUDGET_MS,
             "interceptors": [{"type": "pii_masking"},
                              {"type": "intent", "schema": SCHEMA, "source": "json:/message"}]},
        ],
    }  # fmt: skip


def test_intent_on_real_model_is_valid_or_recorded_within_budget(local_llm: str) -> None:
    from schemas import SearchIntent

    # Reference in the same test: how long the model itself takes for one answer now (a
    # machine whose cores are saturated by other work can push it past the budget).
    started = time.monotonic()
    httpx.post(
        local_llm.rstrip("/") + "/chat/completions",
        json={"model": "local", "max_tokens": 96,
              "messages": [{"role": "user", "content": QUERIES[0]}]},
        timeout=120,
    )  # fmt: skip
    direct_ms = (time.monotonic() - started) * 1000
    with LagProbe() as lag, serve_asgi_thread(build_starlette(_config(local_llm))) as base:
        results = [httpx.get(base + "/search", params={"q": q}, timeout=60).json() for q in QUERIES]
    for data in results:
        outcome = data["outcomes"]["intent"]
        assert outcome in {"ok", "invalid", "timeout"}, data
        if outcome == "ok":
            SearchIntent.model_validate(data["intent"])
        assert data["added_ms"] <= BUDGET_MS + lag.slack_ms, (data["added_ms"], lag.worst_ms)
    # An answer is required only when the model runs near its idle speed here and now (a short
    # direct request: 0.2-0.5 s idle on 2 cores). The middleware's prompt is several times
    # longer, so a direct answer of 2.9 s under two CPU burners still left all four requests
    # past the budget: half the budget was no safe reference.
    if direct_ms < BUDGET_MS / 8:
        assert any(d["outcomes"]["intent"] == "ok" for d in results), (direct_ms, results)


def test_pii_never_reaches_the_model_server(local_llm: str) -> None:
    email, phone = "jane.doe@example.com", "+1 415 555 0132"
    message = f"I want red shoes, write to {email} or call {phone}"
    with RecordingProxy(local_llm.removesuffix("/v1")) as proxy:
        config = _config(proxy.url + "/v1")
        with serve_asgi_thread(build_starlette(config)) as base:
            data = httpx.post(base + "/pii-echo", json={"message": message}, timeout=60).json()
    assert data["outcomes"]["pii_masking"] == "ok"
    assert data["outcomes"]["intent"] in {"ok", "invalid", "timeout"}
    assert proxy.bodies, "the model server got no request"
    received = b"\n".join(proxy.bodies).decode()
    assert "<EMAIL_ADDRESS_1>" in received
    assert email not in received and "jane.doe" not in received
    assert not re.search(r"415\D*555\D*0132", received)


def _ignore_sigint() -> None:  # runs in the child before exec
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _children(pid: int) -> set[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
            found |= {int(c) for c in fh.read().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"  # a zombie has ended
    except OSError:
        return False


def _start_demo(local_llm: str) -> tuple[subprocess.Popen[str], int, list[str]]:
    # Started with SIGINT ignored, as a shell does for a background job: the demo installs its
    # own handlers, so how the test runner was launched does not matter.
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_middleware.cli", "demo", "--provider-url", local_llm,
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_ignore_sigint,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    # The demo says ready after its warm-up answer, which may take up to warm_up()'s own
    # 120 s on a saturated machine (seen: 120.2 s with two CPU burners and the suite), then
    # the app's start: the window must be wider than that.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "Ctrl-C" in line or not line:
            break
    return proc, port, lines


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_demo_serves_then_stops_without_leaving_a_child(
    local_llm: str, how: signal.Signals
) -> None:
    proc, port, lines = _start_demo(local_llm)
    children: set[int] = set()
    try:
        assert any("demo app ready" in line for line in lines), lines
        response = httpx.get(f"http://127.0.0.1:{port}/search", params={"q": "red shoes"},
                             timeout=60)  # fmt: skip
        data = response.json()
        assert response.status_code == 200
        assert set(data) >= {"intent", "outcomes", "results"}
        assert data["outcomes"]["intent"] in {"ok", "cached", "invalid", "timeout"}
        assert all(isinstance(item["id"], int) for item in data["results"])
        children = _children(proc.pid)
        assert children, "the demo runs its app in a child process"
        proc.send_signal(how)
        code = proc.wait(timeout=30)
        assert code == (0 if how != signal.SIGKILL else -signal.SIGKILL)
        deadline = time.monotonic() + 15
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [c for c in children if _alive(c)], "a child outlived the demo"
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_enrichment_on_an_article_with_the_real_model(local_llm: str) -> None:
    from apps import ARTICLE_BODY
    from schemas import Summary

    with LagProbe() as lag, serve_asgi_thread(build_starlette(_config(local_llm))) as base:
        started = time.monotonic()
        response = httpx.get(base + "/article", params={"kind": "json"}, timeout=60)
        wall_ms = (time.monotonic() - started) * 1000
    doc = response.json()
    assert response.status_code == 200
    assert doc["body"] == ARTICLE_BODY and doc["id"] == 7
    assert int(response.headers["content-length"]) == len(response.content)
    if "summary" in doc:  # the model made it in time with a valid object
        Summary.model_validate(doc["summary"])
    assert wall_ms <= BUDGET_MS + 500 + lag.slack_ms, (wall_ms, lag.worst_ms)
