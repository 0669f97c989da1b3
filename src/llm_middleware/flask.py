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
        # g.llm is looked up only when a view asks for it: no per-request hook, so an
        # unmatched request pays nothing here.
        base = app.app_ctx_globals_class
        app.app_ctx_globals_class = type(  # type: ignore[assignment]
            f"LLM{base.__name__}", (_LLMGlobals, base), {}
        )

    def close(self, app: flask.Flask) -> None:
        """Close the LLM clients (a shutdown hook, tests)."""
        middleware = app.extensions.get(EXTENSION_KEY)
        if middleware is not None:
            middleware.engine.close()


def _current_result() -> Any:
    return flask.request.environ.get(RESULT_KEY) if flask.has_request_context() else None


class _LLMGlobals:
    """Mixed into the app's ``g`` class: ``g.llm`` / ``g.get("llm")`` / ``"llm" in g`` read the
    request's result unless a view set ``g.llm`` itself (``None`` on unmatched paths)."""

    __dict__: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        if name == "llm":
            return _current_result()
        return super().__getattr__(name)  # type: ignore[misc]

    def get(self, name: str, default: Any = None) -> Any:
        if name == "llm" and "llm" not in self.__dict__:
            return _current_result()
        return super().get(name, default)  # type: ignore[misc]

    def __contains__(self, item: object) -> bool:
        return item == "llm" or super().__contains__(item)  # type: ignore[misc]
