"""Service classes called directly, with dependencies set by hand (no runtime, no network).

Stateful services get a SQLite store in the test's folder, as the runtime would give them; with
no unit of work around these direct calls, each write commits at once.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TypeVar

import pytest
from boutique import money
from boutique.cart import MAX_QUANTITY, Cart, CollectionStore
from boutique.catalog import Catalog
from boutique.checkout import Checkout, EmptyCart, new_order_id
from boutique.currency import Currency
from boutique.email import Email
from boutique.payment import Payment, PaymentDeclined
from boutique.recommendation import Recommendation
from boutique.shipping import Shipping
from boutique.types import Address, CartItem, CreditCard, Money, OrderItem, OrderPlaced, OrderShipped

from archipel import Conflict, Event, InvalidArgument, NotFound, Service
from archipel._state import SqliteStore

REDIS_URL = os.environ.get("BOUTIQUE_TEST_REDIS", "redis://127.0.0.1:6379/0")
ADDRESS = Address("1 Quay Street", "Harbourtown", "", "Norway", "0150")
GOOD_CARD = CreditCard("4111 1111 1111 1111", "123", 12, 2099)
LUHN_FAIL = CreditCard("4111 1111 1111 1112", "123", 12, 2099)
S = TypeVar("S", bound=Service)


class Stores:
    """Opens a SQLite store per service in one folder and closes them all at the end."""

    def __init__(self, folder: Path, exits: AsyncExitStack) -> None:
        self._folder = folder
        self._exits = exits

    async def attach(self, service: S) -> S:
        name = type(service).__name__.lower()
        store = await self._exits.enter_async_context(SqliteStore(self._folder / f"{name}.sqlite3"))
        service._archipel_store = store  # what the runtime does before start()
        return service


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    async with AsyncExitStack() as exits:
        yield Stores(tmp_path, exits)


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


async def test_currency_converts_a_page_of_prices_in_one_call_and_bounds_it() -> None:
    currency = Currency()
    amounts = [Money("USD", 12, 500_000_000), Money("EUR", 1), Money("JPY", 300)]
    one_by_one = [await currency.convert(amount, "GBP") for amount in amounts]
    assert await currency.convert_all(amounts, "GBP") == one_by_one
    assert await currency.convert_all([], "GBP") == []
    with pytest.raises(InvalidArgument, match="at most 1000 amounts per call, not 1001"):
        await currency.convert_all([Money("EUR", 1)] * 1001, "GBP")
    with pytest.raises(InvalidArgument, match="unsupported currency 'XXX'"):
        await currency.convert_all([Money("EUR", 1), Money("XXX", 1)], "GBP")


async def test_recommendation_service_uses_the_catalog() -> None:
    recommendation = Recommendation()
    recommendation.catalog = Catalog()
    picks = await recommendation.list_recommendations("u1", ["camp-mug", "beanie"])
    assert len(picks) == 4 and not {"camp-mug", "beanie"} & set(picks)
    assert picks == await recommendation.list_recommendations("u1", ["beanie", "camp-mug"])


@pytest.fixture(params=["collection", "redis"])
async def cart(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, stores: Stores
) -> AsyncIterator[Cart]:
    service = await stores.attach(Cart())
    prefix = f"boutique-test-{uuid.uuid4().hex[:8]}:"
    if request.param == "redis":
        monkeypatch.setenv("BOUTIQUE_REDIS_URL", REDIS_URL)
        monkeypatch.setenv("BOUTIQUE_REDIS_PREFIX", prefix)
    else:
        monkeypatch.delenv("BOUTIQUE_REDIS_URL", raising=False)
    await service.start()
    assert isinstance(service.store, CollectionStore) == (request.param == "collection")
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
    await cart.empty_after_order(event)  # the same order again (a direct call skips the inbox)
    assert (await cart.get_cart("u1")).items == [CartItem("beanie", 2)]


async def test_an_order_announced_late_takes_out_only_what_it_bought(cart: Cart) -> None:
    # The buyer ordered one mug, then added a mug and a beanie before OrderPlaced reached the
    # cart (a busy consumer, a rollout): the order takes its one mug, the later adds stay.
    await cart.add_item("u1", "camp-mug", 1)
    event = placed_order("order-1", "u1")
    await cart.add_item("u1", "camp-mug", 1)
    await cart.add_item("u1", "beanie", 3)
    await cart.empty_after_order(event)
    assert await _lines(cart, "u1") == {"beanie": 3, "camp-mug": 1}
    await cart.empty_after_order(event)  # announced again: taken out once
    assert await _lines(cart, "u1") == {"beanie": 3, "camp-mug": 1}
    # A line already smaller than the order (the buyer lowered it) just goes.
    await cart.empty_after_order(placed_order("order-2", "u1", quantity=5))
    assert await _lines(cart, "u1") == {"beanie": 3}


async def _lines(cart: Cart, user_id: str) -> dict[str, int]:
    return {item.product_id: item.quantity for item in (await cart.get_cart(user_id)).items}


def placed_order(order_id: str, user_id: str, quantity: int = 1) -> OrderPlaced:
    item = OrderItem("camp-mug", "Enamel Camp Mug", quantity, Money("USD", 12, 500_000_000))
    return OrderPlaced(
        order_id, user_id, "a@example.com", [item], Money("USD", 4, 990_000_000),
        Money("USD", 17, 490_000_000), ADDRESS, "tx-1",
    )  # fmt: skip


async def wired_checkout(stores: Stores) -> tuple[Checkout, Cart, Payment, Emitted]:
    checkout, cart, payment, emitted = Checkout(), Cart(), Payment(), Emitted()
    for service in (checkout, cart, payment):
        await stores.attach(service)
    checkout.cart, checkout.catalog, checkout.currency = cart, Catalog(), Currency()
    checkout.shipping, checkout.payment = Shipping(), payment
    checkout._archipel_emit = emitted
    return checkout, cart, payment, emitted


async def test_checkout_prices_in_the_user_currency_and_emits(stores: Stores) -> None:
    checkout, cart, payment, emitted = await wired_checkout(stores)
    await cart.add_item("u1", "camp-mug", 2)  # 2 x 12.50 USD
    await cart.add_item("u1", "notebook", 1)  # 7.25 USD
    order_id = new_order_id()
    result = await checkout.place_order(order_id, "u1", "EUR", ADDRESS, "a@example.com", GOOD_CARD)
    currency = Currency()
    mug = await currency.convert(Money("USD", 12, 500_000_000), "EUR")
    book = await currency.convert(Money("USD", 7, 250_000_000), "EUR")
    ship = await currency.convert(Money("USD", 6, 490_000_000), "EUR")  # 4.99 + 2 x 0.75
    assert (result.order_id, result.user_id, result.status) == (order_id, "u1", "paid")
    assert result.shipping_cost == ship
    assert result.total == money.total([money.multiply(mug, 2), book, ship], "EUR")
    assert [(i.product_id, i.quantity, i.unit_price) for i in result.items] == [
        ("camp-mug", 2, mug),
        ("notebook", 1, book),
    ]
    [event] = emitted.events
    assert isinstance(event, OrderPlaced)
    assert (event.order_id, event.user_id, event.total) == (order_id, "u1", result.total)
    [charge] = await payment.list_transactions()
    assert (charge.transaction_id, charge.amount, charge.last_four, charge.idempotency_key) == (
        result.transaction_id,
        result.total,
        "1111",
        order_id,
    )
    assert await checkout.get_order(order_id) == result
    # The cart is emptied by the OrderPlaced handler, not by checkout itself.
    assert len((await cart.get_cart("u1")).items) == 2


async def test_checkout_submitted_again_charges_and_announces_once(stores: Stores) -> None:
    checkout, cart, payment, emitted = await wired_checkout(stores)
    await cart.add_item("u1", "camp-mug", 1)
    order_id = new_order_id()
    first = await checkout.place_order(order_id, "u1", "USD", ADDRESS, "a@example.com", GOOD_CARD)
    await cart.add_item("u1", "beanie", 1)  # the basket changed since: the paid order stays as it was
    again = await checkout.place_order(order_id, "u1", "USD", ADDRESS, "a@example.com", GOOD_CARD)
    assert again == first
    assert len(emitted.events) == 1 and len(await payment.list_transactions()) == 1
    with pytest.raises(Conflict, match=f"order_id {order_id} is already used"):
        await checkout.place_order(order_id, "u2", "USD", ADDRESS, "a@example.com", GOOD_CARD)


async def test_checkout_lists_a_users_orders_newest_first_and_marks_them_shipped(stores: Stores) -> None:
    checkout, cart, _, _ = await wired_checkout(stores)
    placed = []
    for product in ("camp-mug", "beanie", "notebook"):
        await cart.add_item("u1", product, 1)
        placed.append(
            await checkout.place_order(new_order_id(), "u1", "USD", ADDRESS, "a@b.example", GOOD_CARD)
        )
        await cart.empty_cart("u1")
    await cart.add_item("u1/x", "camp-mug", 1)  # a user whose id starts with the first's
    other = await checkout.place_order(new_order_id(), "u1/x", "USD", ADDRESS, "a@b.example", GOOD_CARD)
    assert [o.order_id for o in await checkout.list_orders("u1")] == [o.order_id for o in reversed(placed)]
    assert [o.order_id for o in await checkout.list_orders("u1/x")] == [other.order_id]
    assert len(await checkout.list_orders("u1", limit=2)) == 2
    assert await checkout.list_orders("nobody") == []

    await checkout.mark_shipped(OrderShipped(other.order_id, "a@b.example", "AB-1", ADDRESS))
    shipped = await checkout.get_order(other.order_id)
    assert (shipped.status, shipped.tracking_id) == ("shipped", "AB-1")
    with pytest.raises(NotFound):
        await checkout.get_order(new_order_id())


async def test_checkout_refuses_a_malformed_order_id(stores: Stores) -> None:
    checkout, cart, payment, emitted = await wired_checkout(stores)
    await cart.add_item("u1", "camp-mug", 1)
    for bad in ("", "ABCDEF0123456789", "0123456789abcde", "../../etc/passwd", "x" * 500):
        with pytest.raises(InvalidArgument, match="order_id must be 16 lower-case hex digits"):
            await checkout.place_order(bad, "u1", "USD", ADDRESS, "a@example.com", GOOD_CARD)
        with pytest.raises(InvalidArgument, match="order_id"):
            await checkout.get_order(bad)
    assert emitted.events == [] and await payment.list_transactions() == []


async def test_checkout_declined_card_charges_nothing_and_keeps_the_cart(stores: Stores) -> None:
    checkout, cart, payment, emitted = await wired_checkout(stores)
    await cart.add_item("u1", "camp-mug", 1)
    order_id = new_order_id()
    with pytest.raises(PaymentDeclined, match="card declined: number fails the Luhn check"):
        await checkout.place_order(order_id, "u1", "USD", ADDRESS, "a@example.com", LUHN_FAIL)
    assert emitted.events == []
    assert await payment.list_transactions() == []
    assert (await cart.get_cart("u1")).items == [CartItem("camp-mug", 1)]
    # Nothing was charged under that id: the same order with a good card goes through.
    order = await checkout.place_order(order_id, "u1", "USD", ADDRESS, "a@example.com", GOOD_CARD)
    assert order.order_id == order_id and len(emitted.events) == 1


async def test_checkout_refuses_empty_carts_and_bad_input(stores: Stores) -> None:
    checkout, cart, _, emitted = await wired_checkout(stores)
    order_id = new_order_id()
    with pytest.raises(EmptyCart, match="cart is empty"):
        await checkout.place_order(order_id, "u1", "USD", ADDRESS, "a@example.com", GOOD_CARD)
    await cart.add_item("u1", "camp-mug", 1)
    with pytest.raises(InvalidArgument, match="not an email"):
        await checkout.place_order(order_id, "u1", "USD", ADDRESS, "nobody", GOOD_CARD)
    with pytest.raises(InvalidArgument, match="unsupported currency"):
        await checkout.place_order(order_id, "u1", "XXX", ADDRESS, "a@example.com", GOOD_CARD)
    with pytest.raises(InvalidArgument, match="address is missing"):
        nowhere = Address("", "", "", "", "")
        await checkout.place_order(order_id, "u1", "USD", nowhere, "a@example.com", GOOD_CARD)
    assert emitted.events == []


async def test_checkout_of_an_unknown_product_is_not_found(stores: Stores) -> None:
    checkout, cart, payment, emitted = await wired_checkout(stores)
    await cart.add_item("u1", "discontinued", 1)
    with pytest.raises(NotFound):
        await checkout.place_order(new_order_id(), "u1", "USD", ADDRESS, "a@example.com", GOOD_CARD)
    assert emitted.events == [] and await payment.list_transactions() == []


async def test_payment_refuses_non_positive_amounts_and_missing_keys(stores: Stores) -> None:
    payment = await stores.attach(Payment())
    for amount in (Money("USD", 0), Money("USD", -1)):
        with pytest.raises(InvalidArgument, match="positive amount"):
            await payment.charge(amount, GOOD_CARD, idempotency_key="k1")
    with pytest.raises(InvalidArgument, match="idempotency_key must be 1 to 128 characters"):
        await payment.charge(Money("USD", 5), GOOD_CARD, idempotency_key="")
    assert await payment.list_transactions() == []


async def test_payment_charges_once_per_idempotency_key(stores: Stores) -> None:
    payment = await stores.attach(Payment())
    five, six = Money("EUR", 5), Money("EUR", 6)
    first = await payment.charge(five, GOOD_CARD, idempotency_key="k1")
    assert await payment.charge(five, GOOD_CARD, idempotency_key="k1") == first
    with pytest.raises(Conflict, match=r"idempotency key 'k1' was already used to charge €5.00, not €6.00"):
        await payment.charge(six, GOOD_CARD, idempotency_key="k1")
    with pytest.raises(PaymentDeclined):
        await payment.charge(six, LUHN_FAIL, idempotency_key="k2")
    second = await payment.charge(six, GOOD_CARD, idempotency_key="k2")  # declined charged nothing
    assert [t.transaction_id for t in await payment.list_transactions()] == [second, first]
    assert [t.idempotency_key for t in await payment.list_transactions(limit=1)] == ["k2"]


async def test_shipping_ships_placed_orders_once_per_order() -> None:
    shipping, emitted = Shipping(), Emitted()
    shipping._archipel_emit = emitted
    event = placed_order("order-7", "u1")
    await shipping.ship_placed_order(event)
    await shipping.ship_placed_order(event)  # redelivered
    first, second = emitted.events
    assert isinstance(first, OrderShipped) and first == second
    assert first.tracking_id == await shipping.ship_order(ADDRESS, [CartItem("camp-mug", 1)], "order-7")


async def test_email_sends_each_mail_once(stores: Stores) -> None:
    email = await stores.attach(Email())
    event = placed_order("order-9", "u1")
    await email.send_confirmation(event)
    await email.send_confirmation(event)  # the same order again (a direct call skips the inbox)
    await email.send_shipping_notice(OrderShipped("order-9", "a@example.com", "AB-12345-678901234", ADDRESS))
    await email.send_confirmation(placed_order("order-10", "u2"))
    sent = await email.list_sent(order_id="order-9")
    assert [m.kind for m in sent] == ["shipped", "confirmation"]
    confirmation = sent[1]
    assert confirmation.to == "a@example.com" and "order-9" in confirmation.subject
    assert "1 \u00d7 Enamel Camp Mug at $12.50" in confirmation.body
    assert "Total charged:  $17.49" in confirmation.body
    assert "AB-12345-678901234" in sent[0].body
    assert [m.order_id for m in await email.list_sent()] == ["order-10", "order-9", "order-9"]
    assert await email.list_sent(to="other@example.com") == []
    assert len(await email.list_sent(to="a@example.com", limit=2)) == 2
    assert len(await email.list_sent(limit=1)) == 1


async def test_remove_ordered_takes_an_order_out_once_and_checks_its_arguments(cart: Cart) -> None:
    await cart.add_item("u1", "camp-mug", 3)
    order_id = "0123456789abcdef"
    await cart.remove_ordered("u1", order_id, [CartItem("camp-mug", 2)])
    await cart.remove_ordered("u1", order_id, [CartItem("camp-mug", 2)])  # again: nothing more
    await cart.empty_after_order(placed_order(order_id, "u1"))  # its event, late: nothing more
    assert await _lines(cart, "u1") == {"camp-mug": 1}
    with pytest.raises(InvalidArgument, match="order_id must be 16 lower-case hex digits"):
        await cart.remove_ordered("u1", "not-an-order", [])
    with pytest.raises(InvalidArgument, match="product_id"):
        await cart.remove_ordered("u1", order_id, [CartItem("", 1)])
