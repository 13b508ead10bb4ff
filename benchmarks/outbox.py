"""What the transactional outbox costs per emitted event, next to publishing directly.

An emit through the outbox is a unit of work holding one event: its commit (one transaction),
then the relay's claim, the publish and the delete of the published row. The direct path builds
the same envelope and awaits the same no-op publish. The outbox path is timed two ways:

- latency: one emit at a time, each awaited until the relay has published it;
- burst: emits back to back, then until the outbox is empty (claims and deletes come in batches).

Also timed alone: the commit of a unit of work holding one event (no relay), one state write
outside a unit of work, and a hop to a thread and back, which is why SQLite calls run inline.

    python benchmarks/outbox.py [--events 2000] [--repeats 5] [--postgres URL | --no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from archipel import Event, Struct
from archipel._events.bus import Envelope
from archipel._state import (
    Collection,
    OutboxRecord,
    OutboxRelay,
    PostgresStore,
    SqliteStore,
    Store,
    stage_event,
    unit_of_work,
)

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


class Money(Struct):
    currency: str
    units: int


class OrderPlaced(Event, topic="orders/placed"):
    order_id: str
    total: Money


def envelope(i: int) -> Envelope:
    return Envelope(
        topic="orders/placed",
        type="OrderPlaced",
        source="/bench/checkout",
        event=OrderPlaced(order_id=f"o{i}", total=Money("EUR", i)),
    )


async def emit(store: Store, i: int) -> None:
    async with unit_of_work(store):
        await stage_event(store, OutboxRecord.from_envelope(envelope(i)))


async def noop(envelope: Envelope) -> None:
    return None


async def direct(store: Store, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await noop(envelope(i))
    return time.perf_counter() - started


async def commit_only(store: Store, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await emit(store, i)
    elapsed = time.perf_counter() - started
    leftover = await store.outbox_claim("cleanup", n, 30)
    await store.outbox_done([r.id for r in leftover])
    return elapsed


async def state_write(store: Store, n: int) -> float:
    totals = Collection(lambda: store, "totals", Money)
    started = time.perf_counter()
    for i in range(n):
        await totals.put(f"k{i % 100}", Money("EUR", i))
    return time.perf_counter() - started


async def thread_hop(store: Store, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await asyncio.to_thread(int)
    return time.perf_counter() - started


async def drained(store: Store) -> None:
    while await store.outbox_pending_count():
        await asyncio.sleep(0.0005)


async def outbox_latency(store: Store, n: int) -> float:
    published = asyncio.Event()

    async def publish(envelope: Envelope) -> None:
        published.set()

    relay = OutboxRelay(store, publish, owner="bench", sweep_interval=60)
    await relay.start()
    try:
        started = time.perf_counter()
        for i in range(n):
            published.clear()
            await emit(store, i)
            await published.wait()
        await drained(store)
        return time.perf_counter() - started
    finally:
        await relay.stop()


async def outbox_burst(store: Store, n: int) -> float:
    count = 0
    everything = asyncio.Event()

    async def publish(envelope: Envelope) -> None:
        nonlocal count
        count += 1
        if count == n:
            everything.set()

    relay = OutboxRelay(store, publish, owner="bench", sweep_interval=60)
    await relay.start()
    try:
        started = time.perf_counter()
        for i in range(n):
            await emit(store, i)
        await everything.wait()
        await drained(store)
        return time.perf_counter() - started
    finally:
        await relay.stop()


Case = Callable[[Store, int], Awaitable[float]]
CASES: list[tuple[str, Case]] = [
    ("direct no-op publish", direct),
    ("outbox emit, latency", outbox_latency),
    ("outbox emit, burst", outbox_burst),
    ("commit of one event", commit_only),
    ("one state write", state_write),
    ("thread hop (to_thread)", thread_hop),
]


async def measure(store: Store, events: int, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` microseconds per event for each case, rounds interleaved."""
    best = {name: float("inf") for name, _ in CASES}
    await commit_only(store, min(events, 200))  # warm up: tables, statement caches, pages
    for _ in range(repeats):
        for name, case in CASES:
            best[name] = min(best[name], await case(store, events) / events * 1e6)
    return best


@asynccontextmanager
async def sqlite_store() -> AsyncIterator[Store]:
    with tempfile.TemporaryDirectory() as directory:
        async with SqliteStore(Path(directory) / "bench.sqlite3") as store:
            yield store


@asynccontextmanager
async def postgres_store(url: str) -> AsyncIterator[Store]:
    asyncpg = importlib.import_module("asyncpg")
    schema = f"archipel_bench_{uuid.uuid4().hex[:8]}"
    try:
        async with PostgresStore(url, service="bench", schema=schema) as store:
            yield store
    finally:
        conn = await asyncpg.connect(url)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


async def run(events: int, repeats: int, postgres: str | None) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    async with sqlite_store() as store:
        results["sqlite"] = await measure(store, events, repeats)
    if postgres:
        try:
            async with postgres_store(postgres) as store:
                results["postgres"] = await measure(store, events, repeats)
        except (ImportError, OSError) as exc:
            print(f"postgres skipped: {exc!r}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--postgres", default=PG_URL, help="database URL (default: %(default)s)")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(run(args.events, args.repeats, None if args.no_postgres else args.postgres))
    backends = list(results)
    print(f"outbox, best of {args.repeats} x {args.events:,} events; microseconds per event")
    print(f"{'':<28}" + "".join(f"{name:>12}" for name in backends))
    for name, _ in CASES:
        print(f"{name:<28}" + "".join(f"{results[b][name]:>12.1f}" for b in backends))
    for case in ("outbox emit, latency", "outbox emit, burst"):
        ratios = "".join(f"{results[b][case] / results[b]['direct no-op publish']:>11.0f}x" for b in backends)
        print(f"{'ratio ' + case.split(', ')[1] + ' / direct':<28}{ratios}")


if __name__ == "__main__":
    main()
