"""Wraps every app another project's test suite builds with llm_middleware (imported at
interpreter start-up through ``sitecustomize``, so it also reaches Django's own runner).

``LLM_COMPAT_MODE`` chooses the run: ``bare`` (nothing patched), ``refuse`` / ``hang`` /
``garbage`` (the provider refuses connections, accepts and never answers, answers garbage;
rule: catch-all ``re:.*``, 30 ms, intent from the body and from ``query:q``, enrichment of JSON
responses) or ``mask`` (masking only). Where apps are wrapped:

* ASGI (Starlette, FastAPI): the app every ``TestClient`` drives (HTTP and websockets);
* WSGI (Flask): ``Flask.__call__``, the entry every WSGI server and werkzeug's client use;
* Django: the outermost layer of every handler's middleware chain (sync and async).
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from pydantic import BaseModel

MODE = os.environ.get("LLM_COMPAT_MODE", "bare")
BUDGET_MS = 30


class CompatIntent(BaseModel):
    topic: str | None = None


class CompatSummary(BaseModel):
    summary: str = ""


def _serve(handler: Any) -> int:
    """A loopback provider in a daemon thread: ``handler(conn)`` per connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    port: int = listener.getsockname()[1]
    return port


def _hang(conn: socket.socket) -> None:
    with conn:
        while conn.recv(65536):  # read the request, never answer
            pass


def _garbage(conn: socket.socket) -> None:
    with conn:
        conn.recv(65536)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n"
            b"{not json at all!!"
        )


def _refusing_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()  # nothing listens there any more: connections are refused
    return port


def config() -> dict[str, Any]:
    if MODE == "mask":
        return {"rules": [{"path": "re:.*", "budget_ms": BUDGET_MS,
                           "interceptors": [{"type": "pii_masking"}]}]}  # fmt: skip
    port = {"refuse": _refusing_port, "hang": lambda: _serve(_hang),
            "garbage": lambda: _serve(_garbage)}[MODE]()  # fmt: skip
    return {
        "providers": [{"kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                       "model": "compat", "max_retries": 0}],
        "rules": [{
            "path": "re:.*",
            "budget_ms": BUDGET_MS,
            "interceptors": [
                {"type": "intent", "name": "intent_body", "schema": CompatIntent,
                 "source": "body"},
                {"type": "intent", "name": "intent_q", "schema": CompatIntent,
                 "source": "query:q"},
                {"type": "enrichment", "schema": CompatSummary, "source": "json:",
                 "into": "json:/llm_summary"},
            ],
        }],
    }  # fmt: skip


_engine: Any = None
WRAPPED = {"requests": 0}  # calls that went through the middleware (proof the run was wrapped)
_lock = threading.Lock()


def engine() -> Any:
    """One engine for the process, built on first use (after the project's own imports)."""
    global _engine
    with _lock:
        if _engine is None:
            from llm_middleware.engine import Engine

            _engine = Engine(config())
        return _engine


def _patch_starlette() -> None:
    try:
        from starlette import testclient
    except ImportError:
        return
    from llm_middleware import LLMMiddleware

    original = testclient._TestClientTransport.__init__

    def init(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
        middleware = LLMMiddleware(app, engine())

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            WRAPPED["requests"] += 1
            await middleware(scope, receive, send)

        original(self, counted, *args, **kwargs)

    testclient._TestClientTransport.__init__ = init  # type: ignore[method-assign]


def _patch_flask() -> None:
    try:
        import flask
    except ImportError:
        return
    from llm_middleware.wsgi import LLMWSGIMiddleware

    def call(self: Any, environ: Any, start_response: Any) -> Any:
        WRAPPED["requests"] += 1
        return LLMWSGIMiddleware(self.wsgi_app, engine())(environ, start_response)

    flask.Flask.__call__ = call  # type: ignore[method-assign]


def _patch_django() -> None:
    try:
        from django.core.handlers import base
    except ImportError:
        return
    from llm_middleware import django as llm_django

    llm_django.engine_from_settings._build = engine  # type: ignore[method-assign]
    original = base.BaseHandler.load_middleware

    def load_middleware(self: Any, is_async: bool = False) -> None:
        original(self, is_async)
        middleware = llm_django.LLMMiddleware(self._middleware_chain)
        if is_async:

            async def counted_async(request: Any) -> Any:
                WRAPPED["requests"] += 1
                return await middleware(request)

            self._middleware_chain = counted_async
        else:

            def counted(request: Any) -> Any:
                WRAPPED["requests"] += 1
                return middleware(request)

            self._middleware_chain = counted

    base.BaseHandler.load_middleware = load_middleware  # type: ignore[method-assign]


def _report() -> None:
    path = os.environ.get("LLM_COMPAT_STATS")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{WRAPPED['requests']}\n")


def install() -> None:
    if MODE == "bare":
        return
    import atexit

    atexit.register(_report)
    _patch_starlette()
    _patch_flask()
    _patch_django()


def pytest_configure(config: Any) -> None:
    """Loaded as a pytest plugin (``-p wrap``) for the pytest-based suites."""
    from _pytest import monkeypatch

    if not hasattr(monkeypatch, "notset"):  # Flask 3.1's conftest predates pytest 9: bare too
        monkeypatch.notset = monkeypatch.NOTSET  # type: ignore[attr-defined]
    if MODE != "bare":
        import warnings

        with warnings.catch_warnings():  # starlette.testclient warns at import without httpx2
            warnings.simplefilter("ignore")
            install()
