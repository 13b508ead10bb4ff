"""The PostgreSQL state backend: what only it does (services sharing a database, concurrent
schema creation, SKIP LOCKED claims). Behaviour shared with SQLite is tested in test_state.py,
over both backends, with the helpers defined here.

Runs against ``ARCHIPEL_TEST_POSTGRES`` (default: the local server, trust auth); each test uses
a schema of its own, dropped afterwards. Skipped, with the reason, when the server is unreachable.
"""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from archipel._events.bus import Envelope
from archipel._state import Collection, OutboxRecord, PostgresStore, StateError, open_store

try:
    import asyncpg  # type: ignore[import-untyped]
except ImportError:  # the "postgres" extra is not installed
    asyncpg = None

PG_URL = os.environ.get("ARCHIPEL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@functools.cache
def postgres_unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    if asyncpg is None:
        return "asyncpg is not installed (pip install 'archipel[postgres]')"

    async def probe() -> None:
        conn = await asyncpg.connect(PG_URL, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at {PG_URL} is unreachable: {exc!r}"
    return None


# Skipped on a machine without PostgreSQL, never in CI: there scripts/services.sh starts it, and a
# PostgreSQL that cannot be reached must fail the run rather than hide the backend's tests.
requires_postgres = pytest.mark.skipif(
    postgres_unavailable() is not None and os.environ.get("CI") != "true", reason=postgres_unavailable() or ""
)
pytestmark = requires_postgres


def new_schema_name() -> str:
    return f"archipel_test_{uuid.uuid4().hex[:12]}"


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A fresh schema name for one test; the schema and its tables are dropped at the end."""
    schema = new_schema_name()
    try:
        yield schema
    finally:
        await drop_schema(schema)


def _record(topic: str = "orders/placed") -> OutboxRecord:
    return OutboxRecord.from_envelope(Envelope(topic=topic, type="OrderPlaced", source="/t/x", payload=b"{}"))


async def test_services_sharing_a_database_see_only_their_own_rows() -> None:
    async with (
        postgres_schema() as schema,
        PostgresStore(PG_URL, service="cart", schema=schema) as cart,
        PostgresStore(PG_URL, service="checkout", schema=schema) as checkout,
    ):
        await Collection(lambda: cart, "items", str).put("k", "cart's")
        await Collection(lambda: checkout, "items", str).put("k", "checkout's")
        await cart.enqueue(_record())
        assert await Collection(lambda: cart, "items", str).get("k") == "cart's"
        assert await Collection(lambda: checkout, "items", str).get("k") == "checkout's"
        assert (await cart.outbox_pending_count(), await checkout.outbox_pending_count()) == (1, 0)
        assert await checkout.outbox_claim("o", 10, 30) == []


async def test_stores_opening_at_once_create_the_schema_once() -> None:
    async with postgres_schema() as schema:
        stores = [PostgresStore(PG_URL, service=f"s{i}", schema=schema, max_size=2) for i in range(6)]
        await asyncio.gather(*(store.open() for store in stores))
        try:
            conn = await asyncpg.connect(PG_URL)
            version = await conn.fetchval(f"SELECT value FROM {schema}.meta WHERE key = 'schema_version'")
            await conn.close()
            assert version == "1"
        finally:
            await asyncio.gather(*(store.close() for store in stores))


async def test_concurrent_claims_take_disjoint_rows() -> None:
    async with (
        postgres_schema() as schema,
        PostgresStore(PG_URL, service="s", schema=schema) as a,
        PostgresStore(PG_URL, service="s", schema=schema) as b,
    ):
        for _ in range(40):
            await a.enqueue(_record())
        claims = await asyncio.gather(
            *(store.outbox_claim(f"o{i}", 7, 30) for i, store in enumerate([a, b] * 4))
        )
        ids = [r.id for claim in claims for r in claim]
        assert len(ids) == len(set(ids)) == 40


async def test_a_newer_schema_version_is_refused() -> None:
    async with postgres_schema() as schema:
        async with PostgresStore(PG_URL, service="s", schema=schema):
            pass
        conn = await asyncpg.connect(PG_URL)
        await conn.execute(f"UPDATE {schema}.meta SET value = '999' WHERE key = 'schema_version'")
        await conn.close()
        with pytest.raises(StateError, match="version 999 is newer"):
            await PostgresStore(PG_URL, service="s", schema=schema).open()


async def test_a_lost_bookkeeping_connection_is_opened_again() -> None:
    async with postgres_schema() as schema, PostgresStore(PG_URL, service="s", schema=schema) as store:
        await store.enqueue(_record())
        assert len(await store.outbox_claim("o", 10, 30)) == 1
        conn = await asyncpg.connect(PG_URL)
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE query LIKE 'WITH c AS %' AND query LIKE $1",
            f"%{schema}.outbox%",
        )
        await conn.close()
        assert killed == 1
        outcome: object = None
        for _ in range(2):  # the first call may still meet the dead connection
            try:
                outcome = await store.outbox_claim("o", 10, 30)
                break
            except Exception as exc:  # asyncpg reports a dropped connection in several ways
                outcome = exc
        assert outcome == []  # reconnected; the row is still leased to "o"


def test_open_store_picks_postgres_for_a_postgres_url(tmp_path: Path) -> None:
    for url in (PG_URL, PG_URL.replace("postgresql://", "postgres://", 1)):
        store = open_store("cart", data_dir=tmp_path, url=url)
        assert isinstance(store, PostgresStore) and store.service == "cart" and store.url == url
