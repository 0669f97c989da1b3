"""What the LLM extracts from free-text searches; the view reads it from ``flask.g.llm``."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SearchIntent(BaseModel):
    """A shopper's product search."""

    category: str | None = Field(default=None, description="kind of product, e.g. shoes, hat")
    color: str | None = Field(default=None, description="colour, e.g. red")
    max_price: float | None = Field(default=None, ge=0, description="highest price in dollars")
