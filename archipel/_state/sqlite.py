"""The SQLite backend: one file per service, calls run inline on the event loop.

A commit takes tens of microseconds (WAL, ``synchronous=NORMAL``: no fsync), less than handing
it to a thread would cost, so there is no executor. The exception is the commit that fills the
WAL to 1000 pages: it checkpoints, and fsyncs, which takes milliseconds on a slow disk. And
because no call awaits between its statements, two coroutines never interleave inside one
transaction on the shared connection.

Durability: with WAL and ``synchronous=NORMAL`` a returned commit is in the WAL file (written,
not fsynced), so it survives the process being killed (SIGKILL, OOM) but an OS crash or power
loss may lose the last commits; the file is never corrupted either way. ``busy_timeout`` lets
several processes (replicas on one host) share one file: a writer waits for another's short
transaction instead of failing. That wait blocks the loop, bounded by the commits' length.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (
    service TEXT NOT NULL, collection TEXT NOT NULL, key TEXT NOT NULL,
    value BLOB NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (service, collection, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    service TEXT NOT NULL, id TEXT NOT NULL, topic TEXT NOT NULL, type TEXT NOT NULL,
    source TEXT NOT NULL, time TEXT NOT NULL, traceparent TEXT, payload BLOB NOT NULL,
    created_at REAL NOT NULL, claimed_by TEXT, claimed_until REAL NOT NULL DEFAULT 0,
    UNIQUE (service, id)
);
-- No index for claims: they scan in seq order past the few rows in flight (each index would add
-- pages to every insert, claim and delete of the hot path); and one file usually holds one service
CREATE TABLE IF NOT EXISTS inbox (
    service TEXT NOT NULL, handler TEXT NOT NULL, event_id TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (service, handler, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_by_age ON inbox (service, at);
CREATE TABLE IF NOT EXISTS dead_letters (
    service TEXT NOT NULL, id TEXT NOT NULL, topic TEXT NOT NULL, handler TEXT NOT NULL,
    event_id TEXT NOT NULL, reason TEXT NOT NULL, payload BLOB NOT NULL, traceparent TEXT,
    at REAL NOT NULL, type TEXT NOT NULL, source TEXT NOT NULL, time TEXT NOT NULL,
    PRIMARY KEY (service, id)
) WITHOUT ROWID;
"""

_INSERT_OUTBOX = (
    f"INSERT INTO outbox (service, {OUTBOX_COLUMNS}, claimed_by, claimed_until) "
    f"VALUES ({', '.join('?' * (3 + len(OUTBOX_FIELDS)))}) ON CONFLICT (service, id) DO NOTHING"
)
_INSERT_DEAD = (
    f"INSERT INTO dead_letters (service, {DEAD_COLUMNS}) VALUES ({', '.join('?' * (1 + len(DEAD_FIELDS)))}) "
    "ON CONFLICT (service, id) DO NOTHING"
)
_UPSERT = (
    "INSERT INTO kv (service, collection, key, value, updated_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (service, collection, key) DO UPDATE SET value = excluded.value, "
    "updated_at = excluded.updated_at"
)


