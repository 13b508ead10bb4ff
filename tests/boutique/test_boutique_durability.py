"""The shop's state survives restarts, and an order is charged and announced once.

Each test keeps the services' stores in its own ``tmp_path``: killed processes come back on the
same files (microservices), and a second run of the monolith opens what the first one wrote.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from pathlib import Path

import httpx
import pytest
from boutique.app import app
from boutique.cart import Cart
from boutique.checkout import Checkout, new_order_id
from boutique.email import Email
from boutique.payment import Payment
from boutique.types import CartItem, Money, Order, OrderPlaced, SentMail, Transaction
from prometheus_client.parser import text_string_to_metric_families

from archipel import Conflict
from archipel.testing import RunningApp, Topology, run_app
from tests.boutique.buyer import ADDRESS, GOOD_CARD, checkout_form, eventually

pytestmark = pytest.mark.timeout(120)

BUYER_MAIL = "durable@example.com"
CHECKOUT_FORM = checkout_form(BUYER_MAIL)


def new_user(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"  # also a valid session cookie (8 to 64 characters)


def storefront(shop: RunningApp, user: str) -> httpx.AsyncClient:
    """The storefront as seen by the visitor whose session (and so cart user id) is ``user``."""
    return httpx.AsyncClient(
        base_url=shop.url_of("frontend"), cookies={"shop_session": user}, follow_redirects=True, timeout=15
    )


async def checkout_form(web: httpx.AsyncClient) -> dict[str, str]:
    """The checkout form as the basket page renders it, with its order id."""
    page = await web.get("/basket")
    found = re.search(r'name="order_id" value="([0-9a-f]{16})"', page.text)
    assert found, page.text
    return {**CHECKOUT_FORM, "order_id": found.group(1)}


async def submit(web: httpx.AsyncClient, form: dict[str, str]) -> str:
    """Submit the checkout form; the order id on the confirmation page."""
    page = await web.post("/order", data=form)
    found = re.search(r'data-testid="order-id">([0-9a-f]{16})<', page.text)
    assert page.status_code == 200 and found, page.text
    return found.group(1)


async def order_settled(shop: RunningApp, order_id: str, user: str) -> Order:
    """Wait until every effect of the order is in: shipped, both mails, the buyer's cart emptied."""
    checkout, email, cart = shop.client(Checkout), shop.client(Email), shop.client(Cart)
    order = await eventually(lambda: checkout.get_order(order_id), lambda o: o.status == "shipped")
    await eventually(lambda: email.list_sent(order_id=order_id), lambda mails: len(mails) == 2)
    await eventually(lambda: cart.get_cart(user), lambda c: c.items == [])
    return order


