"""The FastAPI shop. Run it from the repository root::

    .venv/bin/python -m uvicorn --app-dir examples/fastapi_app shop_fastapi.app:app --port 8001

The views are plain FastAPI. The only LLM-specific code is the ``add_middleware`` call in
:func:`create_app` and the ``search_intent`` dependency, which reads what the middleware left
on ``request.state.llm``.
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from pydantic import BaseModel

from llm_middleware import LLMMiddleware, LLMResult

from .catalog import Product, search_products
from .intents import SearchIntent
from .tickets import Ticket, TicketIn, TicketStore, store

router = APIRouter()


def llm_result(request: Request) -> LLMResult | None:
    """What the middleware found for this request (``None`` on paths without a rule)."""
    result: LLMResult | None = getattr(request.state, "llm", None)
    return result


def search_intent(llm: Annotated[LLMResult | None, Depends(llm_result)]) -> SearchIntent | None:
    """The intent behind ``q``, or ``None`` when the LLM was late, failed or ``q`` is absent."""
    intent = llm.intent if llm is not None else None
    return intent if isinstance(intent, SearchIntent) else None


def ticket_store() -> TicketStore:
    return store


class Filters(BaseModel):
    category: str | None
    color: str | None
    max_price: float | None


class LLMReport(BaseModel):
    intent: SearchIntent | None
    outcomes: dict[str, str]
    added_ms: float


class SearchResults(BaseModel):
    q: str | None
    filters: Filters
    llm: LLMReport | None
    results: list[Product]


@router.get("/search")
async def search(
    llm: Annotated[LLMResult | None, Depends(llm_result)],
    intent: Annotated[SearchIntent | None, Depends(search_intent)],
    q: str | None = None,
    category: str | None = None,
    color: str | None = None,
    max_price: Annotated[float | None, Query(ge=0)] = None,
) -> SearchResults:
    # Explicit query parameters win; the intent only fills in what the shopper did not give.
    if intent is not None:
        category = category if category is not None else intent.category
        color = color if color is not None else intent.color
        max_price = max_price if max_price is not None else intent.max_price
    return SearchResults(
        q=q,
        filters=Filters(category=category, color=color, max_price=max_price),
        llm=None
        if llm is None
        else LLMReport(intent=intent, outcomes=llm.outcomes, added_ms=round(llm.added_ms, 1)),
        results=search_products(category=category, color=color, max_price=max_price),
    )


@router.post("/tickets", status_code=status.HTTP_201_CREATED)
async def create_ticket(
    data: TicketIn, tickets: Annotated[TicketStore, Depends(ticket_store)]
) -> Ticket:
    return tickets.add(data)


@router.get("/tickets/{ticket_id}")
async def get_ticket(
    ticket_id: int, tickets: Annotated[TicketStore, Depends(ticket_store)]
) -> Ticket:
    ticket = tickets.get(ticket_id)
    if ticket is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such ticket")
    return ticket


def create_app() -> FastAPI:
    """Build the app; the LLM provider comes from the environment (read at call time)."""
    app = FastAPI(title="Shop (llm_middleware example)")
    app.include_router(router)
    app.add_middleware(
        LLMMiddleware,
        providers=[
            {
                "kind": "openai",
                "base_url": os.environ.get("LLM_BASE_URL", "http://127.0.0.1:8080/v1"),
                "model": os.environ.get("LLM_MODEL", "local"),
                "dialect": os.environ.get("LLM_DIALECT", "json_object"),
                "api_key_env": "LLM_API_KEY",  # the variable's name; unset for a local server
            }
        ],
        rules=[
            {
                "path": "/search",
                "methods": ["GET"],
                "budget_ms": int(os.environ.get("LLM_BUDGET_MS", "6000")),
                "interceptors": [{"type": "intent", "schema": SearchIntent, "source": "query:q"}],
            },
            # POST /tickets has no rule yet: it passes through untouched.
        ],
    )
    return app


app = create_app()
