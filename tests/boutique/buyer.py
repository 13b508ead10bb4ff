"""What a test buyer of the shop types in: an address, a card that passes every check, the
storefront's checkout form; and a poll for a handler's effect in another service's store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from boutique.types import Address, CreditCard

T = TypeVar("T")

ADDRESS = Address("1 Quay Street", "Harbourtown", "", "Norway", "0150")
GOOD_CARD = CreditCard("4111 1111 1111 1111", "123", 12, 2099)


def checkout_form(email: str) -> dict[str, str]:
    """The storefront's checkout form as a buyer fills it (without the order id it carries)."""
    return {
        "email": email,
        "street_address": "12 Harbour Lane",
        "zip_code": "PO1 3AX",
        "city": "Portsmouth",
        "state": "",
        "country": "United Kingdom",
        "card_number": "4111 1111 1111 1111",
        "card_month": "12",
        "card_year": "2099",
        "card_cvv": "123",
    }


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], within: float = 15.0) -> T:
    """Poll ``probe`` until ``done`` holds (state that no event announces, e.g. a handler's effect)."""
    async with asyncio.timeout(within):
        while not done(value := await probe()):  # state in another process: poll it
            await asyncio.sleep(0.02)
        return value
