"""The default broker of `archipel run` keeps events for a consumer that is down.

Real processes, a real Mosquitto started by the supervisor, real signals. Calls go over plain
HTTP (the wire contract), so these tests depend on nothing but the supervisor and the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from archipel._deploy import brokers as brokers_module
from archipel._deploy.mosquitto import DATABASE_NAME
from archipel._deploy.plan import plan
from archipel._deploy.supervisor import Child, Supervisor
from archipel._events.bus import Envelope
from archipel._events.mqtt import MqttBus
from archipel._loader import load_app
from tests.conftest import eventually

pytestmark = pytest.mark.timeout(60)

SHOP = "tests.apps.shop:app"


@contextlib.asynccontextmanager
async def cluster(
    data_dir: Path, replicas: dict[str, int] | None = None, **options: Any
) -> AsyncIterator[Supervisor]:
    """The test shop as microservices on the default broker, its data in ``data_dir``."""
    app = load_app(SHOP)
    supervisor = Supervisor(
        SHOP,
        app,
        plan(app, "microservices", None, replicas),
        mode="microservices",
        data_dir=data_dir,
        **options,
    )
    await supervisor.start()
    try:
        yield supervisor
    finally:
        await supervisor.stop()


def child(supervisor: Supervisor, name: str, replica: int = 0) -> Child:
    return next(c for c in supervisor.children if c.name == name and c.replica == replica)


async def call(url: str, path: str, headers: dict[str, str] | None = None, **arguments: Any) -> Any:
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/{path}", json=arguments, headers=headers, timeout=timeout) as response,
    ):
        body = await response.json()
        assert response.status == 200, body
        return body


async def place_order(supervisor: Supervisor, user: str, quantity: int = 1) -> str:
    items = [{"sku": "a", "quantity": quantity}]
    order: str = await call(
        child(supervisor, "checkout").url, "checkout/place_order", user_id=user, email="a@b", items=items
    )
    return order


async def recorded(supervisor: Supervisor, url: str, order: str) -> int | None:
    """The ledger's total for ``order`` (None until the event reached it)."""
    headers = supervisor.auth_headers("ledger")  # an internal method: the operator asks
    total: int | None = await call(url, "ledger/total_of", headers, order_id=order)
    return total


async def restarted(supervisor: Supervisor, child: Child, old_pid: int) -> None:
    async def ready() -> bool | None:
        return True if child.running and child.pid != old_pid and child.ready else None

    await eventually(ready, timeout=20)


async def test_events_published_while_a_consumer_is_killed_reach_it_after_its_restart(tmp_path: Path) -> None:
    async with cluster(tmp_path, restart_delay=2.0) as supervisor:
        assert supervisor.broker_kind == "mosquitto" and supervisor.durable
        ledger = child(supervisor, "ledger")
        first = await place_order(supervisor, "u0")
        assert await eventually(lambda: recorded(supervisor, ledger.url, first)) == 10
        old_pid = ledger.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await eventually(lambda: asyncio.sleep(0, ledger.last_exit))  # the supervisor saw it die
        orders = [await place_order(supervisor, f"u{i}", i) for i in range(1, 4)]
        # The broker restarts while the consumer is still down: Mosquitto forgets shared
        # subscriptions on restart, so these are kept only because the supervisor restores them.
        await supervisor.restart_broker()
        orders += [await place_order(supervisor, f"u{i}", i) for i in range(4, 6)]
        assert not ledger.running, "the orders must be placed while the consumer is down"
        await restarted(supervisor, ledger, old_pid)
        for i, order in enumerate(orders, start=1):
            assert await eventually(lambda order=order: recorded(supervisor, ledger.url, order)) == 10 * i
        assert ledger.last_exit == -signal.SIGKILL and ledger.restarts == 1


class Inbox:
    def __init__(self) -> None:
        self.ids: set[str] = set()

    async def __call__(self, envelope: Envelope) -> None:
        self.ids.add(envelope.id)


def envelope(number: int) -> Envelope:
    return Envelope(topic="orders/placed", type="OrderPlaced", source="test", id=f"e{number}", payload=b"{}")


