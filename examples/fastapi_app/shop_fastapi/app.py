"""The FastAPI shop. Run it from the repository root::

    .venv/bin/python -m uvicorn --app-dir examples/fastapi_app shop_fastapi.app:app --port 8001

The views are plain FastAPI. Everything LLM-specific is the configuration in :func:`llm_config`
and the ``llm_result`` dependency, which reads what the middleware left on ``request.state.llm``
(only to report it: the views would work without it).
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from pydantic import BaseModel

from llm_middleware import Config, LLMMiddleware, LLMResult, load_config

from .articles import ARTICLES, Article
from .catalog import Product, search_products
from .intents import SearchIntent, Summary
from .tickets import Ticket, TicketIn, TicketStore, store

logger = logging.getLogger(__name__)
router = APIRouter()


def llm_result(request: Request) -> LLMResult | None:
    """What the middleware found for this request (``None`` on paths without a rule)."""
    result: LLMResult | None = getattr(request.state, "llm", None)
    return result


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


class TicketCreated(Ticket):
    masked: dict[str, int]  # entity type -> how many values the middleware masked


@router.get("/search")
async def search(
    llm: Annotated[LLMResult | None, Depends(llm_result)],
    q: str | None = None,
    category: str | None = None,
    color: str | None = None,
    max_price: Annotated[float | None, Query(ge=0)] = None,
) -> SearchResults:
    # The legacy search: it filters by the query parameters and nothing else. The middleware
    # writes the intent behind q into category, color and max_price when the shopper left
    # them out, so the parameters it gave win and a late or failed LLM changes nothing.
    return SearchResults(
        q=q,
        filters=Filters(category=category, color=color, max_price=max_price),
        llm=None
        if llm is None
        else LLMReport(
            intent=llm.intent_as(SearchIntent),
            outcomes=llm.outcomes,
            added_ms=round(llm.added_ms, 1),
        ),
        results=search_products(category=category, color=color, max_price=max_price),
    )


@router.post("/tickets", status_code=status.HTTP_201_CREATED)
async def create_ticket(
    data: TicketIn,
    tickets: Annotated[TicketStore, Depends(ticket_store)],
    llm: Annotated[LLMResult | None, Depends(llm_result)],
) -> TicketCreated:
    # The middleware masked personal data in the body before it got here: what is stored
    # and logged holds <EMAIL_ADDRESS_1>, <PHONE_NUMBER_1>... instead.
    ticket = tickets.add(data)
    logger.info("ticket %d from %s: %s", ticket.id, ticket.email, ticket.message)
    return TicketCreated(**ticket.model_dump(), masked=llm.pii if llm is not None else {})


@router.get("/tickets/{ticket_id}")
async def get_ticket(
    ticket_id: int, tickets: Annotated[TicketStore, Depends(ticket_store)]
) -> Ticket:
    ticket = tickets.get(ticket_id)
    if ticket is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such ticket")
    return ticket


@router.get("/articles/{article_id}")
async def get_article(article_id: int) -> Article:
    # Knows nothing of the summary: the middleware adds it to the JSON this returns.
    article = ARTICLES.get(article_id)
    if article is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such article")
    return article


def llm_config() -> Config:
    """The middleware's configuration, from the environment (read at call time). Validated
    here, so that a broken rule stops start-up rather than the first request."""
    budget_ms = int(os.environ.get("LLM_BUDGET_MS", "6000"))
    return load_config(
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
                "budget_ms": budget_ms,
                "interceptors": [
                    {
                        "type": "intent",
                        "schema": SearchIntent,
                        "source": "query:q",
                        # Intent fields -> the query parameters the legacy view reads.
                        "rewrite": {
                            "category": "query:category",
                            "color": "query:color",
                            "max_price": "query:max_price",
                        },
                    }
                ],
            },
            {
                # No LLM here: masking only, before the view sees the body.
                "path": "/tickets",
                "methods": ["POST"],
                "interceptors": [{"type": "pii_masking", "mask_for": ["providers", "app"]}],
            },
            {
                "path": "/articles/{id:int}",
                "methods": ["GET"],
                "budget_ms": budget_ms,
                "interceptors": [
                    {
                        "type": "enrichment",
                        "schema": Summary,
                        "source": "json:/body",
                        "into": "json:/summary",
                    }
                ],
            },
        ],
    )


def create_app() -> FastAPI:
    app = FastAPI(title="Shop (llm_middleware example)")
    app.include_router(router)
    app.add_middleware(LLMMiddleware, config=llm_config())
    return app


app = create_app()
