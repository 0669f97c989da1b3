"""The legacy business logic: an in-memory catalog filtered by exact criteria."""

from __future__ import annotations

from pydantic import BaseModel


class Product(BaseModel):
    id: int
    name: str
    category: str
    color: str
    price: float


PRODUCTS: tuple[Product, ...] = (
    Product(id=1, name="Runner", category="shoes", color="red", price=89.0),
    Product(id=2, name="Trail Pro", category="shoes", color="black", price=129.0),
    Product(id=3, name="Court Classic", category="shoes", color="white", price=65.0),
    Product(id=4, name="Sprint", category="shoes", color="red", price=140.0),
    Product(id=5, name="Loafer", category="shoes", color="red", price=99.0),
    Product(id=6, name="Beanie", category="hat", color="red", price=19.0),
    Product(id=7, name="Sun Hat", category="hat", color="yellow", price=35.0),
    Product(id=8, name="Rain Jacket", category="jacket", color="yellow", price=149.0),
)


def _norm(word: str) -> str:
    return word.strip().lower().removesuffix("s")  # "Shoes" and "shoe" are the same category


def search_products(
    *, category: str | None = None, color: str | None = None, max_price: float | None = None
) -> list[Product]:
    return [
        product
        for product in PRODUCTS
        if (category is None or _norm(category) == _norm(product.category))
        and (color is None or color.strip().lower() == product.color)
        and (max_price is None or product.price <= max_price)
    ]
