"""A small app used by the core tests: an RPC chain, an event with two subscribers, failures."""

from __future__ import annotations

import asyncio
import os

from archipel import App, Event, InvalidArgument, NotFound, Service, Struct, on, rpc


class Money(Struct):
    currency: str
    units: int
    nanos: int = 0


class Item(Struct):
    sku: str
    quantity: int


class OrderPlaced(Event, topic="orders/placed"):
    order_id: str
    email: str
    total: Money


RATES = {"EUR": 1, "USD": 2}


class Currency(Service):
    @rpc(idempotent=True)
    async def convert(self, amount: Money, to: str) -> Money:
        """Convert an amount with a fixed rate table."""
        if to not in RATES or amount.currency not in RATES:
            raise NotFound(f"unknown currency {to if to not in RATES else amount.currency!r}")
        return Money(to, amount.units * RATES[to] // RATES[amount.currency])


class Checkout(Service, emits=[OrderPlaced]):
    """The app's edge: its methods are public; the others' are internal."""

    currency: Currency

    def __init__(self) -> None:
        self.placed = 0

    @rpc(public=True)
    async def place_order(self, user_id: str, email: str, items: list[Item], to: str = "EUR") -> str:
        if not items:
            raise InvalidArgument("an order needs at least one item")
        total = await self.currency.convert(Money("EUR", sum(10 * i.quantity for i in items)), to=to)
        self.placed += 1
        order_id = f"o-{user_id}-{self.placed}"
        await self.emit(OrderPlaced(order_id=order_id, email=email, total=total))
        return order_id

    @rpc(public=True)
    async def boom(self, message: str) -> None:
        raise ValueError(message)

    @rpc(public=True)
    async def nap(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "rested"

    @rpc(public=True)
    async def echo(self, value: dict[str, int]) -> dict[str, int]:
        return value


class Email(Service):
    def __init__(self) -> None:
        self.sent: dict[str, str] = {}
        self.failures: dict[str, int] = {}
        self.gate: asyncio.Event | None = None  # tests hold the handler here (monolith)
        self.mailbox_fixed = False  # tests "repair" broken addresses before a replay (monolith)

    @on(OrderPlaced)
    async def confirm(self, event: OrderPlaced) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self._mailbox_fixed() and event.email.startswith("broken"):
            event = OrderPlaced(event.order_id, event.email.replace("broken", "fixed", 1), event.total)
        # "flaky": fails twice, then works; "broken": refused for good; "down": never works.
        if event.email.startswith(("flaky", "broken")):
            seen = self.failures.get(event.order_id, 0)
            self.failures[event.order_id] = seen + 1
            if event.email.startswith("broken"):
                raise InvalidArgument(f"no mailbox {event.email}")  # permanent: dead letter at once
            if seen < 2:
                raise ConnectionError(f"mail server refused {event.email}")  # transient: tried again
        if event.email.startswith("down"):
            raise ConnectionError(f"mail server down for {event.email}")  # transient until the window ends
        self.sent[event.order_id] = f"{event.email}: {event.total.units} {event.total.currency}"

    def _mailbox_fixed(self) -> bool:
        # In another process the test cannot set the attribute: a file it touches says the same.
        marker = os.environ.get("SHOP_MAILBOX_FIXED")
        return self.mailbox_fixed or (marker is not None and os.path.exists(marker))

    @rpc
    async def sent_mail(self, order_id: str) -> str | None:
        return self.sent.get(order_id)


class Ledger(Service):
    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.times: dict[str, int] = {}  # how often each order's event was handled

    @on(OrderPlaced)
    async def record(self, event: OrderPlaced) -> None:
        self.totals[event.order_id] = event.total.units
        self.times[event.order_id] = self.times.get(event.order_id, 0) + 1

    @rpc
    async def total_of(self, order_id: str) -> int | None:
        return self.totals.get(order_id)

    @rpc
    async def times_recorded(self, order_id: str) -> int:
        return self.times.get(order_id, 0)

    @rpc
    async def correct(self, order_id: str, units: int) -> None:
        """An internal method with an effect: only the operator may call it (nobody depends on
        Ledger), which the authentication tests check by its absence."""
        self.totals[order_id] = units


app = App("testshop", [Currency, Checkout, Email, Ledger])
