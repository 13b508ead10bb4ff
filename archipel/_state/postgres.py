"""The PostgreSQL backend (asyncpg): many services in one database, told apart by ``service``.

Tables live in their own PostgreSQL schema (``archipel`` by default), away from the
application's tables. Relay bookkeeping (claims, deletes of published rows, inbox pruning) goes
through one extra connection with ``synchronous_commit=off``: losing one of those writes in a
server crash only republishes an event, which at-least-once delivery allows, and it spares the
hot path two WAL flushes per event. That connection is not pooled: the relay's statements are
sequential anyway, and a pool's acquire and release cost more than the statement itself.

Outbox leases use the server's clock, so replicas on hosts whose clocks disagree still agree on
when a lease has expired.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, Protocol, TypeVar

from .records import (
    DEAD_COLUMNS,
    DEAD_FIELDS,
    OUTBOX_COLUMNS,
    OUTBOX_FIELDS,
    DeadLetterRecord,
    OutboxRecord,
    StateError,
    dead_from_row,
    outbox_from_row,
    values,
)
from .store import SCHEMA_VERSION, OutboxSink, StoreBase, prefix_end
from .work import UnitOfWork


class _Queries(Protocol):
    """The part of asyncpg's pool and connections used here (asyncpg ships no type hints)."""

    async def execute(self, query: str, *args: Any) -> str: ...
    async def executemany(self, query: str, args: Iterable[Sequence[Any]]) -> None: ...
    async def fetch(self, query: str, *args: Any) -> list[Any]: ...
    async def fetchval(self, query: str, *args: Any) -> Any: ...


class _Connection(_Queries, Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Any]: ...
    def is_closed(self) -> bool: ...
    def terminate(self) -> None: ...
    async def close(self) -> None: ...


class _Pool(_Queries, Protocol):
    def acquire(self) -> AbstractAsyncContextManager[_Connection]: ...
    async def close(self) -> None: ...


R = TypeVar("R")

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_NOW = "extract(epoch from clock_timestamp())"