async def handled(shop: RunningApp, service: str, handler: str) -> float:
    """How many events ``service``'s ``handler`` has handled, from its process's /metrics."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{shop.url_of(service)}/metrics", headers=shop.auth_headers(service))).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            wanted = {"service": service, "handler": handler, "outcome": "ok"}
            if sample.name == "archipel_events_handled_total" and wanted.items() <= sample.labels.items():
                return sample.value
    return 0.0


async def charges_for(shop: RunningApp, key: str) -> list[Transaction]:
    return [t for t in await shop.client(Payment).list_transactions(limit=1000) if t.idempotency_key == key]


async def kill_and_wait(shop: RunningApp, service: str) -> None:
    pid = shop.pid_of(service)
    os.kill(pid, signal.SIGKILL)
    await shop.wait_restarted(service, pid)


async def test_state_survives_killing_each_stateful_process(tmp_path: Path) -> None:
    buyer, keeper = new_user("buyer"), new_user("keeper")
    async with run_app(app, "microservices", data_dir=tmp_path) as shop, storefront(shop, buyer) as web:
        checkout, payment, email, cart = (
            shop.client(Checkout),
            shop.client(Payment),
            shop.client(Email),
            shop.client(Cart),
        )
        await web.post("/basket/add", data={"product_id": "desk-lamp", "quantity": "1"})
        order_id = await submit(web, await checkout_form(web))
        await cart.add_item(keeper, "beanie", 3)  # a basket nobody orders: it must stay
        order = await order_settled(shop, order_id, buyer)
        page = (await web.get(f"/order/{order_id}")).text
        transactions = await payment.list_transactions()
        mails = await email.list_sent(order_id=order_id)
        assert [t.idempotency_key for t in transactions] == [order_id]

        await kill_and_wait(shop, "checkout")
        assert await checkout.get_order(order_id) == order
        assert await checkout.list_orders(buyer) == [order]
        assert (await web.get(f"/order/{order_id}")).text == page
        assert f'href="/order/{order_id}"' in (await web.get("/orders")).text

        await kill_and_wait(shop, "payment")
        assert await payment.list_transactions() == transactions

        await kill_and_wait(shop, "email")
        assert await email.list_sent(order_id=order_id) == mails

        await kill_and_wait(shop, "cart")
        assert (await cart.get_cart(keeper)).items == [CartItem("beanie", 3)]
        assert (await cart.get_cart(buyer)).items == []

        # The restarted processes work on: the keeper's basket is ordered and its effects happen.
        second = await checkout.place_order(new_order_id(), keeper, "USD", ADDRESS, BUYER_MAIL, GOOD_CARD)
        assert second.items[0].quantity == 3
        await order_settled(shop, second.order_id, keeper)
        assert len(await payment.list_transactions()) == 2


async def test_the_basket_is_right_at_once_when_orderplaced_is_held_up(tmp_path: Path) -> None:
    """The broker frozen (SIGSTOP) while a buyer orders: OrderPlaced waits in checkout's outbox,
    yet the basket is empty as the confirmation shows (the storefront takes the order's lines out
    by a call), a product added meanwhile stays once the late event is handled, and the next
    checkout is charged for that product only."""
    buyer = new_user("buyer")
    async with run_app(app, "microservices", data_dir=tmp_path) as shop, storefront(shop, buyer) as web:
        supervisor = shop._supervisor
        assert supervisor is not None and supervisor.broker is not None and supervisor.broker.pid
        broker = supervisor.broker.pid
        await web.post("/basket/add", data={"product_id": "camp-mug", "quantity": "2"})
        form = await checkout_form(web)
        os.kill(broker, signal.SIGSTOP)
        try:
            order_id = await submit(web, form)
            assert "Your basket is empty" in (await web.get("/basket")).text
            await web.post("/basket/add", data={"product_id": "camp-mug", "quantity": "1"})
            assert (await shop.client(Checkout).get_order(order_id)).items[0].quantity == 2
        finally:
            os.kill(broker, signal.SIGCONT)
        # Once cart has handled the late OrderPlaced, the mug added meanwhile is still there.
        await eventually(lambda: handled(shop, "cart", "empty_after_order"), lambda count: count >= 1)
        assert (await shop.client(Cart).get_cart(buyer)).items == [CartItem("camp-mug", 1)]
        second = await submit(web, await checkout_form(web))
        assert [i.quantity for i in (await shop.client(Checkout).get_order(second)).items] == [1]


async def test_an_order_placed_while_email_is_down_is_mailed_after_its_restart(
    archipel_mosquitto_url: str, tmp_path: Path
) -> None:
    # Mosquitto keeps the killed consumer's durable session (the embedded broker does not).
    user = new_user("buyer")
    topology = Topology("microservices", archipel_mosquitto_url)
    async with run_app(app, topology, data_dir=tmp_path) as shop:
        await shop.client(Cart).add_item(user, "sunglasses", 1)
        pid = shop.pid_of("email")
        os.kill(pid, signal.SIGKILL)
        order = await shop.client(Checkout).place_order(
            new_order_id(), user, "GBP", ADDRESS, BUYER_MAIL, GOOD_CARD
        )
        await shop.wait_restarted("email", pid)
        await order_settled(shop, order.order_id, user)


@pytest.mark.parametrize("mode", ["monolith", "microservices"])
async def test_a_resubmitted_checkout_charges_and_mails_once(mode: str, tmp_path: Path) -> None:
    buyer = new_user("buyer")
    async with run_app(app, mode, data_dir=tmp_path) as shop, storefront(shop, buyer) as web:
        await web.post("/basket/add", data={"product_id": "camp-mug", "quantity": "2"})
        form = await checkout_form(web)
        order_id = form["order_id"]
        # A double click (both at once), then a reload of the confirmation page (once more).
        assert await asyncio.gather(submit(web, form), submit(web, form)) == [order_id, order_id]
        assert await submit(web, form) == order_id
        await order_settled(shop, order_id, buyer)
        assert len(await charges_for(shop, order_id)) == 1

        # Events of one emitter arrive in order: once the next order's OrderPlaced is here, a
        # second one for the first order would have been too. The mail shows it.
        await web.post("/basket/add", data={"product_id": "notebook", "quantity": "1"})
        later = await submit(web, await checkout_form(web))
        await shop.events.wait_for(OrderPlaced, lambda e: e.order_id == later)
        assert [e.order_id for e in shop.events.of(OrderPlaced)] == [order_id, later]
        await order_settled(shop, later, buyer)
        mails = await shop.client(Email).list_sent(order_id=order_id)
        assert sorted(m.kind for m in mails) == ["confirmation", "shipped"]


async def test_a_charge_whose_order_was_not_recorded_is_reused_not_repeated(tmp_path: Path) -> None:
    """A checkout that died after the charge, before its order committed, left only the charge:
    the same order submitted again gets that charge back; another amount under its id is refused."""
    user = new_user("buyer")
    async with run_app(app, "microservices", data_dir=tmp_path) as shop:
        cart, checkout, payment = shop.client(Cart), shop.client(Checkout), shop.client(Payment)
        await cart.add_item(user, "camp-mug", 1)
        order_id = new_order_id()
        total = Money("USD", 17, 490_000_000)  # 12.50 + 4.99 shipping
        orphan = await payment.charge(total, GOOD_CARD, idempotency_key=order_id)

        order = await checkout.place_order(order_id, user, "USD", ADDRESS, BUYER_MAIL, GOOD_CARD)
        assert (order.transaction_id, order.total) == (orphan, total)
        assert [t.transaction_id for t in await charges_for(shop, order_id)] == [orphan]

        other_id = new_order_id()
        await eventually(lambda: cart.get_cart(user), lambda c: c.items == [])  # the order's effect
        await cart.add_item(user, "notebook", 1)
        await payment.charge(total, GOOD_CARD, idempotency_key=other_id)
        with pytest.raises(
            Conflict, match=rf"idempotency key '{other_id}' was already used to charge \$17.49"
        ):
            await checkout.place_order(other_id, user, "USD", ADDRESS, BUYER_MAIL, GOOD_CARD)
        assert len(await charges_for(shop, other_id)) == 1


async def test_the_monolith_finds_its_state_after_a_restart(tmp_path: Path) -> None:
    buyer, keeper = new_user("buyer"), new_user("keeper")
    async with run_app(app, "monolith", data_dir=tmp_path) as shop, storefront(shop, buyer) as web:
        await web.post("/basket/add", data={"product_id": "planter", "quantity": "2"})
        form = await checkout_form(web)
        order_id = await submit(web, form)
        await shop.client(Cart).add_item(keeper, "tote-bag", 1)
        order = await order_settled(shop, order_id, buyer)
        transactions = await shop.client(Payment).list_transactions()
        mails: list[SentMail] = await shop.client(Email).list_sent()

    async with run_app(app, "monolith", data_dir=tmp_path) as shop, storefront(shop, buyer) as web:
        assert await shop.client(Checkout).list_orders(buyer) == [order]
        assert await shop.client(Payment).list_transactions() == transactions
        assert await shop.client(Email).list_sent() == mails and len(mails) == 2
        assert (await shop.client(Cart).get_cart(keeper)).items == [CartItem("tote-bag", 1)]
        history = await web.get("/orders")
        assert f'href="/order/{order_id}"' in history.text
        page = await web.get(f"/order/{order_id}")
        assert page.status_code == 200 and order.tracking_id in page.text
        # The form submitted again after the restart: the same order, no new charge, no new event.
        assert await submit(web, form) == order_id
        assert await shop.client(Payment).list_transactions() == transactions
        await web.post("/basket/add", data={"product_id": "beanie", "quantity": "1"})
        later = await submit(web, await checkout_form(web))
        await shop.events.wait_for(OrderPlaced, lambda e: e.order_id == later)
        assert [e.order_id for e in shop.events.of(OrderPlaced)] == [later]
