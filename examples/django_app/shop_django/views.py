"""Plain Django views; the only LLM-specific code reads ``request.llm`` in :func:`search`."""

from __future__ import annotations

import json
from dataclasses import asdict

from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from llm_middleware import LLMResult

from .catalog import search_products
from .forms import SearchForm, TicketForm
from .intents import SearchIntent
from .tickets import store


def search_intent(llm: LLMResult | None) -> SearchIntent | None:
    """The intent behind ``q``, or ``None`` when the LLM was late, failed or ``q`` is absent."""
    intent = llm.intent if llm is not None else None
    return intent if isinstance(intent, SearchIntent) else None


@require_GET
def search(request: HttpRequest) -> JsonResponse:
    form = SearchForm(request.GET)
    if not form.is_valid():
        return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    category = form.cleaned_data["category"]
    color = form.cleaned_data["color"]
    max_price = form.cleaned_data["max_price"]
    # Explicit query parameters win; the intent only fills in what the shopper did not give.
    llm: LLMResult | None = getattr(request, "llm", None)  # set by the middleware on /search
    intent = search_intent(llm)
    if intent is not None:
        category = category if category is not None else intent.category
        color = color if color is not None else intent.color
        max_price = max_price if max_price is not None else intent.max_price

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
    try:
        payload = json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return JsonResponse({"errors": {"__all__": [{"message": "invalid JSON"}]}}, status=400)
    form = TicketForm(payload if isinstance(payload, dict) else {})
    if not form.is_valid():
        return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    ticket = store.add(**form.cleaned_data)
    return JsonResponse(asdict(ticket), status=201)


@require_GET
def ticket_detail(request: HttpRequest, ticket_id: int) -> JsonResponse:
    ticket = store.get(ticket_id)
    if ticket is None:
        raise Http404("no such ticket")
    return JsonResponse(asdict(ticket))
