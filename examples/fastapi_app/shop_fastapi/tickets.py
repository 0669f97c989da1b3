"""Support tickets, stored in memory (a stand-in for the app's database)."""

from __future__ import annotations

import itertools
import threading

from pydantic import BaseModel, Field


class TicketIn(BaseModel):
    subject: str = Field(min_length=1, max_length=200)
    message: str = Field(min_length=1, max_length=10_000)
    # PII masking on POST /tickets hands the view "<EMAIL_ADDRESS_1>" instead of the address:
    # a check that insists on an address would refuse every ticket, so both are accepted.
    email: str = Field(max_length=254, pattern=r"^(?:[^@\s]+@[^@\s]+|<EMAIL_ADDRESS_\d+>)$")


class Ticket(TicketIn):
    id: int


class TicketStore:
    def __init__(self) -> None:
        self._tickets: dict[int, Ticket] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, data: TicketIn) -> Ticket:
        with self._lock:
            ticket = Ticket(id=next(self._ids), **data.model_dump())
            self._tickets[ticket.id] = ticket
        return ticket

    def get(self, ticket_id: int) -> Ticket | None:
        return self._tickets.get(ticket_id)


store = TicketStore()