class SqliteStore(StoreBase):
    """A service's state in one SQLite file (``service`` defaults to the file's stem)."""

    def __init__(self, path: Path | str, *, service: str | None = None, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        super().__init__(service or self.path.stem)
        self._busy_ms = int(busy_timeout * 1000)
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are begun explicitly, IMMEDIATE so a writer takes the
        # lock up front (a deferred one upgrading later can fail with SQLITE_BUSY regardless
        # of busy_timeout).
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript("BEGIN IMMEDIATE;" + _SCHEMA)  # leaves the transaction open
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path}: schema version {row[0]} is newer than this archipel's ({SCHEMA_VERSION})"
                )
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        self._db = db

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StateError(f"the state store of {self.service!r} ({self.path}) is not open")
        return self._db

    async def commit(self, work: UnitOfWork) -> None:
        db = self._conn()
        service, now = self.service, time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            # Inbox marks first: a duplicate fails the transaction before anything else is written.
            for handler, event_id in dict.fromkeys(work.inbox):  # marked twice: once
                inserted = db.execute(
                    "INSERT OR IGNORE INTO inbox VALUES (?, ?, ?, ?)", (service, handler, event_id, now)
                ).rowcount
                if not inserted:
                    raise self._duplicate(handler, event_id)
            puts = [(service, c, k, v, now) for (c, k), v in work.writes.items() if v is not None]
            deletes = [(service, c, k) for (c, k), v in work.writes.items() if v is None]
            if puts:
                db.executemany(_UPSERT, puts)
            if deletes:
                db.executemany("DELETE FROM kv WHERE service = ? AND collection = ? AND key = ?", deletes)
            relay, leased, rows = self._outbox_rows(work.outbox)
            if rows:
                db.executemany(_INSERT_OUTBOX, rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._outbox_committed(relay, work.outbox, leased)

    async def get(self, collection: str, key: str) -> bytes | None:
        row = (
            self._conn()
            .execute(
                "SELECT value FROM kv WHERE service = ? AND collection = ? AND key = ?",
                (self.service, collection, key),
            )
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    async def scan(
        self, collection: str, prefix: str = "", limit: int = 100, reverse: bool = False
    ) -> list[tuple[str, bytes]]:
        sql = "SELECT key, value FROM kv WHERE service = ? AND collection = ? AND key >= ?"
        args: list[Any] = [self.service, collection, prefix]
        end = prefix_end(prefix)
        if end is not None:
            sql += " AND key < ?"
            args.append(end)
        sql += f" ORDER BY key {'DESC' if reverse else 'ASC'} LIMIT ?"
        args.append(limit)
        return [(key, bytes(value)) for key, value in self._conn().execute(sql, args)]

    async def count(self, collection: str) -> int:
        return self._scalar(
            "SELECT count(*) FROM kv WHERE service = ? AND collection = ?", (self.service, collection)
        )

    async def enqueue(self, record: OutboxRecord) -> None:
        relay, leased, rows = self._outbox_rows([record])
        self._conn().execute(_INSERT_OUTBOX, rows[0])
        self._outbox_committed(relay, [record], leased)

    async def outbox_claim(self, owner: str, limit: int, lease_seconds: float) -> list[OutboxRecord]:
        now = time.time()
        # One statement, so one implicit transaction: two processes cannot claim the same row.
        # "+service" keeps SQLite scanning in seq order (stopping at LIMIT) rather than sorting.
        rows = (
            self._conn()
            .execute(
                "UPDATE outbox SET claimed_by = ?, claimed_until = ? WHERE seq IN ("
                "  SELECT seq FROM outbox WHERE +service = ? AND claimed_until <= ? ORDER BY seq LIMIT ?"
                f") RETURNING seq, {OUTBOX_COLUMNS}",
                (owner, now + lease_seconds, self.service, now, limit),
            )
            .fetchall()
        )
        rows.sort(key=lambda row: row[0])  # RETURNING gives no order
        return [outbox_from_row(row[1:]) for row in rows]

    async def outbox_done(self, ids: Sequence[str]) -> None:
        self._many("DELETE FROM outbox WHERE service = ? AND id = ?", ids)

    async def outbox_release_owner(self, owner: str) -> int:
        cursor = self._conn().execute(
            "UPDATE outbox SET claimed_by = NULL, claimed_until = 0 WHERE service = ? AND claimed_by = ?",
            (self.service, owner),
        )
        return cursor.rowcount

    async def outbox_release(self, ids: Sequence[str]) -> None:
        self._many("UPDATE outbox SET claimed_by = NULL, claimed_until = 0 WHERE service = ? AND id = ?", ids)

    async def outbox_pending_count(self) -> int:
        return self._scalar("SELECT count(*) FROM outbox WHERE service = ?", (self.service,))

    async def inbox_seen(self, handler: str, event_id: str) -> bool:
        row = (
            self._conn()
            .execute(
                "SELECT 1 FROM inbox WHERE service = ? AND handler = ? AND event_id = ?",
                (self.service, handler, event_id),
            )
            .fetchone()
        )
        return row is not None

    async def inbox_prune(self, older_than_seconds: float) -> int:
        cursor = self._conn().execute(
            "DELETE FROM inbox WHERE service = ? AND at < ?", (self.service, time.time() - older_than_seconds)
        )
        return cursor.rowcount

    async def record_dead(self, letter: DeadLetterRecord) -> None:
        self._conn().execute(_INSERT_DEAD, (self.service, *values(letter)))

    async def list_dead(self, limit: int = 100) -> list[DeadLetterRecord]:
        rows = self._conn().execute(
            f"SELECT {DEAD_COLUMNS} FROM dead_letters WHERE service = ? ORDER BY at, id LIMIT ?",
            (self.service, limit),
        )
        return [dead_from_row(row) for row in rows]

    async def remove_dead(self, ids: Sequence[str]) -> int:
        return self._many("DELETE FROM dead_letters WHERE service = ? AND id = ?", ids)

    def _outbox_rows(self, records: Sequence[OutboxRecord]) -> tuple[OutboxSink | None, int, list[Any]]:
        relay, leased = self._lease_for(len(records))
        until = time.time() + relay.lease_seconds if relay is not None else 0.0
        owner = relay.owner if relay is not None else None
        rows = [
            (self.service, *values(r), owner, until) if i < leased else (self.service, *values(r), None, 0.0)
            for i, r in enumerate(records)
        ]
        return relay, leased, rows

    def _scalar(self, sql: str, args: Sequence[Any]) -> int:
        return int(self._conn().execute(sql, args).fetchone()[0])

    def _many(self, sql: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            changed = db.executemany(sql, [(self.service, i) for i in ids]).rowcount
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return changed
