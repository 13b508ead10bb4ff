"""Checkout: turns a cart into a paid order, then announces it with ``OrderPlaced``.

Synchronous (the buyer waits): read the cart, price it in the buyer's currency, quote shipping,
charge the card. Asynchronous (after ``OrderPlaced``): ship, empty the cart, send the mail.

The order id comes from the caller (the storefront makes one per checkout form) and is the
payment's idempotency key: the same checkout submitted twice is charged and announced once.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import secrets
import time
from urllib.parse import quote

import msgspec

from archipel import Conflict, InvalidArgument, NotFound, Service, collection, on, rpc

from . import money
from .cart import Cart, check_user_id
from .catalog import Catalog
from .currency import Currency
from .locks import KeyedLock
from .payment import Payment
from .shipping import Shipping, check_address
from .types import (
    EMAIL_PATTERN,
    MAX_EMAIL,
    Address,
    CartItem,
    CreditCard,
    CurrencyCode,
    Email,
    Order,
    OrderId,
    OrderItem,
    OrderPlaced,
    OrderShipped,
    Product,
    UserId,
    check_order_id,
)

_EMAIL = re.compile(EMAIL_PATTERN)
MAX_LISTED = 100


class EmptyCart(Conflict):
    """Checkout of an empty cart."""


def new_order_id() -> str:
    """A fresh order id: 16 lower-case hex digits (64 random bits)."""
    return secrets.token_hex(8)


def check_email(email: str) -> str:
    if len(email) > MAX_EMAIL or not _EMAIL.fullmatch(email):
        raise InvalidArgument(f"{email!r} is not an email address")
    return email


def user_prefix(user_id: str) -> str:
    # Percent-encoded, so no user id's prefix is another's ("a/" must not find user "a/b").
    return quote(user_id, safe="") + "/"


def history_key(user_id: str, order_id: str) -> str:
    """Sorts a user's orders by when they were placed (nanoseconds, zero-padded)."""
    return f"{user_prefix(user_id)}{time.time_ns():020d}-{order_id}"


class Checkout(Service, emits=[OrderPlaced]):
    cart: Cart
    catalog: Catalog
    currency: Currency
    shipping: Shipping
    payment: Payment

    orders = collection("orders", Order)  # key: order id
    # "{user id, percent-encoded}/{placed at, ns, zero-padded}-{order id}" -> order id: a user's
    # orders in the order they were placed.
    orders_by_user = collection("orders_by_user", str)

    def __init__(self) -> None:
        self._submitting = KeyedLock()

    @rpc
    async def place_order(
        self,
        order_id: OrderId,
        user_id: UserId,
        user_currency: CurrencyCode,
        address: Address,
        email: Email,
        card: CreditCard,
    ) -> Order:
        """Charge the cart under ``order_id`` and announce the order; the order again if it is paid."""
        check_order_id(order_id)
        check_user_id(user_id)
        check_email(email)
        check_address(address)
        # A double-clicked checkout: the second waits for the first, then finds its order.
        async with self._submitting.hold(order_id):
            placed = await self.orders.get(order_id)
            if placed is not None:
                return self._resubmitted(placed, user_id)
            return await self._place(order_id, user_id, user_currency, address, email, card)

    @rpc(idempotent=True)
    async def get_order(self, order_id: OrderId) -> Order:
        check_order_id(order_id)
        order = await self.orders.get(order_id)
        if order is None:
            raise NotFound(f"order {order_id} not found")
        return order

    @rpc(idempotent=True)
    async def list_orders(self, user_id: UserId, limit: int = 20) -> list[Order]:
        """The user's orders, newest first."""
        check_user_id(user_id)
        keys = await self.orders_by_user.items(
            prefix=user_prefix(user_id), limit=max(0, min(limit, MAX_LISTED)), reverse=True
        )
        found = [await self.orders.get(order_id) for _, order_id in keys]
        return [order for order in found if order is not None]

    @on(OrderShipped)
    async def mark_shipped(self, event: OrderShipped) -> None:
        order = await self.orders.get(event.order_id)
        if order is not None:
            shipped = msgspec.structs.replace(order, status="shipped", tracking_id=event.tracking_id)
            await self.orders.put(order.order_id, shipped)

    async def _place(
        self, order_id: str, user_id: str, user_currency: str, address: Address, email: str, card: CreditCard
    ) -> Order:
        cart = await self.cart.get_cart(user_id)
        if not cart.items:
            raise EmptyCart("your cart is empty: add a product before checking out")
        items, shipping_usd = await asyncio.gather(
            self._price(cart.items, user_currency), self.shipping.get_quote(address, cart.items)
        )
        shipping_cost = await self.currency.convert(shipping_usd, user_currency)
        total = money.total(
            [*(money.multiply(i.unit_price, i.quantity) for i in items), shipping_cost], user_currency
        )
        # No "pending" row is written before the charge: this call is one unit of work, so a row
        # written here would commit with the paid one or not at all. The order id covers the gap
        # instead: a crash after the charge loses this call's writes, and the checkout submitted
        # again gets the same transaction from payment and records the order then.
        transaction_id = await self.payment.charge(total, card, idempotency_key=order_id)
        now = datetime.datetime.now(datetime.UTC)
        order = Order(
            order_id, user_id, "paid", transaction_id, items, shipping_cost, total, address, email,
            now.isoformat(timespec="seconds"),
        )  # fmt: skip
        # The order, its place in the user's history and OrderPlaced commit together.
        await self.orders.put(order_id, order)
        await self.orders_by_user.put(history_key(user_id, order_id), order_id)
        await self.emit(
            OrderPlaced(order_id, user_id, email, items, shipping_cost, total, address, transaction_id)
        )
        return order

    @staticmethod
    def _resubmitted(order: Order, user_id: str) -> Order:
        if order.user_id != user_id:
            raise Conflict(f"order_id {order.order_id} is already used by another order")
        return order

    async def _price(self, lines: list[CartItem], user_currency: str) -> list[OrderItem]:
        products: list[Product] = await asyncio.gather(
            *(self.catalog.get_product(i.product_id) for i in lines)
        )
        # One hop to currency in microservices: the gathered calls travel as one convert_all.
        prices = await asyncio.gather(*(self.currency.convert(p.price_usd, user_currency) for p in products))
        return [
            OrderItem(p.id, p.name, line.quantity, price)
            for p, line, price in zip(products, lines, prices, strict=True)
        ]
