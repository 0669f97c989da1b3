"""What the LLM produces, as pydantic models: the intent behind a free-text search (request
side) and the summary added to an article (response side)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SearchIntent(BaseModel):
    """A shopper's product search."""

    # Rewritten into the query string the legacy view reads: the same limits as its parameters,
    # so that a value the view would refuse is an invalid intent and is never written.
    category: str | None = Field(default=None, max_length=50, description="the kind of product")
    color: str | None = Field(default=None, max_length=50, description="the colour asked for")
    max_price: float | None = Field(default=None, ge=0, description="highest price in dollars")


class Summary(BaseModel):
    """A short summary of an article and its topics."""

    summary: str = Field(min_length=1, max_length=500, description="one or two sentences")
    tags: list[str] = Field(max_length=8, description="a few lower-case topic words")
