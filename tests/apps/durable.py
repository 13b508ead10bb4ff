"""An app whose state lives in collections, for the durability tests: orders and the mails sent
for them. ``DURABLE_HOLD`` names a file: while it exists, the mailer holds events in flight."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from archipel import App, Event, Service, Struct, collection, on, rpc


class Order(Struct):
    order_id: str
    units: int


class Placed(Event, topic="orders/placed"):
    order_id: str
    units: int


class Orders(Service, emits=[Placed]):
    orders = collection("orders", Order)

    # Public: the durability tests drive this app as a monolith too, which serves no internal method.
    @rpc(public=True)
    async def place(self, order_id: str, units: int) -> None:
        await self.orders.put(order_id, Order(order_id, units))
        await self.emit(Placed(order_id=order_id, units=units))  # commits with the order

    @rpc(public=True)
    async def count(self) -> int:
        return await self.orders.count()


class Mailer(Service):
    mails = collection("mails", int)  # order id -> times a mail was sent for it

    @on(Placed)
    async def send(self, event: Placed) -> None:
        hold = os.environ.get("DURABLE_HOLD")
        if hold:
            _touch(hold + ".reached")
            while _exists(hold):
                await asyncio.sleep(0.02)  # polling the test's file: the event stays in flight
        await self.mails.put(event.order_id, (await self.mails.get(event.order_id) or 0) + 1)

    @rpc(public=True)
    async def sent(self, order_id: str) -> int:
        return await self.mails.get(order_id) or 0


def _touch(path: str) -> None:
    Path(path).touch()


def _exists(path: str) -> bool:
    return Path(path).exists()


app = App("durable", [Orders, Mailer])
