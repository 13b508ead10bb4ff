"""Shipping: quotes in US dollars, and ships placed orders (``OrderPlaced`` -> ``OrderShipped``)."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated

from msgspec import Meta

from archipel import InvalidArgument, Service, on, rpc

from . import money
from .types import NOT_BLANK, Address, CartItem, Money, OrderPlaced, OrderShipped

BASE_FEE = money.from_decimal("USD", "4.99")
PER_EXTRA_ITEM = money.from_decimal("USD", "0.75")
FREE_FROM_ITEMS = 20
_NOT_BLANK = re.compile(NOT_BLANK)


def check_address(address: Address) -> Address:
    missing = [
        name
        for name in ("street_address", "city", "country", "zip_code")
        if not _NOT_BLANK.search(getattr(address, name))
    ]
    if missing:
        raise InvalidArgument(f"address is missing: {', '.join(missing)}")
    return address


def quote(items: list[CartItem]) -> Money:
    """$4.99 for the first item, $0.75 for each further one, free from 20 items."""
    count = sum(item.quantity for item in items)
    if count == 0 or count >= FREE_FROM_ITEMS:
        return money.zero("USD")
    return money.add(BASE_FEE, money.multiply(PER_EXTRA_ITEM, count - 1))


def tracking_id(address: Address, items: list[CartItem], order_id: str = "") -> str:
    """Same order, same tracking id: shipping an order twice yields one parcel number."""
    lines = ";".join(f"{i.product_id}x{i.quantity}" for i in sorted(items, key=lambda i: i.product_id))
    text = f"{order_id}|{address.street_address}|{address.zip_code}|{address.country}|{lines}"
    digits = hashlib.sha256(text.encode()).hexdigest().upper()
    return f"{digits[:2]}-{digits[2:7]}-{digits[7:16]}"


class Shipping(Service, emits=[OrderShipped]):
    @rpc(idempotent=True)
    async def get_quote(self, address: Address, items: list[CartItem]) -> Money:
        check_address(address)
        return quote(items)

    @rpc(idempotent=True)
    async def ship_order(
        self, address: Address, items: Annotated[list[CartItem], Meta(min_length=1)], order_id: str = ""
    ) -> str:
        check_address(address)
        if not items:
            raise InvalidArgument("nothing to ship")
        return tracking_id(address, items, order_id)

    @on(OrderPlaced)
    async def ship_placed_order(self, event: OrderPlaced) -> None:
        items = [CartItem(i.product_id, i.quantity) for i in event.items]
        tracking = await self.ship_order(event.address, items, event.order_id)
        # A redelivered OrderPlaced emits the same OrderShipped again; its handlers dedupe by order id.
        await self.emit(OrderShipped(event.order_id, event.email, tracking, event.address))
