"""The MQTT 5 client under the bus (archipel._mqtt): its packets, and its behaviour against a
real Mosquitto (the broker's window of QoS 1 publishes, a hung broker, a broker that sends
garbage). What the bus promises on top of it is in test_mqtt_bus.py."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from pathlib import Path

import pytest

from archipel._deploy.mosquitto import find_mosquitto, mosquitto_command, write_config
from archipel._events.mqtt import filter_matches
from archipel._mqtt import packets
from archipel._mqtt.client import ConnectionLost, Message, MqttClient
from archipel._mqtt.packets import MalformedPacket

WAIT = 15.0


# -- packets --------------------------------------------------------------------------------


def _one(raw: bytes) -> tuple[int, memoryview]:
    found, used = packets.split(raw)
    assert used == len(raw) and len(found) == 1
    return found[0]


def test_a_publish_round_trips_with_its_properties() -> None:
    users = (("id", "e-1"), ("source", "/shop/checkout"), ("type", "OrderPlaced"), ("note", "é" * 300))
    properties = packets.publish_properties("application/json", users)
    raw = packets.publish("shop/orders/placed", b'{"a":1}' * 100, 513, properties, dup=True)
    first, body = _one(raw)
    message = packets.decode_publish(first, body)
    assert (message.topic, message.qos, message.packet_id, message.dup) == (
        "shop/orders/placed",
        1,
        513,
        True,
    )
    assert message.payload == b'{"a":1}' * 100
    assert message.content_type == "application/json"
    assert message.user_properties == list(users)


def test_packets_split_across_reads_are_reassembled() -> None:
    raw = b"".join(packets.publish(f"t/{i}", b"x" * i * 40, i + 1, b"\x00") for i in range(5))
    buffer, decoded = b"", []
    for byte in raw:  # one byte per read: the worst a socket can do
        buffer += bytes([byte])
        found, used = packets.split(buffer)
        decoded += [packets.decode_publish(first, body).topic for first, body in found]
        buffer = buffer[used:]
    assert decoded == [f"t/{i}" for i in range(5)] and buffer == b""


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\x30\xff\xff\xff\xff\x01", "remaining length"),
        (b"\x32\x03\x00\x09a", "string runs past"),
        (b"\x32\x06\x00\x01a\x00\x01\x01", "properties run past"),
        (b"\x32\x07\x00\x01a\x00\x01\x01\x7e", "unknown property 0x7e"),
        (b"\x36\x05\x00\x01a\x00\x00", "QoS 3"),
        (b"\x32\x07\x00\x01\xff\x00\x01\x00\x00", "not valid UTF-8"),
    ],
)
def test_malformed_packets_are_refused_with_what_is_wrong(raw: bytes, problem: str) -> None:
    with pytest.raises(MalformedPacket, match=problem):
        for first, body in packets.split(raw)[0]:
            packets.decode_publish(first, body)


def test_topic_filters_match_as_mqtt_says() -> None:
    assert filter_matches("$share/g/shop/orders/placed", "shop/orders/placed")
    assert filter_matches("shop/#", "shop/$dead/orders/placed")
    assert filter_matches("shop/+/placed", "shop/orders/placed")
    assert not filter_matches("shop/+", "shop/orders/placed")
    assert not filter_matches("shop/orders/placed", "shop/orders")


# -- against a real broker ----------------------------------------------------------------------


class Broker:
    def __init__(self, folder: Path) -> None:
        binary = find_mosquitto()
        if binary is None:
            pytest.fail("the mosquitto binary is not installed (scripts/setup.sh installs it)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = mosquitto_command(binary, write_config(folder, "127.0.0.1", self.port))
        # Its database is relative to its working directory (see write_config): the test folder.
        self.process = subprocess.Popen(
            command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    async def listening(self) -> None:
        async with asyncio.timeout(WAIT):
            while True:
                with suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    return
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        with suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGCONT)
        self.process.kill()
        self.process.wait(5)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    running = Broker(tmp_path)
    try:
        await running.listening()
        yield running
    finally:
        running.stop()


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def client(broker: Broker, name: str, received: list[Message] | None = None, **options: object) -> MqttClient:
    sink: list[Message] = [] if received is None else received
    return MqttClient("127.0.0.1", broker.port, name, on_message=sink.append, **options)  # type: ignore[arg-type]


async def test_many_concurrent_publishes_stay_within_the_brokers_window(broker: Broker) -> None:
    received: list[Message] = []

    def take(message: Message) -> None:
        received.append(message)
        consumer.ack(message)  # the broker sends at most its window of unacknowledged messages

    consumer = MqttClient("127.0.0.1", broker.port, "consumer", on_message=take)
    producer = client(broker, "producer")
    await consumer.connect()
    await consumer.subscribe("load/#", 1, 7)
    await producer.connect()
    try:
        properties = packets.publish_properties("application/json", ())
        # Far more than the broker's window of unacknowledged QoS 1 messages per client: a client
        # that ignored its Receive Maximum would be disconnected, and these would fail.
        await asyncio.gather(*(producer.publish(f"load/{i}", b"{}", properties) for i in range(500)))
        await until(lambda: len(received) == 500)
        assert {m.topic for m in received} == {f"load/{i}" for i in range(500)}
        assert all(m.subscription_ids == [7] for m in received)
        assert producer.connected and consumer.connected
    finally:
        await producer.disconnect()
        await consumer.disconnect()


async def test_a_hung_broker_is_noticed_by_keep_alive_and_left_for_a_reconnect(broker: Broker) -> None:
    watcher = client(broker, "watcher", keep_alive=1, reconnect_max=0.5)
    await watcher.connect()
    try:
        os.kill(broker.process.pid, signal.SIGSTOP)  # TCP stays open; nothing answers
        await until(lambda: not watcher.connected, timeout=10)
        with pytest.raises(ConnectionLost):
            await watcher.publish("t", b"{}", b"\x00")
        os.kill(broker.process.pid, signal.SIGCONT)
        await until(lambda: watcher.connected)
        await watcher.publish("t", b"{}", b"\x00")  # the new connection works
    finally:
        await watcher.disconnect()


@pytest.fixture
async def garbage_broker() -> AsyncIterator[int]:
    """A server that accepts CONNECT with a CONNACK, then sends bytes that are no MQTT packet."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK, success, no properties
        await writer.drain()
        writer.write(b"\x32\x07\x00\x01a\x00\x01\x01\x7e")  # a property that does not exist
        await writer.drain()
        with suppress(ConnectionError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_a_broker_sending_garbage_is_disconnected_not_believed(garbage_broker: int) -> None:
    received: list[Message] = []
    victim = MqttClient(
        "127.0.0.1", garbage_broker, "victim", on_message=received.append, reconnect_initial=5
    )
    await victim.connect()
    try:
        await until(lambda: not victim.connected)
        assert received == []
    finally:
        await victim.disconnect()
