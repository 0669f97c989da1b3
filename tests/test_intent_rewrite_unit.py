"""Query rewriting edits the raw query string: the client's pairs keep their exact bytes."""

from __future__ import annotations

from llm_middleware.exchange import Headers, RequestExchange
from llm_middleware.interceptors.intent import rewrite_request
from schemas import SearchIntent


def _exchange(query: str) -> RequestExchange:
    return RequestExchange("GET", "/s", query, Headers())


def test_untouched_pairs_keep_their_bytes() -> None:
    exchange = _exchange("name=caf%E9&flag&q=red+shoes")
    rewrite_request(exchange, SearchIntent(max_price=100.0), {"max_price": "query:max_price"},
                    overwrite=False)  # fmt: skip
    assert exchange.new_query_string == "name=caf%E9&flag&q=red+shoes&max_price=100"


def test_overwrite_replaces_only_the_named_pair() -> None:
    exchange = _exchange("max_price=5&flag")
    rewrite_request(exchange, SearchIntent(max_price=99.5), {"max_price": "query:max_price"},
                    overwrite=True)  # fmt: skip
    assert exchange.new_query_string == "flag&max_price=99.5"


def test_client_value_wins_without_overwrite() -> None:
    exchange = _exchange("max_price=5")
    rewrite_request(exchange, SearchIntent(max_price=99.5), {"max_price": "query:max_price"},
                    overwrite=False)  # fmt: skip
    assert exchange.new_query_string is None
