"""Schemas used by the test apps (imported by dotted path in subprocess servers)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SearchIntent(BaseModel):
    """A product search."""

    category: str | None = Field(default=None, description="product category, e.g. shoes")
    color: str | None = Field(default=None, description="colour the user asked for")
    max_price: float | None = Field(default=None, description="highest price, a number")


class Summary(BaseModel):
    """A short summary of an article."""

    summary: str = Field(description="one sentence")
    tags: list[str] = Field(default_factory=list, description="up to three topic tags")
