"""Durable state: units of work, typed collections, the outbox relay, the inbox, dead letters.

Shared behaviour runs on both backends (a SQLite file, the local PostgreSQL); what only the
SQLite file promises (surviving SIGKILL, several processes on one file) is tested on SQLite.
"""

from __future__ import annotations

import asyncio
import collections
import math
import signal
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from archipel import Event, Service, rpc
from archipel._events.bus import Envelope
from archipel._model import describe
from archipel._state import (
    Collection,
    CollectionField,
    DeadLetterRecord,
    DuplicateDelivery,
    Inbox,
    InvalidValue,
    OutboxRecord,
    OutboxRelay,
    PostgresStore,
    SqliteStore,
    State,
    StateError,
    Store,
    UnitOfWork,
    collection,
    current_work,
    open_store,
    stage_event,
    unit_of_work,
)
from archipel._state.records import parse_replay_topic
from archipel._telemetry.metrics import REGISTRY
from tests.conftest import eventually
from tests.test_state_postgres import PG_URL, drop_schema, new_schema_name, requires_postgres


class Item(msgspec.Struct):
    sku: str
    quantity: int


class CartContents(msgspec.Struct):
    items: list[Item] = []
    discount: float = 0.0


class OrderPlaced(Event, topic="orders/placed"):
    order_id: str


def order_placed(order_id: str) -> OutboxRecord:
    return OutboxRecord.from_envelope(
        Envelope(
            topic="orders/placed",
            type="OrderPlaced",
            source="/shop/checkout",
            traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
            event=OrderPlaced(order_id),
        )
    )


class Backend:
    """Makes store objects on one database: a second object is another replica, or a restart.

    PostgreSQL tests share one schema for the session (creating and dropping tables is most of a
    test's time there) and stay apart the way services do: each test's service names are its own.
    """

    def __init__(self, kind: str, tmp_path: Path, schema: str = "") -> None:
        self.kind = kind
        self._dir = tmp_path
        self._schema = schema
        self._token = uuid.uuid4().hex[:8]
        self._made: list[Store] = []

    def store(self, service: str = "svc") -> Store:
        service = f"{service}-{self._token}"
        made: Store = (
            SqliteStore(self._dir / f"{service}.sqlite3", service=service)
            if self.kind == "sqlite"
            else PostgresStore(PG_URL, service=service, schema=self._schema, max_size=4)
        )
        self._made.append(made)
        return made

    async def opened(self, service: str = "svc") -> Store:
        made = self.store(service)
        await made.open()
        return made

    async def close_all(self) -> None:
        for made in self._made:
            await made.close()


@pytest.fixture(scope="session")
def shared_postgres_schema() -> Iterator[str]:
    schema = new_schema_name()
    yield schema
    asyncio.run(drop_schema(schema))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=requires_postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    schema = request.getfixturevalue("shared_postgres_schema") if request.param == "postgres" else ""
    made = Backend(request.param, tmp_path, schema)
    try:
        yield made
    finally:
        await made.close_all()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.opened()


