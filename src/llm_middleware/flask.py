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
        app.before_request(_expose_result)

    def close(self, app: flask.Flask) -> None:
        """Close the LLM clients (a shutdown hook, tests)."""
        middleware = app.extensions.get(EXTENSION_KEY)
        if middleware is not None:
            middleware.engine.close()


def _expose_result() -> None:
    flask.g.llm = flask.request.environ.get(RESULT_KEY)
