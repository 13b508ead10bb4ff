"""Events: delivery to every subscribed service, retries, dead letters, restarts (both topologies)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import msgspec
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from archipel._events.bus import Envelope, LocalBus
from archipel.testing import Topology, run_app
from tests.apps.shop import Checkout, Email, Item, Ledger, Money, OrderPlaced, app
from tests.conftest import eventually


async def test_event_reaches_every_subscribed_service(archipel_topology: Topology) -> None:
    async with run_app(app, archipel_topology) as running:
        order = await running.client(Checkout).place_order("u1", "ada@example.org", [Item("a", 3)], to="USD")
        event = await running.events.wait_for(OrderPlaced, lambda e: e.order_id == order)
        assert event.total == Money("USD", 60)
        email, ledger = running.client(Email), running.client(Ledger)
        assert await eventually(lambda: email.sent_mail(order)) == "ada@example.org: 60 USD"
        assert await eventually(lambda: ledger.total_of(order)) == 60


async def test_failing_handler_is_retried_then_dead_lettered(archipel_topology: Topology) -> None:
    async with run_app(app, archipel_topology) as running:
        checkout, email, ledger = running.client(Checkout), running.client(Email), running.client(Ledger)
        flaky = await checkout.place_order("u1", "flaky@example.org", [Item("a", 1)])
        broken = await checkout.place_order("u2", "broken@example.org", [Item("a", 1)])
        # Two failures, then success on the third attempt.
        assert await eventually(lambda: email.sent_mail(flaky)) == "flaky@example.org: 10 EUR"
        letter = await running.events.wait_for_dead_letter(
            "orders/placed", lambda d: msgspec.json.decode(d.payload)["order_id"] == broken
        )
        assert letter.handler == "email.confirm" and "InvalidArgument" in letter.reason
        assert letter.attempts == 1  # a permanent error is not tried again
        # The other subscriber and the emitter are untouched by the failing handler.
        assert await eventually(lambda: ledger.total_of(broken)) == 10
        assert await email.sent_mail(broken) is None


async def test_a_transient_failure_is_retried_until_the_redelivery_window_ends(
    archipel_topology: Topology,
) -> None:
    env = {"ARCHIPEL_REDELIVERY_WINDOW": "1.5"}
    async with run_app(app, archipel_topology, env=env) as running:
        checkout, ledger = running.client(Checkout), running.client(Ledger)
        order = await checkout.place_order("u3", "down@example.org", [Item("a", 2)])
        letter = await running.events.wait_for_dead_letter(
            "orders/placed", lambda d: msgspec.json.decode(d.payload)["order_id"] == order, timeout=15
        )
        assert "gave up after" in letter.reason and "ConnectionError" in letter.reason
        assert letter.attempts >= 3  # tried again with back-off during the window, not once
        assert await ledger.total_of(order) == 20


async def test_local_bus_publish_returns_when_every_handler_is_done() -> None:
    # The outbox relay deletes an event's row once publish returns: on the in-process bus that
    # must be after the handlers ran, or a crash in between would lose the event.
    bus = LocalBus()
    release = asyncio.Event()
    seen: list[str] = []

    async def slow(envelope: Envelope) -> None:
        await release.wait()
        seen.append("slow")

    async def crashing(envelope: Envelope) -> None:
        raise RuntimeError("observer bug")

    bus.subscribe("a", "t", slow)
    bus.observe(crashing)  # an observer's failure does not fail the delivery
    await bus.start()
    publishing = asyncio.create_task(bus.publish(Envelope(topic="t", type="T", source="/x")))
    await asyncio.sleep(0)
    assert not publishing.done() and seen == []
    release.set()
    await asyncio.wait_for(publishing, 5)
    assert seen == ["slow"]
    await bus.stop()
    with pytest.raises(RuntimeError, match="event bus is stopped"):
        await bus.publish(Envelope(topic="t", type="T", source="/x"))


async def test_emit_returns_before_the_handlers_run() -> None:
    async with run_app(app) as running:
        email = running.instance(Email)
        email.gate = asyncio.Event()
        order = await running.client(Checkout).place_order("u9", "a@b", [Item("a", 1)])
        assert email.sent.get(order) is None  # place_order returned while the handler waits
        email.gate.set()
        assert await eventually(lambda: running.client(Email).sent_mail(order)) == "a@b: 10 EUR"


def _paho(url: str) -> paho.Client:
    host, port = url.removeprefix("mqtt://").split(":")
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5
    )
    client.connect(host, int(port))
    client.loop_start()
    return client


def _publish(client: paho.Client, topic: str, payload: bytes, source: str = "/testshop/checkout") -> None:
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = [
        ("specversion", "1.0"),
        ("id", uuid.uuid4().hex),
        ("type", "OrderPlaced"),
        ("source", source),  # consumers take OrderPlaced only from checkout, which declares it
    ]
    client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(5)


@pytest.fixture(params=["mosquitto", "embedded"])
def broker_url(request: pytest.FixtureRequest) -> str:
    return str(
        request.getfixturevalue(
            f"archipel_{request.param}_url" if request.param == "mosquitto" else "archipel_embedded_broker"
        )
    )


async def test_invalid_payload_is_dead_lettered_and_consumer_keeps_going(broker_url: str) -> None:
    async with run_app(app, Topology("microservices", broker_url)) as running:
        client = _paho(broker_url)
        try:
            _publish(client, "testshop/orders/placed", b'{"order_id": 7}')
            letter = await running.events.wait_for_dead_letter(
                "orders/placed", lambda d: d.payload == '{"order_id": 7}'
            )
            assert "invalid payload" in letter.reason and "$.order_id" in letter.reason
            # A valid event claiming to come from a service that does not emit it (a publisher the
            # broker lets through, such as this anonymous client): dead-lettered, never handled.
            forged = OrderPlaced(order_id="o-forged", email="x@y", total=Money("EUR", 5))
            _publish(client, "testshop/orders/placed", msgspec.json.encode(forged), source="/testshop/email")
            letter = await running.events.wait_for_dead_letter(
                "orders/placed", lambda d: "o-forged" in d.payload
            )
            assert "source '/testshop/email' may not publish on topic 'orders/placed'" in letter.reason
            good = OrderPlaced(order_id="o-plain", email="x@y", total=Money("EUR", 5))
            _publish(client, "testshop/orders/placed", msgspec.json.encode(good))
            ledger = running.client(Ledger)
            assert await eventually(lambda: ledger.total_of("o-plain")) == 5
            assert await ledger.total_of("o-forged") is None
        finally:
            client.loop_stop()
            client.disconnect()


async def test_events_published_while_a_consumer_is_down_are_delivered_after_restart(
    archipel_mosquitto_url: str,
) -> None:
    # A shared Mosquitto given by URL: durable sessions there too, not only on the embedded broker.
    async with run_app(app, Topology("microservices", archipel_mosquitto_url)) as running:
        checkout, ledger = running.client(Checkout), running.client(Ledger)
        first = await checkout.place_order("u0", "a@b", [Item("a", 1)])
        assert await eventually(lambda: ledger.total_of(first)) == 10
        pid = running.pid_of("ledger")
        os.kill(pid, signal.SIGKILL)
        orders = [await checkout.place_order(f"u{i}", "a@b", [Item("a", i)]) for i in range(1, 6)]
        await running.wait_restarted("ledger", pid)
        for i, order in enumerate(orders, start=1):
            assert await eventually(lambda order=order: ledger.total_of(order), timeout=15) == 10 * i


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
async def test_a_killed_consumer_is_restarted_and_takes_new_events(
    broker: str, request: pytest.FixtureRequest
) -> None:
    if broker == "mosquitto":
        topology = Topology("microservices", request.getfixturevalue("archipel_mosquitto_url"))
    else:
        topology = Topology(
            "microservices", request.getfixturevalue("archipel_embedded_broker"), durable=False
        )
    async with run_app(app, topology) as running:
        checkout, ledger = running.client(Checkout), running.client(Ledger)
        pid = running.pid_of("ledger")
        os.kill(pid, signal.SIGKILL)
        await running.wait_restarted("ledger", pid)
        order = await checkout.place_order("u1", "a@b", [Item("a", 4)])
        assert await eventually(lambda: ledger.total_of(order), timeout=15) == 40
