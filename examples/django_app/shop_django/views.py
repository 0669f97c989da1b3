"""Plain Django views. The LLM-specific code only reads ``request.llm`` to report it: the views
would work the same without it."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from llm_middleware import LLMResult

from .articles import ARTICLES
from .catalog import search_products
from .forms import SearchForm, TicketForm
from .intents import SearchIntent
from .tickets import store

logger = logging.getLogger(__name__)


@require_GET
def search(request: HttpRequest) -> JsonResponse:
    # The legacy search: it filters by request.GET and nothing else. The middleware writes the
    # intent behind q into category, color and max_price when the shopper left them out, so
    # the parameters it gave win and a late or failed LLM changes nothing.
    form = SearchForm(request.GET)
    if not form.is_valid():
        return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    category = form.cleaned_data["category"]
    color = form.cleaned_data["color"]
    max_price = form.cleaned_data["max_price"]
    llm: LLMResult | None = getattr(request, "llm", None)  # set by the middleware on /search
    intent = llm.intent_as(SearchIntent) if llm is not None else None
    return JsonResponse(
        {
            "q": form.cleaned_data["q"],
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
    )


@csrf_exempt  # a JSON API for non-browser clients: there is no CSRF cookie to check
@require_POST
def create_ticket(request: HttpRequest) -> JsonResponse:
    # The middleware masked personal data in the body before it got here: what is stored
    # and logged holds <EMAIL_ADDRESS_1>, <PHONE_NUMBER_1>... instead.
    try:
        payload = json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return JsonResponse({"errors": {"__all__": [{"message": "invalid JSON"}]}}, status=400)
    form = TicketForm(payload if isinstance(payload, dict) else {})
    if not form.is_valid():
        return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    ticket = store.add(**form.cleaned_data)
    logger.info("ticket %d from %s: %s", ticket.id, ticket.email, ticket.message)
    llm: LLMResult | None = getattr(request, "llm", None)
    masked = llm.pii if llm is not None else {}
    return JsonResponse({**asdict(ticket), "masked": masked}, status=201)


@require_GET
def ticket_detail(request: HttpRequest, ticket_id: int) -> JsonResponse:
    ticket = store.get(ticket_id)
    if ticket is None:
        raise Http404("no such ticket")
    return JsonResponse(asdict(ticket))


@require_GET
def article_detail(request: HttpRequest, article_id: int) -> JsonResponse:
    # Knows nothing of the summary: the middleware adds it to the JSON this returns.
    article = ARTICLES.get(article_id)
    if article is None:
        raise Http404("no such article")
    return JsonResponse(article.model_dump())
