"""Which path an event takes in microservices, by what the services declare, against a real
Mosquitto: a stateless emit is published at once (the outbox only when the broker is away or
slow), a stateless handler has no inbox (a redelivery runs it again), a stateful one keeps its
inbox (a redelivery is skipped)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from archipel import App, Event, Service, collection, on
from archipel._events.bus import Envelope
from archipel._events.mqtt import MqttBus
from archipel._runtime import DIRECT_PUBLISH_TIMEOUT, Runtime

from .test_mqtt_client import Broker, broker  # noqa: F401 - the broker fixture

WAIT = 15.0
SEEN: list[str] = []
KEPT: list[str] = []


class Note(Event, topic="notes/added"):
    text: str


class Writer(Service, emits=[Note]):  # no collections: its emits have no unit of work
    pass


class Reader(Service):  # neither collections nor events: no inbox
    @on(Note)
    async def got(self, event: Note) -> None:
        SEEN.append(event.text)


class Keeper(Service):  # a collection: handlers run with the inbox
    kept = collection("kept", str)

    @on(Note)
    async def got(self, event: Note) -> None:
        await self.kept.put(event.text, event.text)
        KEPT.append(event.text)


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


class Sides:
    def __init__(self, url: str, folder: Path) -> None:
        self.app = App(f"paths{uuid.uuid4().hex[:8]}", [Writer, Reader, Keeper])
        self.url, self.folder = url, folder
        self.runtimes: list[Runtime] = []

    async def start(self, services: list[str]) -> Runtime:
        name = "-".join(services)
        bus = MqttBus(self.url, self.app.name, f"{self.app.name}-{name}", durable=True)
        runtime = Runtime(self.app, services, bus, data_dir=self.folder / name, instance=name)
        await runtime.start()
        self.runtimes.append(runtime)
        return runtime

    async def stop(self) -> None:
        for runtime in reversed(self.runtimes):
            await runtime.stop()


@pytest.fixture
async def sides(broker: Broker, tmp_path: Path) -> AsyncIterator[Sides]:  # noqa: F811
    SEEN.clear()
    KEPT.clear()
    running = Sides(f"mqtt://127.0.0.1:{broker.port}", tmp_path)
    try:
        yield running
    finally:
        await running.stop()


async def test_a_stateless_emit_is_published_at_once_not_through_the_outbox(sides: Sides) -> None:
    await sides.start(["reader", "keeper"])
    writer = await sides.start(["writer"])
    await writer.instances["writer"].emit(Note("first"))
    assert writer.bus.stats.published == 1  # type: ignore[attr-defined]
    assert await writer.stores["writer"].outbox_pending_count() == 0
    await until(lambda: SEEN == ["first"] and KEPT == ["first"])


async def test_with_the_broker_hung_an_emit_goes_to_the_outbox_and_arrives_later(
    sides: Sides,
    broker: Broker,  # noqa: F811
) -> None:
    await sides.start(["reader", "keeper"])
    writer = await sides.start(["writer"])
    os.kill(broker.process.pid, signal.SIGSTOP)  # connected as far as the client knows; no PUBACK
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(WAIT):
            await writer.instances["writer"].emit(Note("while hung"))
        assert loop.time() - started >= DIRECT_PUBLISH_TIMEOUT * 0.9  # it waited for the broker first
        assert await writer.stores["writer"].outbox_pending_count() == 1
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
    # The timed-out publish reached the broker too: the reader (no inbox) may see it twice, the
    # keeper (same event id, its inbox) once.
    await until(lambda: "while hung" in SEEN and KEPT == ["while hung"])
    assert set(SEEN) == {"while hung"} and len(SEEN) <= 2
    store = writer.stores["writer"]
    async with asyncio.timeout(WAIT):  # the relay deletes the row once the broker took it
        while await store.outbox_pending_count():
            await asyncio.sleep(0.05)


async def test_a_redelivered_event_runs_a_stateless_handler_again_and_a_stateful_one_once(
    sides: Sides,
) -> None:
    consumer = await sides.start(["reader", "keeper"])
    writer = await sides.start(["writer"])
    source = f"/{sides.app.name}/writer"
    again = Envelope(topic="notes/added", type="Note", source=source, event=Note("twice"))
    await writer.bus.publish(again)
    await writer.bus.publish(again)  # the same event id, as a broker redelivers it
    await writer.bus.publish(Envelope(topic="notes/added", type="Note", source=source, event=Note("after")))
    acked = consumer.bus.stats  # type: ignore[attr-defined]
    await until(lambda: acked.acked == 6)  # 3 events, each to the reader's and the keeper's group
    assert sorted(SEEN) == ["after", "twice", "twice"]
    assert sorted(KEPT) == ["after", "twice"]