def carts_of(store: Store) -> Collection[CartContents]:
    return Collection(lambda: store, "carts", CartContents)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds (a plain or an async predicate)."""

    async def probe() -> bool | None:
        result = condition()
        held = await result if isinstance(result, Awaitable) else result
        return True if held else None

    await eventually(probe, timeout=timeout, every=0.005)


# --- units of work and collections -------------------------------------------------------------


async def test_a_unit_of_work_commits_state_and_events_together(store: Store) -> None:
    carts = carts_of(store)
    async with unit_of_work(store) as work:
        assert current_work(store) is work
        await carts.put("u1", CartContents([Item("a", 2)]))
        await stage_event(store, order_placed("o1"))
        # Buffered only: nothing reaches the database before the block ends.
        assert await store.get("carts", "u1") is None
        assert await store.outbox_pending_count() == 0
    assert current_work() is None
    assert await carts.get("u1") == CartContents([Item("a", 2)])
    [claimed] = await store.outbox_claim("relay", 10, 30)
    envelope = claimed.to_envelope()
    assert envelope.event is None  # from disk: consumers decode the payload
    assert msgspec.json.decode(envelope.payload or b"", type=OrderPlaced) == OrderPlaced("o1")
    assert (envelope.topic, envelope.type, envelope.source) == (
        "orders/placed",
        "OrderPlaced",
        "/shop/checkout",
    )
    assert envelope.traceparent == order_placed("x").traceparent


async def test_an_exception_discards_state_events_and_inbox_marks(store: Store) -> None:
    carts = carts_of(store)
    await carts.put("u1", CartContents([Item("a", 1)]))
    with pytest.raises(RuntimeError, match="payment declined"):
        async with unit_of_work(store):
            await carts.put("u1", CartContents([Item("b", 9)]))
            await carts.put("u2", CartContents())
            await stage_event(store, order_placed("o1"))
            Inbox(store).mark("checkout.on_paid", "e1")
            raise RuntimeError("payment declined")
    assert await carts.get("u1") == CartContents([Item("a", 1)])
    assert await carts.get("u2") is None
    assert await store.outbox_pending_count() == 0
    assert not await store.inbox_seen("checkout.on_paid", "e1")


async def test_reads_see_the_unit_of_work_before_the_store(store: Store) -> None:
    names = Collection(lambda: store, "names", str)
    for key in ("a1", "a2", "a3", "b1"):
        await names.put(key, f"stored {key}")
    async with unit_of_work(store):
        await names.put("a2", "new a2")
        await names.delete("a1")
        await names.put("a0", "new a0")
        assert await names.get("a1") is None
        assert await names.get("a2") == "new a2"
        assert await names.items("a") == [("a0", "new a0"), ("a2", "new a2"), ("a3", "stored a3")]
        assert await names.items("a", limit=2) == [("a0", "new a0"), ("a2", "new a2")]
        assert await names.items(reverse=True, limit=3) == [
            ("b1", "stored b1"),
            ("a3", "stored a3"),
            ("a2", "new a2"),
        ]
        assert await names.count() == 4
        assert await store.get("names", "a2") == b'"stored a2"'  # the store is untouched so far
    assert [key for key, _ in await names.items()] == ["a0", "a2", "a3", "b1"]
    assert await names.count() == 4


async def test_nested_blocks_join_and_other_stores_commit_on_their_own(backend: Backend) -> None:
    cart_store, ledger_store = await backend.opened("cart"), await backend.opened("ledger")
    carts, ledger = carts_of(cart_store), Collection(lambda: ledger_store, "entries", int)
    async with unit_of_work(cart_store) as outer:
        async with unit_of_work(cart_store) as inner:
            assert inner is outer
            await carts.put("u1", CartContents())
        assert await cart_store.get("carts", "u1") is None  # the outer block commits, not the inner
        with pytest.raises(RuntimeError, match="out of stock"):
            async with unit_of_work(cart_store):  # an inner block that fails takes back its own writes
                await carts.put("u1", CartContents([Item("gone", 1)]))
                await carts.put("u2", CartContents())
                await stage_event(cart_store, order_placed("o1"))
                raise RuntimeError("out of stock")
        assert (await carts.get("u1"), await carts.get("u2"), outer.outbox) == (CartContents(), None, [])
        # A monolith calls another service directly: its writes are not the caller's to commit.
        await ledger.put("direct", 1)
        assert await ledger_store.get("entries", "direct") == b"1"
        async with unit_of_work(ledger_store):
            await ledger.put("own block", 2)
        assert await ledger_store.get("entries", "own block") == b"2"
    assert await carts.get("u1") == CartContents()


async def test_a_task_outliving_its_unit_of_work_commits_on_its_own(store: Store) -> None:
    names = Collection(lambda: store, "names", str)
    go = asyncio.Event()

    async def later() -> None:
        await go.wait()
        await names.put("late", "written after the block")

    async with unit_of_work(store):
        task = asyncio.create_task(later())  # inherits the block's context
    go.set()
    await task
    assert await store.get("names", "late") == b'"written after the block"'


async def test_keys_are_ordered_by_code_point_and_found_by_prefix(store: Store) -> None:
    names = Collection(lambda: store, "names", int)
    keys = ["a", "ab", "a\U0010ffff", "a\U0010ffffz", "b", "Z", "é", "中", "😀", "a b"]
    for i, key in enumerate(keys):
        await names.put(key, i)
    assert [k for k, _ in await names.items()] == sorted(keys)
    assert [k for k, _ in await names.items(reverse=True)] == sorted(keys, reverse=True)
    assert [k for k, _ in await names.items("a")] == ["a", "a b", "ab", "a\U0010ffff", "a\U0010ffffz"]
    assert [k for k, _ in await names.items("a\U0010ffff")] == ["a\U0010ffff", "a\U0010ffffz"]
    assert [k for k, _ in await names.items("a", limit=2, reverse=True)] == ["a\U0010ffffz", "a\U0010ffff"]
    assert await names.count() == len(keys)
    assert await Collection(lambda: store, "other", int).count() == 0


async def test_bad_values_give_an_error_naming_the_collection_and_key(store: Store) -> None:
    carts = carts_of(store)
    with pytest.raises(InvalidValue, match=r"collection 'carts', key 'u1': cannot store .* as CartContents"):
        await carts.put("u1", CartContents([Item("a", "two")]))  # type: ignore[arg-type]
    with pytest.raises(InvalidValue, match=r"collection 'carts', key 'u2'"):
        await carts.put("u2", CartContents(discount=math.nan))  # JSON null: could never be read back
    with pytest.raises(InvalidValue, match=r"collection 'carts', key 'u3'"):
        await carts.put("u3", {1, 2})  # type: ignore[arg-type]
    with pytest.raises(InvalidValue, match=r"collection 'carts': invalid key"):
        await carts.put("nul\0key", CartContents())
    assert await carts.count() == 0
    # A value written by something else that no longer matches the type:
    await store.commit(UnitOfWork(store, writes={("carts", "u9"): b'{"items": 3}'}))
    with pytest.raises(InvalidValue, match=r"collection 'carts', key 'u9': the stored value is not a valid"):
        await carts.get("u9")
    with pytest.raises(InvalidValue, match=r"key 'u9'"):
        await carts.items()


async def test_a_collection_declared_on_a_service(tmp_path: Path) -> None:
    class Cart(Service):
        carts = collection("carts", CartContents)

        @rpc
        async def add(self, user: str, item: Item) -> CartContents:
            contents = await self.carts.get(user) or CartContents()
            contents.items.append(item)
            await self.carts.put(user, contents)
            return contents

    spec = describe(Cart)
    assert list(spec.methods) == ["add"] and not spec.dependencies
    assert isinstance(Cart.carts, CollectionField)
    outside = Cart()
    with pytest.raises(RuntimeError, match=r"Cart\.carts: the service has no state store"):
        await outside.add("u1", Item("a", 1))
    async with SqliteStore(tmp_path / "cart.sqlite3") as store:
        running = Cart()
        running._archipel_store = store  # type: ignore[attr-defined]  # what the runtime does
        await running.add("u1", Item("a", 1))
        assert await running.add("u1", Item("b", 2)) == CartContents([Item("a", 1), Item("b", 2)])
        assert running.carts is running.carts  # bound once per instance
        state = State(lambda: store)
        async with state.transaction():
            await state.collection("carts", CartContents).delete("u1")
            assert await store.get("carts", "u1") is not None
        assert await running.carts.get("u1") is None


# --- the outbox and its relay ------------------------------------------------------------------


async def test_outbox_leases_keep_replicas_apart_and_expire(backend: Backend) -> None:
    a, b = await backend.opened(), await backend.opened()
    records = [order_placed(f"o{i}") for i in range(3)]
    for record in records:
        await a.enqueue(record)
    await a.enqueue(records[0])  # the same event id twice is kept once
    held_by_a = await a.outbox_claim("replica-a", 2, lease_seconds=0.2)
    assert [r.id for r in held_by_a] == [r.id for r in records[:2]]  # oldest first
    assert [r.id for r in await b.outbox_claim("replica-b", 10, 30)] == [records[2].id]
    assert await b.outbox_claim("replica-b", 10, 30) == []
    # replica-a dies without publishing: once its lease runs out, replica-b takes its rows over.
    taken = await eventually(lambda: _claimed(b, "replica-b"), timeout=5)
    assert [r.id for r in taken] == [r.id for r in held_by_a]
    await b.outbox_release([records[2].id])  # handed back: claimable at once, no lease to wait for
    assert [r.id for r in await a.outbox_claim("replica-a", 10, 30)] == [records[2].id]
    await b.outbox_done([r.id for r in records])
    assert await a.outbox_pending_count() == 0


async def test_a_restarted_owner_takes_back_its_leases_at_once(backend: Backend) -> None:
    store = await backend.opened()
    record = order_placed("o-restart")
    await store.enqueue(record)
    assert [r.id for r in await store.outbox_claim("checkout.0", 10, lease_seconds=30)] == [record.id]
    assert await store.outbox_claim("checkout.1", 10, 30) == []  # leased: another owner waits
    assert await store.outbox_release_owner("checkout.0") == 1  # the same name, after a crash
    assert [r.id for r in await store.outbox_claim("checkout.0", 10, 30)] == [record.id]


async def _claimed(store: Store, owner: str) -> list[OutboxRecord] | None:
    return await store.outbox_claim(owner, 10, 30) or None


async def test_the_relay_publishes_then_removes_events(backend: Backend) -> None:
    store, other_replica = await backend.opened(), await backend.opened()
    gate = asyncio.Event()
    published: list[Envelope] = []

    async def publish(envelope: Envelope) -> None:
        await gate.wait()
        published.append(envelope)

    # A sweep every minute: the events can only leave in time because the commit hands them over.
    relay = OutboxRelay(store, publish, owner="r1", sweep_interval=60)
    await relay.start()
    try:
        async with unit_of_work(store):
            for i in range(5):
                await stage_event(store, order_placed(f"o{i}"))
        assert relay.in_flight == 5  # handed over by the commit itself
        assert await other_replica.outbox_claim("r2", 10, 30) == []  # inserted leased to r1
        gate.set()
        await until(lambda: len(published) == 5)
        await until(lambda: _empty(store))
    finally:
        await relay.stop()
    orders = [msgspec.json.decode(e.payload or b"", type=OrderPlaced).order_id for e in published]
    assert sorted(orders) == [f"o{i}" for i in range(5)]
    assert metric("archipel_outbox_published_total", service=store.service) == 5


async def test_events_beyond_the_free_slots_are_claimed_as_slots_free_up(store: Store) -> None:
    gate = asyncio.Event()
    published: list[str] = []

    async def publish(envelope: Envelope) -> None:
        await gate.wait()
        published.append(envelope.id)

    relay = OutboxRelay(store, publish, owner="r1", max_in_flight=2, sweep_interval=60)
    await relay.start()
    try:
        records = [order_placed(f"o{i}") for i in range(7)]
        async with unit_of_work(store):
            for record in records:
                await stage_event(store, record)
        assert relay.in_flight == 2
        gate.set()
        await until(lambda: len(published) == len(records))
        await until(lambda: _empty(store))
    finally:
        await relay.stop()
    assert sorted(published) == sorted(r.id for r in records)


async def _empty(store: Store) -> bool:
    return await store.outbox_pending_count() == 0


async def test_the_relay_survives_publish_failures_without_losing_events(backend: Backend) -> None:
    store = await backend.opened()
    service = store.service
    attempts: collections.Counter[str] = collections.Counter()
    delivered: collections.Counter[str] = collections.Counter()

    async def flaky(envelope: Envelope) -> None:
        attempts[envelope.id] += 1
        if sum(attempts.values()) <= 7:
            raise ConnectionError("broker unreachable")
        delivered[envelope.id] += 1

    records = [order_placed(f"o{i}") for i in range(10)]
    relay = OutboxRelay(store, flaky, owner="r1", retry_initial=0.001, retry_max=0.01, sweep_interval=0.02)
    await relay.start()
    try:
        for record in records:
            await stage_event(store, record)  # outside a unit of work: committed at once
        await until(lambda: len(delivered) == len(records))
        await until(lambda: _empty(store))
        await until(lambda: metric("archipel_outbox_pending", service=service) == 0)
    finally:
        await relay.stop()
    assert delivered == {r.id: 1 for r in records}  # one relay, leases held: no duplicate
    assert metric("archipel_outbox_publish_failures_total", service=service) == 7


async def test_two_relays_share_one_outbox(backend: Backend) -> None:
    stores = [await backend.opened(), await backend.opened()]
    records = [order_placed(f"o{i}") for i in range(60)]
    for record in records:
        await stores[0].enqueue(record)
    busy: collections.Counter[str] = collections.Counter()
    both_busy = asyncio.Event()
    published: list[tuple[str, str]] = []

    def publisher(owner: str) -> Callable[[Envelope], Awaitable[None]]:
        async def publish(envelope: Envelope) -> None:
            busy[owner] += 1
            if len(busy) == 2:
                both_busy.set()
            await both_busy.wait()  # neither relay finishes before the other holds rows too
            published.append((owner, envelope.id))

        return publish

    relays = [
        OutboxRelay(store, publisher(f"r{i}"), owner=f"r{i}", max_in_flight=4, sweep_interval=0.02)
        for i, store in enumerate(stores)
    ]
    for relay in relays:
        await relay.start()
    try:
        await until(lambda: len(published) >= len(records))
        await until(lambda: _empty(stores[0]))
    finally:
        for relay in relays:
            await relay.stop()
    ids = [event_id for _, event_id in published]
    assert sorted(ids) == sorted(r.id for r in records) and len(ids) == len(set(ids))
    assert {owner for owner, _ in published} == {"r0", "r1"}


async def test_stop_leaves_unpublished_events_for_the_next_start(backend: Backend) -> None:
    store = await backend.opened()
    never = asyncio.Event()

    async def stuck(envelope: Envelope) -> None:
        await never.wait()

    relay = OutboxRelay(store, stuck, owner="before", stop_timeout=0.05, sweep_interval=60)
    await relay.start()
    await stage_event(store, order_placed("o1"))
    await until(lambda: relay.in_flight == 1)
    await relay.stop()
    assert await store.outbox_pending_count() == 1

    # A restart: a new store object and relay. The row was handed back, so no 30 s lease to wait.
    restarted = await backend.opened()
    published: list[str] = []

    async def publish(envelope: Envelope) -> None:
        published.append(envelope.id)

    relay = OutboxRelay(restarted, publish, owner="after", lease_seconds=30, sweep_interval=60)
    await relay.start()
    try:
        await until(lambda: len(published) == 1)
        await until(lambda: _empty(restarted))
    finally:
        await relay.stop()


# --- inbox, dead letters, durability ---------------------------------------------------------


async def test_the_inbox_turns_a_redelivery_into_a_no_op(store: Store) -> None:
    inbox, totals = Inbox(store), Collection(lambda: store, "totals", int)
    handler = f"ledger.record_{uuid.uuid4().hex[:6]}"

    async def deliver(event_id: str, amount: int) -> str:
        if await inbox.seen(handler, event_id):
            return "duplicate"
        async with unit_of_work(store):
            inbox.mark(handler, event_id)
            await totals.put("o1", (await totals.get("o1") or 0) + amount)
        return "handled"

    assert [await deliver("e1", 5), await deliver("e1", 5), await deliver("e2", 3)] == [
        "handled",
        "duplicate",
        "handled",
    ]
    assert await totals.get("o1") == 8
    assert metric("archipel_inbox_duplicates_total", service=store.service, handler=handler) == 1
    with pytest.raises(RuntimeError, match="needs a unit of work"):
        inbox.mark(handler, "e3")
    async with unit_of_work(store):
        inbox.mark(handler, "e3")
        inbox.mark(handler, "e3")  # twice in one unit of work is one mark, not a duplicate
    assert await store.inbox_prune(older_than_seconds=3600) == 0
    assert await store.inbox_prune(older_than_seconds=-1) == 3
    assert not await inbox.seen(handler, "e1")


async def test_racing_deliveries_of_one_event_change_state_once(store: Store) -> None:
    inbox, totals = Inbox(store), Collection(lambda: store, "totals", int)
    both_read = asyncio.Barrier(2)

    async def deliver() -> str:
        assert not await inbox.seen("ledger.record", "e1")  # both pass the check...
        try:
            async with unit_of_work(store):
                inbox.mark("ledger.record", "e1")
                total = await totals.get("o1") or 0
                await both_read.wait()  # ...and both run the handler before either commits
                await totals.put("o1", total + 5)
        except DuplicateDelivery as exc:
            assert (exc.handler, exc.event_id) == ("ledger.record", "e1")
            return "discarded"
        return "committed"

    assert sorted(await asyncio.gather(deliver(), deliver())) == ["committed", "discarded"]
    assert await totals.get("o1") == 5


async def test_dead_letters_are_kept_listed_removed_and_redriven(store: Store) -> None:
    failed = order_placed("o1").to_envelope()
    first = DeadLetterRecord.from_envelope(failed, "email.confirm", "ConnectionError: smtp down")
    second = DeadLetterRecord.from_envelope(failed, "ledger.record", "invalid payload")
    await store.record_dead(first)
    await store.record_dead(second)
    # The same failure recorded again after a redelivery: the first letter stays, alone.
    await store.record_dead(DeadLetterRecord.from_envelope(failed, "email.confirm", "later reason"))
    assert await store.list_dead() == [first, second]
    assert await store.list_dead(limit=1) == [first]
    # Re-drive: the event again under its own id, addressed to the handler that gave up on it.
    await store.enqueue(first.to_outbox())
    assert await store.remove_dead([first.id, "unknown"]) == 1
    [again] = await store.outbox_claim("relay", 10, 30)
    assert (again.id, again.payload, again.source) == (failed.id, failed.payload, failed.source)
    assert parse_replay_topic(again.topic) == ("email.confirm", failed.topic)
    assert parse_replay_topic(failed.topic) is None  # an ordinary event is published
    assert await store.list_dead() == [second]


async def test_state_survives_closing_and_reopening_the_store(backend: Backend) -> None:
    store = await backend.opened()
    async with unit_of_work(store):
        await carts_of(store).put("u1", CartContents([Item("a", 1)]))
        await stage_event(store, order_placed("o1"))
        Inbox(store).mark("email.confirm", "e1")
    letter = DeadLetterRecord.from_envelope(order_placed("o2").to_envelope(), "email.confirm", "boom")
    await store.record_dead(letter)
    await store.close()
    with pytest.raises(StateError, match="is not open"):
        await store.get("carts", "u1")

    reopened = await backend.opened()
    assert await carts_of(reopened).get("u1") == CartContents([Item("a", 1)])
    assert await reopened.outbox_pending_count() == 1
    assert await reopened.inbox_seen("email.confirm", "e1")
    assert await reopened.list_dead() == [letter]


_COMMIT_THEN_SIGKILL = """
import asyncio, os, signal, sys
from archipel._events.bus import Envelope
from archipel._state import Collection, OutboxRecord, SqliteStore, stage_event, unit_of_work

