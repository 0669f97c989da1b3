"""Articles, stored in memory (a stand-in for the app's CMS)."""

from __future__ import annotations

from pydantic import BaseModel


class Article(BaseModel):
    id: int
    title: str
    body: str


ARTICLES: dict[int, Article] = {
    article.id: article
    for article in (
        Article(
            id=1,
            title="Choosing running shoes",
            body="Running shoes should fit snugly at the heel and leave a thumb's width at the "
            "toe. Road runners need cushioning; trail runners need grip and a firmer sole. "
            "Replace them every 500 to 800 kilometres.",
        ),
        Article(
            id=2,
            title="Caring for leather",
            body="Brush leather shoes after wearing them, let them dry away from radiators and "
            "feed them with a neutral cream once a month. Cedar shoe trees keep their shape "
            "and draw out moisture.",
        ),
        Article(
            id=3,
            title="Dressing for rain",
            body="A rain jacket with taped seams keeps water out; pit zips let heat escape. "
            "Pair it with a hat that has a brim, and waterproof shoes or boots.",
        ),
    )
}
