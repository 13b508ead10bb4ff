"""The whole shop, in every topology: through service clients and through the storefront's HTML.

``archipel_topology`` runs each test as a monolith and as microservices (Mosquitto, embedded broker),
and once more with ``shipping`` swapped for its Node.js implementation (examples/boutique/shipping-node),
placed as an external service: the Python services cannot tell the difference.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from boutique import money
from boutique.app import app
from boutique.cart import Cart
from boutique.catalog import Catalog
from boutique.checkout import Checkout, EmptyCart, new_order_id
from boutique.currency import Currency
from boutique.email import Email
from boutique.payment import Payment, PaymentDeclined
from boutique.types import CartItem, CreditCard, Money, OrderPlaced, OrderShipped

from archipel import InvalidArgument, NotFound
from archipel.testing import External, RunningApp, Topology, run_app
from tests.boutique.buyer import ADDRESS, GOOD_CARD, checkout_form, eventually

pytestmark = pytest.mark.timeout(90)

NODE_SHIPPING = Path(__file__).resolve().parents[2] / "examples" / "boutique" / "shipping-node"


def node_shipping(request: pytest.FixtureRequest) -> Topology:
    """Microservices on the embedded broker, ``shipping`` run by Node.js from its own folder."""
    node = shutil.which("node")
    assert node, "Node.js is not installed: scripts/setup.sh installs it (apt-get install nodejs npm)"
    assert (NODE_SHIPPING / "node_modules").is_dir(), "run scripts/setup.sh: it runs npm ci in shipping-node"
    external = {"shipping": External(command=(node, "src/main.js"), cwd=str(NODE_SHIPPING))}
    return Topology("microservices", "embedded", external=external)


ARCHIPEL_EXTRA_TOPOLOGIES = {"microservices-node-shipping": node_shipping}

REDIS_URL = os.environ.get("BOUTIQUE_TEST_REDIS", "redis://127.0.0.1:6379/0")
LUHN_FAIL = CreditCard("4111 1111 1111 1112", "123", 12, 2099)


@pytest.fixture
async def redis_shop(archipel_topology: Topology) -> AsyncIterator[RunningApp]:
    """The shop with its carts in Redis under a key prefix of its own, removed afterwards."""
    prefix = f"boutique-test-{uuid.uuid4().hex[:8]}:"
    env = {"BOUTIQUE_REDIS_URL": REDIS_URL, "BOUTIQUE_REDIS_PREFIX": prefix}
    try:
        async with run_app(app, archipel_topology, env=env) as running:
            yield running
    finally:
        import redis.asyncio as redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_order_flow_through_service_clients(redis_shop: RunningApp) -> None:
    catalog, cart = redis_shop.client(Catalog), redis_shop.client(Cart)
    currency, checkout, email = (
        redis_shop.client(Currency),
        redis_shop.client(Checkout),
        redis_shop.client(Email),
    )
    user = f"user-{uuid.uuid4().hex[:8]}"

    products = await catalog.list_products()
    lamp = await catalog.get_product("desk-lamp")
    assert lamp in products
    in_yen = await currency.convert(lamp.price_usd, "JPY")
    assert in_yen.currency_code == "JPY" and in_yen.units > 10_000

    await cart.add_item(user, "desk-lamp", 1)
    await cart.add_item(user, "notebook", 3)
    assert sorted((await cart.get_cart(user)).items, key=lambda i: i.product_id) == [
        CartItem("desk-lamp", 1),
        CartItem("notebook", 3),
    ]

    order = await checkout.place_order(new_order_id(), user, "JPY", ADDRESS, "buyer@example.com", GOOD_CARD)
    assert order.total.currency_code == "JPY"
    notebook_yen = await currency.convert(Money("USD", 7, 250_000_000), "JPY")
    assert order.total == money.total([in_yen, money.multiply(notebook_yen, 3), order.shipping_cost], "JPY")

    placed = await redis_shop.events.wait_for(OrderPlaced, lambda e: e.order_id == order.order_id)
    assert (placed.user_id, placed.email, placed.total) == (user, "buyer@example.com", order.total)
    shipped = await redis_shop.events.wait_for(OrderShipped, lambda e: e.order_id == order.order_id)
    assert re.fullmatch(r"[0-9A-F]{2}-[0-9A-F]{5}-[0-9A-F]{9}", shipped.tracking_id)
    if redis_shop.topology.external:  # and the parcel was shipped by Node.js, not by Python
        assert os.path.basename(os.readlink(f"/proc/{redis_shop.pid_of('shipping')}/exe")).startswith("node")

    # Asynchronous effects of OrderPlaced: the cart empties, both mails go out.
    await eventually(lambda: cart.get_cart(user), lambda c: c.items == [])
    mails = await eventually(lambda: email.list_sent(order_id=order.order_id), lambda m: len(m) == 2)
    assert {m.kind for m in mails} == {"confirmation", "shipped"}
    assert all(m.to == "buyer@example.com" for m in mails)
    assert shipped.tracking_id in next(m.body for m in mails if m.kind == "shipped")
    # Checkout keeps the order, and learns it shipped.
    kept = await eventually(lambda: checkout.get_order(order.order_id), lambda o: o.status == "shipped")
    assert kept.tracking_id == shipped.tracking_id and kept.total == order.total
    assert [o.order_id for o in await checkout.list_orders(user)] == [order.order_id]


async def test_refusals_keep_their_class_and_leave_nothing_behind(archipel_topology: Topology) -> None:
    async with run_app(app, archipel_topology) as shop:
        catalog, cart, checkout = shop.client(Catalog), shop.client(Cart), shop.client(Checkout)
        payment = shop.client(Payment)
        user = f"user-{uuid.uuid4().hex[:8]}"

        with pytest.raises(NotFound, match="product 'no-such-thing' not found"):
            await catalog.get_product("no-such-thing")
        for bad in (0, -3, 10**9):
            with pytest.raises(InvalidArgument, match="between 1 and 100"):
                await cart.add_item(user, "camp-mug", bad)
        order_id = new_order_id()
        with pytest.raises(EmptyCart):
            await checkout.place_order(order_id, user, "USD", ADDRESS, "buyer@example.com", GOOD_CARD)
        with pytest.raises(InvalidArgument, match="order_id must be 16 lower-case hex digits"):
            await checkout.place_order("order-1", user, "USD", ADDRESS, "buyer@example.com", GOOD_CARD)

        await cart.add_item(user, "camp-mug", 2)
        with pytest.raises(PaymentDeclined, match="card declined: number fails the Luhn check"):
            await checkout.place_order(order_id, user, "EUR", ADDRESS, "buyer@example.com", LUHN_FAIL)
        with pytest.raises(PaymentDeclined, match="expired"):
            expired = CreditCard("5555 5555 5555 4444", "123", 1, 2020)
            await checkout.place_order(order_id, user, "EUR", ADDRESS, "buyer@example.com", expired)
        assert await payment.list_transactions() == []
        assert (await cart.get_cart(user)).items == [CartItem("camp-mug", 2)]
        with pytest.raises(NotFound, match=f"order {order_id} not found"):
            await checkout.get_order(order_id)

        # A good order afterwards (the same id: nothing was charged under it) goes through; the
        # failed attempts left no OrderPlaced behind: events of one emitter arrive in order, so
        # anything earlier would be recorded by now.
        order = await checkout.place_order(order_id, user, "EUR", ADDRESS, "buyer@example.com", GOOD_CARD)
        await shop.events.wait_for(OrderPlaced, lambda e: e.order_id == order.order_id)
        assert [e.order_id for e in shop.events.of(OrderPlaced)] == [order.order_id]
        assert len(await payment.list_transactions()) == 1


CHECKOUT_FORM = checkout_form("web@example.com")
ORDER_ID_FIELD = re.compile(r'name="order_id" value="([0-9a-f]{16})"')


def form_order_id(page: httpx.Response) -> str:
    """The order id a rendered checkout form carries."""
    found = ORDER_ID_FIELD.search(page.text)
    assert found, page.text
    return found.group(1)


async def test_storefront_over_http(archipel_topology: Topology) -> None:
    async with run_app(app, archipel_topology) as shop:
        base = shop.url_of("frontend")
        async with httpx.AsyncClient(base_url=base, follow_redirects=True, timeout=10) as web:
            home = await web.get("/")
            assert home.status_code == 200
            assert "shop_session" in web.cookies
            assert home.text.count('class="card"') >= 10 and "$12.50" in home.text
            assert 'class="ad"' in home.text

            page = await web.get("/product/camp-mug")
            assert (
                page.status_code == 200
                and "Enamel Camp Mug" in page.text
                and "You may also like" in page.text
            )
            missing = await web.get("/product/no-such-thing")
            assert missing.status_code == 404 and "product &#39;no-such-thing&#39; not found" in missing.text

            for bad, message in [
                ("0", "between 1 and 100"),
                ("-2", "between 1 and 100"),
                ("1000000000", "between 1 and 100"),
                ("lots", "whole number"),
                ("", "whole number"),
            ]:
                refused = await web.post("/basket/add", data={"product_id": "camp-mug", "quantity": bad})
                assert refused.status_code == 422 and message in refused.text, bad
            unknown = await web.post("/basket/add", data={"product_id": "no-such-thing", "quantity": "1"})
            assert unknown.status_code == 404

            added = await web.post("/basket/add", data={"product_id": "camp-mug", "quantity": "2"})
            assert added.status_code == 200 and str(added.url).endswith("/basket")
            assert "Enamel Camp Mug" in added.text and 'data-testid="basket-count">2<' in added.text

            euro = await web.post(
                "/setcurrency", data={"currency_code": "EUR"}, headers={"referer": f"{base}/basket"}
            )
            assert str(euro.url).endswith("/basket") and "€11.52" in euro.text  # 12.50 USD at 1.085
            ignored = await web.post("/setcurrency", data={"currency_code": "XXX"})
            assert ignored.status_code == 200 and web.cookies.get("shop_currency") == "EUR"

            no_id = await web.post("/order", data=CHECKOUT_FORM)
            assert no_id.status_code == 422 and "order_id must be 16 lower-case hex digits" in no_id.text
            form = {**CHECKOUT_FORM, "order_id": form_order_id(no_id)}
            declined = await web.post("/order", data={**form, "card_number": "4111 1111 1111 1112"})
            assert declined.status_code == 402
            assert "card declined: number fails the Luhn check" in declined.text
            assert 'value="4111 1111 1111 1112"' in declined.text  # the form keeps what was typed
            assert "Enamel Camp Mug" in declined.text  # the basket is kept
            assert shop.events.of(OrderPlaced) == []

            bad_email = await web.post("/order", data={**form, "email": "nope"})
            assert bad_email.status_code == 422 and "is not an email address" in bad_email.text

            form["order_id"] = form_order_id(bad_email)  # each rendered form carries a new id
            assert form["order_id"] != form_order_id(declined)
            placed = await web.post("/order", data=form)
            assert placed.status_code == 200 and "your order is placed" in placed.text
            found = re.search(r'data-testid="order-id">([0-9a-f]+)<', placed.text)
            assert found and found.group(1) == form["order_id"], placed.text
            order_id = found.group(1)
            # Empty as the confirmation shows, not once OrderPlaced reaches the cart: the buyer's
            # next checkout must not be charged for this order's lines again.
            assert "Your basket is empty" in (await web.get("/basket")).text
            event = await shop.events.wait_for(OrderPlaced, lambda e: e.order_id == order_id)
            assert event.total.currency_code == "EUR" and event.email == "web@example.com"
            await shop.events.wait_for(OrderShipped, lambda e: e.order_id == order_id)

            async def mail_page() -> str:
                return (await web.get("/mail", params={"order": order_id})).text

            mail = await eventually(mail_page, lambda text: text.count('class="mail panel"') == 2)
            assert f"Your order {order_id}" in mail and "is on its way" in mail
            basket = await web.get("/basket")  # and still, once the handler has run
            assert basket.status_code == 200 and "Your basket is empty" in basket.text

            again = await web.post("/order", data=form)  # the same form, submitted again
            assert again.status_code == 200 and f'data-testid="order-id">{order_id}<' in again.text
            empty = await web.post("/order", data={**form, "order_id": new_order_id()})
            assert empty.status_code == 409 and "your cart is empty" in empty.text

            history = await web.get("/orders")
            assert history.text.count("<tr data-order=") == 1 and f'href="/order/{order_id}"' in history.text
            page = await eventually(
                lambda: web.get(f"/order/{order_id}"),
                lambda r: 'data-testid="order-status">shipped<' in r.text,
            )
            assert "Your order" in page.text and event.transaction_id in page.text
            async with httpx.AsyncClient(base_url=base, timeout=10) as stranger:
                assert (await stranger.get(f"/order/{order_id}")).status_code == 404
                assert "No orders yet" in (await stranger.get("/orders")).text
            assert (await web.get("/order/not-an-id")).status_code == 404