@pytest.mark.parametrize("graceful", [True, False], ids=["sigterm", "sigkill-after-autosave"])
async def test_events_queued_for_a_stopped_consumer_survive_a_broker_restart(
    tmp_path: Path, graceful: bool
) -> None:
    app = load_app(SHOP)
    plans = plan(app, "microservices", None, None)
    supervisor = Supervisor(SHOP, app, plans, mode="microservices", data_dir=tmp_path, deployment="kept")
    await supervisor.start()
    for process in list(supervisor.children):  # the broker's logins stay; the test plays the processes
        await supervisor.retire(process)
    buses: list[MqttBus] = []

    async def consumer(inbox: Inbox) -> MqttBus:
        assert supervisor.broker_url is not None
        bus = MqttBus(
            supervisor.broker_url,
            "kept",
            "kept-ledger-0",
            durable=True,
            **supervisor.logins.process("ledger"),
        )
        bus.subscribe("ledger", "orders/placed", inbox)
        buses.append(bus)
        await bus.start()
        return bus

    try:
        await (await consumer(Inbox())).stop()  # the session keeps its subscription while away
        assert supervisor.broker_url is not None
        producer = MqttBus(
            supervisor.broker_url,
            "kept",
            "kept-checkout-0",
            durable=False,
            **supervisor.logins.process("checkout"),
        )
        buses.append(producer)
        await producer.start()
        for number in range(20):
            await producer.publish(envelope(number))
        published = time.time()
        await producer.stop()
        if not graceful:
            # A SIGKILL loses what changed since the last autosave: wait for one, then kill.
            database = tmp_path / "broker" / DATABASE_NAME

            async def saved() -> bool | None:
                with contextlib.suppress(FileNotFoundError):
                    return True if database.stat().st_mtime > published else None
                return None

            await eventually(saved, timeout=5)
        await supervisor.restart_broker(graceful=graceful)
        inbox = Inbox()
        await consumer(inbox)
        expected = {f"e{number}" for number in range(20)}
        await eventually(lambda: asyncio.sleep(0, True if inbox.ids == expected else None))
    finally:
        for bus in buses:
            await bus.stop()
        await supervisor.stop()


@pytest.mark.parametrize("failure", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
async def test_the_watchdog_restarts_a_failed_broker_and_clients_reconnect(
    tmp_path: Path, failure: signal.Signals
) -> None:
    async with cluster(tmp_path, probe_interval=0.3) as supervisor:
        ledger = child(supervisor, "ledger")
        first = await place_order(supervisor, "u0")
        assert await eventually(lambda: recorded(supervisor, ledger.url, first)) == 10
        broker = supervisor.broker
        assert broker is not None and broker.pid is not None
        old_pid = broker.pid
        # A hung broker still completes TCP handshakes (the kernel does): only the MQTT-level
        # probe sees it, after three failed probes (0.3 s apart here, 1 s by default).
        os.kill(old_pid, failure)

        async def back() -> bool | None:
            return True if broker.pid != old_pid and supervisor.health.state == "ok" else None

        await eventually(back, timeout=15)
        assert supervisor.health.restarts == 1
        order = await place_order(supervisor, "u1", 3)  # checkout's client reconnected to publish
        assert await eventually(lambda: recorded(supervisor, ledger.url, order), timeout=15) == 30
        assert not any(c.restarts for c in supervisor.children)  # no service restarted for it


async def test_two_deployments_on_one_broker_share_nothing(
    tmp_path: Path, archipel_mosquitto_url: str
) -> None:
    seen: dict[str, list[str]] = {"blue": [], "green": []}  # event topics under each topic root
    observers = []
    for root, topics in seen.items():

        async def record(envelope: Envelope, topics: list[str] = topics) -> None:
            topics.append(envelope.topic)

        observer = MqttBus(archipel_mosquitto_url, root, client_id=f"{root}-observer", durable=False)
        observer.observe(record)
        await observer.start()
        observers.append(observer)
    try:
        async with (
            cluster(tmp_path / "blue", broker=archipel_mosquitto_url, deployment="blue") as blue,
            cluster(tmp_path / "green", broker=archipel_mosquitto_url, deployment="green") as green,
        ):
            # Same app, same process names: only the deployment tells their client ids apart.
            placed = {"blue": await place_order(blue, "u1"), "green": await place_order(green, "u2")}
            clusters = {"blue": blue, "green": green}
            ledgers = {name: child(cluster, "ledger").url for name, cluster in clusters.items()}
            for name, order in placed.items():
                assert (
                    await eventually(
                        lambda name=name, order=order: recorded(clusters[name], ledgers[name], order)
                    )
                    == 10
                )
            assert await recorded(green, ledgers["green"], placed["blue"]) is None
            assert await recorded(blue, ledgers["blue"], placed["green"]) is None
    finally:
        for observer in observers:
            await observer.stop()
    assert seen == {"blue": ["orders/placed"], "green": ["orders/placed"]}


async def test_a_retired_replica_ends_its_session_so_no_share_is_stranded(tmp_path: Path) -> None:
    async with cluster(tmp_path, replicas={"ledger": 2}) as supervisor:
        kept, retired = child(supervisor, "ledger", 0), child(supervisor, "ledger", 1)
        await supervisor.retire(retired)
        assert retired not in supervisor.children and not retired.running
        orders = [await place_order(supervisor, f"u{i}") for i in range(10)]
        for order in orders:  # Mosquitto would queue about half of them for an idle session
            assert await eventually(lambda order=order: recorded(supervisor, kept.url, order)) == 10


async def test_without_mosquitto_the_embedded_broker_falls_back_to_rumqttd_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(brokers_module, "find_mosquitto", lambda: None)
    app = load_app(SHOP)
    supervisor = Supervisor(SHOP, app, [], mode="microservices", data_dir=tmp_path)
    assert supervisor.broker_kind == "rumqttd" and not supervisor.durable
    with caplog.at_level(logging.WARNING, "archipel.supervisor"):
        await supervisor.start()
    try:
        assert supervisor.health.state == "ok"
        assert "events published while a consumer is down are LOST" in caplog.text
    finally:
        await supervisor.stop()
    assert not (tmp_path / "broker").exists()  # rumqttd keeps nothing on disk
