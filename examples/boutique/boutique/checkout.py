"""Checkout: turns a cart into a paid order, then announces it with ``OrderPlaced``.

Synchronous (the buyer waits): read the cart, price it in the buyer's currency, quote shipping,
charge the card. Asynchronous (after ``OrderPlaced``): ship, empty the cart, send the mail.
"""

from __future__ import annotations

import asyncio
import re
import uuid

from archipel import Conflict, InvalidArgument, Service, rpc

from . import money
from .cart import Cart, check_user_id
from .catalog import Catalog
from .currency import Currency
from .payment import Payment
from .shipping import Shipping, check_address
from .types import Address, CartItem, CreditCard, OrderItem, OrderPlaced, OrderResult, Product

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")


class EmptyCart(Conflict):
    """Checkout of an empty cart."""


def check_email(email: str) -> str:
    if len(email) > 254 or not _EMAIL.match(email):
        raise InvalidArgument(f"{email!r} is not an email address")
    return email


class Checkout(Service):
    cart: Cart
    catalog: Catalog
    currency: Currency
    shipping: Shipping
    payment: Payment

    @rpc
    async def place_order(
        self, user_id: str, user_currency: str, address: Address, email: str, card: CreditCard
    ) -> OrderResult:
        check_user_id(user_id)
        check_email(email)
        check_address(address)
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
        transaction_id = await self.payment.charge(total, card)
        order_id = uuid.uuid4().hex[:12]
        await self.emit(
            OrderPlaced(order_id, user_id, email, items, shipping_cost, total, address, transaction_id)
        )
        return OrderResult(order_id, transaction_id, items, shipping_cost, total, address, email)

    async def _price(self, lines: list[CartItem], user_currency: str) -> list[OrderItem]:
        products: list[Product] = await asyncio.gather(
            *(self.catalog.get_product(i.product_id) for i in lines)
        )
        prices = await asyncio.gather(*(self.currency.convert(p.price_usd, user_currency) for p in products))
        return [
            OrderItem(p.id, p.name, line.quantity, price)
            for p, line, price in zip(products, lines, prices, strict=True)
        ]
