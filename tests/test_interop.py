"""Nothing proprietary on the wire: a plain MQTT client and curl are enough to talk to a service."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from archipel.testing import Topology, run_app
from tests.apps.shop import Checkout, Item, app


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
async def test_plain_mqtt_client_receives_event_with_cloudevents_properties(
    broker: str, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue(
        "archipel_mosquitto_url" if broker == "mosquitto" else "archipel_embedded_broker"
    )
    host, port = url.removeprefix("mqtt://").split(":")
    loop = asyncio.get_running_loop()
    received: asyncio.Future[paho.MQTTMessage] = loop.create_future()
    subscribed = asyncio.Event()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5
    )
    client.on_subscribe = lambda *_: loop.call_soon_threadsafe(subscribed.set)
    client.on_message = lambda _c, _u, message: loop.call_soon_threadsafe(
        lambda: received.done() or received.set_result(message)
    )
    client.connect(host, int(port))
    client.subscribe("testshop/orders/placed", qos=1)
    client.loop_start()
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        async with run_app(app, Topology("microservices", url)) as running:
            order = await running.client(Checkout).place_order("u1", "ada@example.org", [Item("a", 2)])
            message = await asyncio.wait_for(received, 10)
    finally:
        client.loop_stop()
        client.disconnect()
    assert message.topic == "testshop/orders/placed" and message.qos == 1
    assert json.loads(message.payload) == {
        "order_id": order,
        "email": "ada@example.org",
        "total": {"currency": "EUR", "units": 20, "nanos": 0},
    }
    properties = dict(message.properties.UserProperty)
    assert properties["specversion"] == "1.0" and properties["type"] == "OrderPlaced"
    assert properties["source"] == "/testshop/checkout"
    assert properties["id"] and properties["time"].startswith("20")
    assert properties["traceparent"].startswith("00-") and len(properties["traceparent"]) == 55


@pytest.mark.parametrize("mode", ["monolith", "microservices"])
async def test_curl_calls_a_public_rpc(mode: str) -> None:
    async with run_app(app, mode) as running:
        command = [
            "curl",
            "-s",
            "-X",
            "POST",
            f"{running.url_of('checkout')}/checkout/echo",
            "-H",
            "content-type: application/json",
            "-d",
            '{"value": {"a": 21}}',
        ]
        result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=10)
    assert json.loads(result.stdout) == {"a": 21}


async def test_curl_calls_an_internal_rpc_with_the_operator_credential() -> None:
    async with run_app(app, "microservices") as running:
        command = [
            "curl",
            "-s",
            "-X",
            "POST",
            f"{running.url_of('currency')}/currency/convert",
            "-H",
            "content-type: application/json",
            "-H",
            f"authorization: {running.auth_headers('currency')['authorization']}",
            "-d",
            '{"amount": {"currency": "EUR", "units": 21}, "to": "USD"}',
        ]
        result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=10)
    assert json.loads(result.stdout) == {"currency": "USD", "units": 42, "nanos": 0}
