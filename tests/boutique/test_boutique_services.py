"""Service classes called directly, with dependencies set by hand (no runtime, no network)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
from boutique import money
from boutique.cart import MAX_QUANTITY, Cart, MemoryStore
from boutique.catalog import Catalog
from boutique.checkout import Checkout, EmptyCart
from boutique.currency import Currency
from boutique.email import Email
from boutique.payment import Payment, PaymentDeclined
from boutique.recommendation import Recommendation
from boutique.shipping import Shipping
from boutique.types import Address, CartItem, CreditCard, Money, OrderItem, OrderPlaced, OrderShipped

from archipel import Event, InvalidArgument, NotFound

REDIS_URL = os.environ.get("BOUTIQUE_TEST_REDIS", "redis://127.0.0.1:6379/0")
ADDRESS = Address("1 Quay Street", "Harbourtown", "", "Norway", "0150")
GOOD_CARD = CreditCard("4111 1111 1111 1111", "123", 12, 2099)
LUHN_FAIL = CreditCard("4111 1111 1111 1112", "123", 12, 2099)


class Emitted:
    """Stands in for the event bus: collects what a service emits."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)


async def test_catalog() -> None:
    catalog = Catalog()
    products = await catalog.list_products()
    assert len(products) >= 10
    assert (await catalog.get_product("desk-lamp")).price_usd == Money("USD", 89, 0)
    with pytest.raises(NotFound):
        await catalog.get_product("../etc/passwd")
    assert [p.id for p in await catalog.search("brass")] == ["desk-lamp"]


async def test_currency_service() -> None:
    currency = Currency()
    assert {"USD", "EUR", "JPY", "GBP", "CAD", "CHF"} <= set(await currency.supported_currencies())
    assert await currency.convert(Money("EUR", 1), "JPY") == Money("JPY", 161, 200_000_000)


async def test_recommendation_service_uses_the_catalog() -> None:
    recommendation = Recommendation()
    recommendation.catalog = Catalog()
    picks = await recommendation.list_recommendations("u1", ["camp-mug", "beanie"])
    assert len(picks) == 4 and not {"camp-mug", "beanie"} & set(picks)
    assert picks == await recommendation.list_recommendations("u1", ["beanie", "camp-mug"])


@pytest.fixture(params=["memory", "redis"])
async def cart(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cart]:
    service = Cart()
    prefix = f"boutique-test-{uuid.uuid4().hex[:8]}:"
    if request.param == "redis":
        monkeypatch.setenv("BOUTIQUE_REDIS_URL", REDIS_URL)
        monkeypatch.setenv("BOUTIQUE_REDIS_PREFIX", prefix)
    else:
        monkeypatch.delenv("BOUTIQUE_REDIS_URL", raising=False)
    await service.start()
    assert isinstance(service.store, MemoryStore) == (request.param == "memory")
    try:
        yield service
    finally:
        if request.param == "redis":
            import redis.asyncio as redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
        await service.stop()


async def test_cart_add_get_empty(cart: Cart) -> None:
    assert (await cart.get_cart("u1")).items == []
    await cart.add_item("u1", "camp-mug", 2)
    await cart.add_item("u1", "beanie", 1)
    contents = await cart.add_item("u1", "camp-mug", 3)
    assert sorted(contents.items, key=lambda i: i.product_id) == [
        CartItem("beanie", 1),
        CartItem("camp-mug", 5),
    ]
    assert (await cart.get_cart("u2")).items == []
    await cart.empty_cart("u1")
    assert (await cart.get_cart("u1")).items == []


async def test_cart_refuses_bad_quantities_and_keeps_the_line(cart: Cart) -> None:
    for bad in (0, -1, MAX_QUANTITY + 1, 10**9):
        with pytest.raises(InvalidArgument, match="between 1 and 100"):
            await cart.add_item("u1", "camp-mug", bad)
    await cart.add_item("u1", "camp-mug", 60)
    with pytest.raises(InvalidArgument, match="at most 100 of one product"):
        await cart.add_item("u1", "camp-mug", 41)
    await cart.add_item("u1", "camp-mug", 40)
    assert (await cart.get_cart("u1")).items == [CartItem("camp-mug", 100)]
    with pytest.raises(InvalidArgument, match="user_id"):
        await cart.get_cart("")


async def test_cart_empties_once_per_order(cart: Cart) -> None:
    await cart.add_item("u1", "camp-mug", 1)
    event = placed_order("order-1", "u1")
    await cart.empty_after_order(event)
    assert (await cart.get_cart("u1")).items == []
    await cart.add_item("u1", "beanie", 2)  # filled again after the order
    await cart.empty_after_order(event)  # the same event, delivered again
    assert (await cart.get_cart("u1")).items == [CartItem("beanie", 2)]


def placed_order(order_id: str, user_id: str) -> OrderPlaced:
    item = OrderItem("camp-mug", "Enamel Camp Mug", 1, Money("USD", 12, 500_000_000))
    return OrderPlaced(
        order_id, user_id, "a@example.com", [item], Money("USD", 4, 990_000_000),
        Money("USD", 17, 490_000_000), ADDRESS, "tx-1",
    )  # fmt: skip


