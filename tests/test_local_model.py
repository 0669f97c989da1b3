"""End to end against the real local model: SmolLM2-135M behind llama.cpp's OpenAI-compatible
server on loopback, started once per session. A 135M model answers fast and often oddly:
assert structure, budget and fallback, never exact values."""

from __future__ import annotations

import contextlib
import importlib.util
import json
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

    with serve_asgi_thread(build_starlette(_config(local_llm))) as base:
        results = [httpx.get(base + "/search", params={"q": q}, timeout=60).json() for q in QUERIES]
    for data in results:
        outcome = data["outcomes"]["intent"]
        assert outcome in {"ok", "invalid", "timeout"}, data
        if outcome == "ok":
            SearchIntent.model_validate(data["intent"])
        assert data["added_ms"] <= BUDGET_MS + 5
    assert any(d["outcomes"]["intent"] == "ok" for d in results), results


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


def test_demo_command_starts_serves_and_stops(local_llm: str) -> None:
    # The README's main command runs `llm-middleware demo`; here against the session's server
    # (--provider-url) so the test does not start a second model.
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_middleware.cli", "demo", "--provider-url", local_llm,
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl-C" in line or not line:
                break
        assert any("demo app ready" in line for line in lines), lines
        response = httpx.get(f"http://127.0.0.1:{port}/search", params={"q": "red shoes"},
                             timeout=60)  # fmt: skip
        data = response.json()
        assert response.status_code == 200
        assert data["outcomes"]["intent"] in {"ok", "invalid", "timeout"}
        assert all(isinstance(item["id"], int) for item in data["results"])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
    assert json.loads(json.dumps(data))  # the demo answered JSON


def test_enrichment_on_an_article_with_the_real_model(local_llm: str) -> None:
    from apps import ARTICLE_BODY
    from schemas import Summary

    with serve_asgi_thread(build_starlette(_config(local_llm))) as base:
        started = time.monotonic()
        response = httpx.get(base + "/article", params={"kind": "json"}, timeout=60)
        wall_ms = (time.monotonic() - started) * 1000
    doc = response.json()
    assert response.status_code == 200
    assert doc["body"] == ARTICLE_BODY and doc["id"] == 7
    assert int(response.headers["content-length"]) == len(response.content)
    if "summary" in doc:  # the model made it in time with a valid object
        Summary.model_validate(doc["summary"])
    assert wall_ms <= BUDGET_MS + 500
