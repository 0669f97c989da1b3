"""Support tickets, stored in memory (a stand-in for the app's database)."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Ticket:
    id: int
    subject: str
    message: str
    email: str


class TicketStore:
    def __init__(self) -> None:
        self._tickets: dict[int, Ticket] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, *, subject: str, message: str, email: str) -> Ticket:
        with self._lock:
            ticket = Ticket(next(self._ids), subject, message, email)
            self._tickets[ticket.id] = ticket
        return ticket

    def get(self, ticket_id: int) -> Ticket | None:
        return self._tickets.get(ticket_id)


store = TicketStore()
