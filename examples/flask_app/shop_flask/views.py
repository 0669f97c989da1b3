"""Plain Flask views; the only LLM-specific code reads ``flask.g.llm`` in :func:`search`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, g, request
from pydantic import ValidationError

from llm_middleware import LLMResult

from .catalog import search_products
from .intents import SearchIntent
from .tickets import TicketIn, store

bp = Blueprint("shop", __name__)


def search_intent(llm: LLMResult | None) -> SearchIntent | None:
    """The intent behind ``q``, or ``None`` when the LLM was late, failed or ``q`` is absent."""
    intent = llm.intent if llm is not None else None
    return intent if isinstance(intent, SearchIntent) else None


@bp.get("/search")
def search() -> dict[str, Any]:
    category = request.args.get("category")
    color = request.args.get("color")
    max_price = request.args.get("max_price", type=float)
    # Explicit query parameters win; the intent only fills in what the shopper did not give.
    llm: LLMResult | None = g.get("llm")  # set by the middleware; None on paths without a rule
    intent = search_intent(llm)
    if intent is not None:
        category = category if category is not None else intent.category
        color = color if color is not None else intent.color
        max_price = max_price if max_price is not None else intent.max_price

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
    try:
        data = TicketIn.model_validate(request.get_json())
    except ValidationError as exc:
        return {
            "errors": exc.errors(include_url=False, include_context=False, include_input=False)
        }, 400
    return store.add(data).model_dump(), 201


@bp.get("/tickets/<int:ticket_id>")
def get_ticket(ticket_id: int) -> dict[str, Any]:
    ticket = store.get(ticket_id)
    if ticket is None:
        abort(404)
    return ticket.model_dump()