async def main():
    store = SqliteStore(sys.argv[1])
    await store.open()
    async with unit_of_work(store):
        await Collection(lambda: store, "carts", str).put("u1", "committed")
        await stage_event(store, OutboxRecord.from_envelope(Envelope("t", "T", "/s", payload=b"1")))
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint, no atexit

asyncio.run(main())
"""


async def test_a_sqlite_commit_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "cart.sqlite3"
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", _COMMIT_THEN_SIGKILL, str(path))
    assert await asyncio.wait_for(child.wait(), 30) == -signal.SIGKILL
    assert _size(Path(f"{path}-wal")) > 0  # the commit is in the write-ahead log
    async with SqliteStore(path) as store:
        assert await Collection(lambda: store, "carts", str).get("u1") == "committed"
        assert await store.outbox_pending_count() == 1


def _size(path: Path) -> int:
    return path.stat().st_size


_WRITER = """
import asyncio, sys
from archipel._events.bus import Envelope
from archipel._state import Collection, OutboxRecord, SqliteStore

async def main():
    store = SqliteStore(sys.argv[1], service="cart")
    await store.open()
    print("ready", flush=True)
    sys.stdin.readline()
    names = Collection(lambda: store, "names", int)
    for i in range(int(sys.argv[2])):
        await names.put(f"child-{i}", i)
        await store.enqueue(OutboxRecord.from_envelope(Envelope("t", "T", "/s", payload=b"1")))
    await store.close()

