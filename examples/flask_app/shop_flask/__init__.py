"""A small Flask shop that gains LLM features through configuration only. Run it from the
repository root::

    .venv/bin/flask --app examples/flask_app/shop_flask run --port 8002
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from llm_middleware.flask import LLMMiddleware

from .config import llm_middleware_settings

llm = LLMMiddleware()


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(LLM_MIDDLEWARE=llm_middleware_settings())
    if test_config is not None:
        app.config.from_mapping(test_config)

    llm.init_app(app)  # reads app.config["LLM_MIDDLEWARE"]; views read flask.g.llm

    from . import views

    app.register_blueprint(views.bp)
    return app