def _ddl(s: str) -> list[str]:
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS {s}.kv (
            service text NOT NULL, collection text NOT NULL, key text COLLATE "C" NOT NULL,
            value bytea NOT NULL, updated_at double precision NOT NULL,
            PRIMARY KEY (service, collection, key))""",
        f"""CREATE TABLE IF NOT EXISTS {s}.outbox (
            seq bigserial PRIMARY KEY,
            service text NOT NULL, id text NOT NULL, topic text NOT NULL, type text NOT NULL,
            source text NOT NULL, time text NOT NULL, traceparent text, payload bytea NOT NULL,
            created_at double precision NOT NULL, claimed_by text,
            claimed_until double precision NOT NULL DEFAULT 0,
            UNIQUE (service, id))""",
        f"CREATE INDEX IF NOT EXISTS outbox_by_service ON {s}.outbox (service, seq)",
        f"""CREATE TABLE IF NOT EXISTS {s}.inbox (
            service text NOT NULL, handler text NOT NULL, event_id text NOT NULL,
            at double precision NOT NULL, PRIMARY KEY (service, handler, event_id))""",
        f"CREATE INDEX IF NOT EXISTS inbox_by_age ON {s}.inbox (service, at)",
        f"""CREATE TABLE IF NOT EXISTS {s}.dead_letters (
            service text NOT NULL, id text NOT NULL, topic text NOT NULL, handler text NOT NULL,
            event_id text NOT NULL, reason text NOT NULL, payload bytea NOT NULL, traceparent text,
            at double precision NOT NULL, type text NOT NULL, source text NOT NULL, time text NOT NULL,
            PRIMARY KEY (service, id))""",
    ]


class _OneConnection:
    """One connection, used by one caller at a time, opened on first use and again after any
    error (a connection the server dropped can fail in several ways before it reports closed,
    and these statements are too simple to fail otherwise)."""

    def __init__(self, connect: Callable[[], Awaitable[_Connection]]) -> None:
        self._connect = connect
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()

    async def _run(self, call: Callable[[_Connection], Awaitable[R]]) -> R:
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._connect()
            try:
                return await call(self._conn)
            except BaseException:
                conn, self._conn = self._conn, None
                conn.terminate()
                raise

    async def execute(self, query: str, *args: Any) -> str:
        return await self._run(lambda conn: conn.execute(query, *args))

    async def executemany(self, query: str, args: Iterable[Sequence[Any]]) -> None:
        await self._run(lambda conn: conn.executemany(query, args))

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return await self._run(lambda conn: conn.fetch(query, *args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._run(lambda conn: conn.fetchval(query, *args))

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()


async def _keep_session(conn: Any) -> None:
    """Pool ``reset``: our statements leave no session state (no SET, LISTEN or session locks),
    so the default reset query would be a wasted round trip; asyncpg still rolls back an open
    transaction on release."""


def _params(first: int, count: int) -> str:
    return ", ".join(f"${i}" for i in range(first, first + count))


class PostgresStore(StoreBase):
    """A service's state in a PostgreSQL database, in tables of the schema ``schema``."""

    def __init__(
        self, url: str, *, service: str, schema: str = "archipel", min_size: int = 1, max_size: int = 10
    ) -> None:
        super().__init__(service)
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"PostgreSQL schema name must be lower case letters, digits, '_': {schema!r}")
        self.url = url
        self.schema = schema
        self._sizes = (min_size, max_size)
        self._pool: _Pool | None = None
        self._relaxed: _OneConnection | None = None
        s = schema
        self._sql_upsert = (
            f"INSERT INTO {s}.kv (service, collection, key, value, updated_at) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (service, collection, key) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at"
        )
        n = 1 + len(OUTBOX_FIELDS)
        self._sql_outbox = (
            f"INSERT INTO {s}.outbox (service, {OUTBOX_COLUMNS}, claimed_by, claimed_until) "
            f"VALUES ({_params(1, n)}, ${n + 1}::text, "
            f"CASE WHEN ${n + 1}::text IS NULL THEN 0 ELSE {_NOW} + ${n + 2}::float8 END) "
            "ON CONFLICT (service, id) DO NOTHING"
        )
        self._sql_inbox = (
            f"INSERT INTO {s}.inbox (service, handler, event_id, at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT DO NOTHING"
        )

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            asyncpg = importlib.import_module("asyncpg")
        except ImportError as exc:
            raise StateError(
                f"a PostgreSQL state store for {self.service!r} needs asyncpg: "
                "pip install 'archipel[postgres]'"
            ) from exc
        min_size, max_size = self._sizes
        pool: _Pool = await asyncpg.create_pool(
            self.url, min_size=min_size, max_size=max_size, reset=_keep_session
        )
        try:
            async with pool.acquire() as conn, conn.transaction():
                # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalog: serialize.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"archipel:{self.schema}")
                for statement in _ddl(self.schema):
                    await conn.execute(statement)
                found = await conn.fetchval(
                    f"SELECT value FROM {self.schema}.meta WHERE key = 'schema_version'"
                )
                if found is None:
                    await conn.execute(
                        f"INSERT INTO {self.schema}.meta VALUES ('schema_version', $1)", str(SCHEMA_VERSION)
                    )
                elif int(found) > SCHEMA_VERSION:
                    raise StateError(
                        f"PostgreSQL schema {self.schema!r}: version {found} is newer than this "
                        f"archipel's ({SCHEMA_VERSION})"
                    )
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        self._relaxed = _OneConnection(
            lambda: asyncpg.connect(self.url, server_settings={"synchronous_commit": "off"})
        )

    async def close(self) -> None:
        pool, relaxed, self._pool, self._relaxed = self._pool, self._relaxed, None, None
        if relaxed is not None:
            await relaxed.close()
        if pool is not None:
            await pool.close()

    def _db(self) -> _Pool:
        if self._pool is None:
            raise StateError(f"the state store of {self.service!r} (PostgreSQL) is not open")
        return self._pool

    def _bookkeeping(self) -> _OneConnection:
        if self._relaxed is None:
            raise StateError(f"the state store of {self.service!r} (PostgreSQL) is not open")
        return self._relaxed

    async def commit(self, work: UnitOfWork) -> None:
        service, now = self.service, time.time()
        puts = [(service, c, k, v, now) for (c, k), v in work.writes.items() if v is not None]
        deletes = [(service, c, k) for (c, k), v in work.writes.items() if v is None]
        marks = list(dict.fromkeys(work.inbox))  # marked twice: once
        # One statement is atomic on its own (executemany included): BEGIN and COMMIT would
        # only add two round trips, e.g. to a unit of work that just emits.
        single = len(marks) + bool(puts) + bool(deletes) + bool(work.outbox) == 1
        async with self._db().acquire() as conn, nullcontext() if single else conn.transaction():
            # Inbox marks first: a duplicate aborts the transaction before anything is written.
            for handler, event_id in marks:
                if await conn.execute(self._sql_inbox, service, handler, event_id, now) == "INSERT 0 0":
                    raise self._duplicate(handler, event_id)
            if puts:
                await conn.executemany(self._sql_upsert, puts)
            if deletes:
                await conn.executemany(
                    f"DELETE FROM {self.schema}.kv WHERE service = $1 AND collection = $2 AND key = $3",
                    deletes,
                )
            relay, leased, rows = self._outbox_rows(work.outbox)
            if rows:
                await conn.executemany(self._sql_outbox, rows)
        self._outbox_committed(relay, work.outbox, leased)

    def _outbox_rows(self, records: Sequence[OutboxRecord]) -> tuple[OutboxSink | None, int, list[Any]]:
        # Leased rows carry the lease length; the server adds it to its own clock.
        relay, leased = self._lease_for(len(records))
        lease = (relay.owner, relay.lease_seconds) if relay is not None else (None, 0.0)
        rows = [
            (self.service, *values(r), *(lease if i < leased else (None, 0.0))) for i, r in enumerate(records)
        ]
        return relay, leased, rows

    async def get(self, collection: str, key: str) -> bytes | None:
        value: bytes | None = await self._db().fetchval(
            f"SELECT value FROM {self.schema}.kv WHERE service = $1 AND collection = $2 AND key = $3",
            self.service,
            collection,
            key,
        )
        return value

    async def scan(
        self, collection: str, prefix: str = "", limit: int = 100, reverse: bool = False
    ) -> list[tuple[str, bytes]]:
        sql = f"SELECT key, value FROM {self.schema}.kv WHERE service = $1 AND collection = $2 AND key >= $3"
        args: list[Any] = [self.service, collection, prefix]
        end = prefix_end(prefix)
        if end is not None:
            args.append(end)
            sql += f" AND key < ${len(args)}"
        args.append(limit)
        sql += f" ORDER BY key {'DESC' if reverse else 'ASC'} LIMIT ${len(args)}"
        return [(row[0], row[1]) for row in await self._db().fetch(sql, *args)]

    async def count(self, collection: str) -> int:
        return int(
            await self._db().fetchval(
                f"SELECT count(*) FROM {self.schema}.kv WHERE service = $1 AND collection = $2",
                self.service,
                collection,
            )
        )

    async def enqueue(self, record: OutboxRecord) -> None:
        relay, leased, rows = self._outbox_rows([record])
        await self._db().execute(self._sql_outbox, *rows[0])
        self._outbox_committed(relay, [record], leased)

    async def outbox_claim(self, owner: str, limit: int, lease_seconds: float) -> list[OutboxRecord]:
        s = self.schema
        # SKIP LOCKED: a replica claiming at the same moment takes other rows instead of waiting.
        rows = await self._bookkeeping().fetch(
            f"WITH c AS (SELECT seq FROM {s}.outbox WHERE service = $1 AND claimed_until <= {_NOW} "
            "ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED) "
            f"UPDATE {s}.outbox o SET claimed_by = $3, claimed_until = {_NOW} + $4 FROM c "
            f"WHERE o.seq = c.seq RETURNING o.seq, {', '.join('o.' + f for f in OUTBOX_FIELDS)}",
            self.service,
            limit,
            owner,
            lease_seconds,
        )
        return [outbox_from_row(tuple(row)[1:]) for row in sorted(rows, key=lambda row: row[0])]

    async def outbox_done(self, ids: Sequence[str]) -> None:
        if ids:
            await self._bookkeeping().execute(
                f"DELETE FROM {self.schema}.outbox WHERE service = $1 AND id = ANY($2::text[])",
                self.service,
                list(ids),
            )

    async def outbox_release_owner(self, owner: str) -> int:
        status: str = await self._bookkeeping().execute(
            f"UPDATE {self.schema}.outbox SET claimed_by = NULL, claimed_until = 0 "
            "WHERE service = $1 AND claimed_by = $2",
            self.service,
            owner,
        )
        return int(status.rsplit(" ", 1)[-1])

    async def outbox_release(self, ids: Sequence[str]) -> None:
        if ids:
            await self._bookkeeping().execute(
                f"UPDATE {self.schema}.outbox SET claimed_by = NULL, claimed_until = 0 "
                "WHERE service = $1 AND id = ANY($2::text[])",
                self.service,
                list(ids),
            )

    async def outbox_pending_count(self) -> int:
        return int(
            await self._db().fetchval(
                f"SELECT count(*) FROM {self.schema}.outbox WHERE service = $1", self.service
            )
        )

    async def inbox_seen(self, handler: str, event_id: str) -> bool:
        found = await self._db().fetchval(
            f"SELECT 1 FROM {self.schema}.inbox WHERE service = $1 AND handler = $2 AND event_id = $3",
            self.service,
            handler,
            event_id,
        )
        return found is not None

    async def inbox_prune(self, older_than_seconds: float) -> int:
        status = await self._bookkeeping().execute(
            f"DELETE FROM {self.schema}.inbox WHERE service = $1 AND at < $2",
            self.service,
            time.time() - older_than_seconds,
        )
        return int(status.split()[-1])

    async def record_dead(self, letter: DeadLetterRecord) -> None:
        await self._db().execute(
            f"INSERT INTO {self.schema}.dead_letters (service, {DEAD_COLUMNS}) "
            f"VALUES ({_params(1, 1 + len(DEAD_FIELDS))}) ON CONFLICT (service, id) DO NOTHING",
            self.service,
            *values(letter),
        )

    async def list_dead(self, limit: int = 100) -> list[DeadLetterRecord]:
        rows = await self._db().fetch(
            f"SELECT {DEAD_COLUMNS} FROM {self.schema}.dead_letters WHERE service = $1 "
            "ORDER BY at, id LIMIT $2",
            self.service,
            limit,
        )
        return [dead_from_row(tuple(row)) for row in rows]

    async def remove_dead(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        status = await self._db().execute(
            f"DELETE FROM {self.schema}.dead_letters WHERE service = $1 AND id = ANY($2::text[])",
            self.service,
            list(ids),
        )
        return int(status.split()[-1])
