"""Plain Flask views. The LLM-specific code only reads ``flask.g.llm`` to report it: the views
would work the same without it."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, abort, g, request
from pydantic import ValidationError

from llm_middleware import LLMResult

from .articles import ARTICLES
from .catalog import search_products
from .intents import SearchIntent
from .tickets import TicketIn, store

logger = logging.getLogger(__name__)
bp = Blueprint("shop", __name__)


@bp.get("/search")
def search() -> dict[str, Any]:
    # The legacy search: it filters by the query parameters and nothing else. The middleware
    # writes the intent behind q into category, color and max_price when the shopper left
    # them out, so the parameters it gave win and a late or failed LLM changes nothing.
    category = request.args.get("category")
    color = request.args.get("color")
    max_price = request.args.get("max_price", type=float)
    llm: LLMResult | None = g.get("llm")  # set by the middleware; None on paths without a rule
    intent = llm.intent_as(SearchIntent) if llm is not None else None
    return {
        "q": request.args.get("q"),
        "filters": {"category": category, "color": color, "max_price": max_price},
        "llm": None
        if llm is None
        else {
            "intent": intent.model_dump() if intent is not None else None,
            "outcomes": llm.outcomes,
            "added_ms": round(llm.added_ms, 1),
        },
        "results": [
            product.model_dump()
            for product in search_products(category=category, color=color, max_price=max_price)
        ],
    }


@bp.post("/tickets")
def create_ticket() -> tuple[dict[str, Any], int]:
    # The middleware masked personal data in the body before it got here: what is stored
    # and logged holds <EMAIL_ADDRESS_1>, <PHONE_NUMBER_1>... instead.
    try:
        data = TicketIn.model_validate(request.get_json())
    except ValidationError as exc:
        return {
            "errors": exc.errors(include_url=False, include_context=False, include_input=False)
        }, 400
    ticket = store.add(data)
    logger.info("ticket %d from %s: %s", ticket.id, ticket.email, ticket.message)
    llm: LLMResult | None = g.get("llm")
    return {**ticket.model_dump(), "masked": llm.pii if llm is not None else {}}, 201


@bp.get("/tickets/<int:ticket_id>")
def get_ticket(ticket_id: int) -> dict[str, Any]:
    ticket = store.get(ticket_id)
    if ticket is None:
        abort(404)
    return ticket.model_dump()


@bp.get("/articles/<int:article_id>")
def get_article(article_id: int) -> dict[str, Any]:
    # Knows nothing of the summary: the middleware adds it to the JSON this returns.
    article = ARTICLES.get(article_id)
    if article is None:
        abort(404)
    return article.model_dump()