asyncio.run(main())
"""


async def test_two_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    path, count = tmp_path / "cart.sqlite3", 400
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WRITER,
        str(path),
        str(count),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    assert await asyncio.wait_for(child.stdout.readline(), 30) == b"ready\n"
    async with SqliteStore(path, service="cart") as store:
        names = Collection(lambda: store, "names", int)
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        claimed = 0
        for i in range(count):  # both processes write at the same time; none fails as locked
            await names.put(f"parent-{i}", i)
            claimed += len(await store.outbox_claim("parent", 10, 30))
        assert await asyncio.wait_for(child.wait(), 30) == 0
        assert await names.count() == 2 * count
        claimed += len(await store.outbox_claim("parent", 10 * count, 30))
        assert claimed == count  # the child's events, each claimed once


async def test_a_database_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cart.sqlite3"
    async with SqliteStore(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(StateError, match="schema version 999 is newer"):
        await SqliteStore(path).open()


async def test_open_store_gives_each_service_a_sqlite_file_by_default(tmp_path: Path) -> None:
    store = open_store("cart", data_dir=tmp_path / "data", url=None)
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "data" / "cart.sqlite3"
    async with store:
        assert store.path.exists()
    with pytest.raises(ValueError, match="must start with postgresql://"):
        open_store("cart", data_dir=tmp_path, url="mysql://db/x")
    with pytest.raises(ValueError, match="invalid service name"):
        open_store("../cart", data_dir=tmp_path)
