"""Flask extension: ``LLMMiddleware(app)`` or ``ext.init_app(app)``; views read ``flask.g.llm``.

Configured by ``app.config["LLM_MIDDLEWARE"]`` (or a ``config`` argument); wraps
``app.wsgi_app`` with :class:`~llm_middleware.wsgi.LLMWSGIMiddleware`.
"""

from __future__ import annotations

from typing import Any

try:
    import flask
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "llm_middleware.flask needs Flask: pip install 'llm-middleware[flask]'"
    ) from exc

from .wsgi import RESULT_KEY, LLMWSGIMiddleware

EXTENSION_KEY = "llm_middleware"


class LLMMiddleware:
    def __init__(self, app: flask.Flask | None = None, config: Any = None) -> None:
        self.config = config
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            return  # initialised twice: keep the first
        config = self.config if self.config is not None else app.config.get("LLM_MIDDLEWARE")
        middleware = LLMWSGIMiddleware(app.wsgi_app, config)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = middleware
        # g.llm is looked up only when a view asks for it and the app has not set its own:
        # no per-request hook (an unmatched request pays nothing), and ``"llm" in g`` /
        # ``if "llm" not in g: g.llm = ...`` behave as for any name the app owns.
        base = app.app_ctx_globals_class
        app.app_ctx_globals_class = type(  # type: ignore[assignment]
            f"LLM{base.__name__}",
            (_LLMGlobals, base),
            {"_llm_result_attr": middleware.engine.config.result_attr},
        )

    def close(self, app: flask.Flask) -> None:
        """Close the LLM clients (a shutdown hook, tests)."""
        middleware = app.extensions.get(EXTENSION_KEY)
        if middleware is not None:
            middleware.engine.close()


def _current_result() -> Any:
    return flask.request.environ.get(RESULT_KEY) if flask.has_request_context() else None


class _LLMGlobals:
    """Mixed into the app's ``g`` class. ``g.llm`` falls back to the request's result (``None``
    on an unmatched path) only while nothing is stored under that name: ``__getattr__`` runs
    only then, so a value the app sets wins, and ``"llm" in g`` sees only what was really set
    (``if "llm" not in g: g.llm = ...`` works on every path)."""

    __dict__: dict[str, Any]
    _llm_result_attr = "llm"

    def __getattr__(self, name: str) -> Any:
        if name == self._llm_result_attr:
            return _current_result()
        return super().__getattr__(name)  # type: ignore[misc]

    def get(self, name: str, default: Any = None) -> Any:
        if name == self._llm_result_attr and name not in self.__dict__:
            result = _current_result()
            return default if result is None else result
        return super().get(name, default)  # type: ignore[misc]