def wired_checkout() -> tuple[Checkout, Cart, Payment, Emitted]:
    checkout, cart, payment, emitted = Checkout(), Cart(), Payment(), Emitted()
    checkout.cart, checkout.catalog, checkout.currency = cart, Catalog(), Currency()
    checkout.shipping, checkout.payment = Shipping(), payment
    checkout._archipel_emit = emitted
    return checkout, cart, payment, emitted


async def test_checkout_prices_in_the_user_currency_and_emits() -> None:
    checkout, cart, payment, emitted = wired_checkout()
    await cart.add_item("u1", "camp-mug", 2)  # 2 x 12.50 USD
    await cart.add_item("u1", "notebook", 1)  # 7.25 USD
    result = await checkout.place_order("u1", "EUR", ADDRESS, "a@example.com", GOOD_CARD)
    currency = Currency()
    mug = await currency.convert(Money("USD", 12, 500_000_000), "EUR")
    book = await currency.convert(Money("USD", 7, 250_000_000), "EUR")
    ship = await currency.convert(Money("USD", 6, 490_000_000), "EUR")  # 4.99 + 2 x 0.75
    assert result.shipping_cost == ship
    assert result.total == money.total([money.multiply(mug, 2), book, ship], "EUR")
    assert [(i.product_id, i.quantity, i.unit_price) for i in result.items] == [
        ("camp-mug", 2, mug),
        ("notebook", 1, book),
    ]
    [event] = emitted.events
    assert isinstance(event, OrderPlaced)
    assert (event.order_id, event.user_id, event.total) == (result.order_id, "u1", result.total)
    [charge] = await payment.list_transactions()
    assert (charge.transaction_id, charge.amount, charge.last_four) == (
        result.transaction_id,
        result.total,
        "1111",
    )
    # The cart is emptied by the OrderPlaced handler, not by checkout itself.
    assert len((await cart.get_cart("u1")).items) == 2


async def test_checkout_declined_card_charges_nothing_and_keeps_the_cart() -> None:
    checkout, cart, payment, emitted = wired_checkout()
    await cart.add_item("u1", "camp-mug", 1)
    with pytest.raises(PaymentDeclined, match="card declined: number fails the Luhn check"):
        await checkout.place_order("u1", "USD", ADDRESS, "a@example.com", LUHN_FAIL)
    assert emitted.events == []
    assert await payment.list_transactions() == []
    assert (await cart.get_cart("u1")).items == [CartItem("camp-mug", 1)]


async def test_checkout_refuses_empty_carts_and_bad_input() -> None:
    checkout, cart, _, emitted = wired_checkout()
    with pytest.raises(EmptyCart, match="cart is empty"):
        await checkout.place_order("u1", "USD", ADDRESS, "a@example.com", GOOD_CARD)
    await cart.add_item("u1", "camp-mug", 1)
    with pytest.raises(InvalidArgument, match="not an email"):
        await checkout.place_order("u1", "USD", ADDRESS, "nobody", GOOD_CARD)
    with pytest.raises(InvalidArgument, match="unsupported currency"):
        await checkout.place_order("u1", "XXX", ADDRESS, "a@example.com", GOOD_CARD)
    with pytest.raises(InvalidArgument, match="address is missing"):
        await checkout.place_order("u1", "USD", Address("", "", "", "", ""), "a@example.com", GOOD_CARD)
    assert emitted.events == []


async def test_checkout_of_an_unknown_product_is_not_found() -> None:
    checkout, cart, payment, emitted = wired_checkout()
    await cart.add_item("u1", "discontinued", 1)
    with pytest.raises(NotFound):
        await checkout.place_order("u1", "USD", ADDRESS, "a@example.com", GOOD_CARD)
    assert emitted.events == [] and await payment.list_transactions() == []


async def test_payment_refuses_non_positive_amounts() -> None:
    with pytest.raises(InvalidArgument):
        await Payment().charge(Money("USD", 0), GOOD_CARD)
    with pytest.raises(InvalidArgument):
        await Payment().charge(Money("USD", -1), GOOD_CARD)


async def test_shipping_ships_placed_orders_once_per_order() -> None:
    shipping, emitted = Shipping(), Emitted()
    shipping._archipel_emit = emitted
    event = placed_order("order-7", "u1")
    await shipping.ship_placed_order(event)
    await shipping.ship_placed_order(event)  # redelivered
    first, second = emitted.events
    assert isinstance(first, OrderShipped) and first == second
    assert first.tracking_id == await shipping.ship_order(ADDRESS, [CartItem("camp-mug", 1)], "order-7")


async def test_email_sends_each_mail_once() -> None:
    email = Email()
    event = placed_order("order-9", "u1")
    await email.send_confirmation(event)
    await email.send_confirmation(event)  # redelivered
    await email.send_shipping_notice(OrderShipped("order-9", "a@example.com", "AB-12345-678901234", ADDRESS))
    sent = await email.list_sent(order_id="order-9")
    assert [m.kind for m in sent] == ["shipped", "confirmation"]
    confirmation = sent[1]
    assert confirmation.to == "a@example.com" and "order-9" in confirmation.subject
    assert "1 \u00d7 Enamel Camp Mug at $12.50" in confirmation.body
    assert "Total charged:  $17.49" in confirmation.body
    assert "AB-12345-678901234" in sent[0].body
    assert await email.list_sent(to="other@example.com") == []
    assert len(await email.list_sent(limit=1)) == 1
