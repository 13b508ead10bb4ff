"""The store interface both backends implement, and the choice of backend for a service."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from .metrics import INBOX_DUPLICATES
from .records import DeadLetterRecord, DuplicateDelivery, OutboxRecord
from .work import UnitOfWork

log = logging.getLogger("archipel.state")

# Bumped with each change of the tables; a store refuses to open a database of a newer version.
SCHEMA_VERSION = 1


class Store(Protocol):
    """One service's durable state: key-value collections, event outbox, inbox, dead letters.

    Every method is one short transaction (or one query); none is held open across the
    caller's awaits. ``service`` scopes every row, so services may share one database.
    """

    service: str

    async def open(self) -> None:
        """Connect and create the tables if needed (idempotent, safe from several processes)."""

    async def close(self) -> None: ...

    async def commit(self, work: UnitOfWork) -> None:
        """Apply a unit of work in one transaction; raises DuplicateDelivery (nothing applied)
        when one of its inbox marks is already recorded."""

    async def get(self, collection: str, key: str) -> bytes | None: ...

    async def scan(
        self, collection: str, prefix: str = "", limit: int = 100, reverse: bool = False
    ) -> list[tuple[str, bytes]]:
        """Up to ``limit`` entries whose key starts with ``prefix``, in code-point order of keys."""

    async def count(self, collection: str) -> int: ...

    async def enqueue(self, record: OutboxRecord) -> None:
        """Add one outbox row now, outside any unit of work (an id already there is kept)."""

    async def outbox_claim(self, owner: str, limit: int, lease_seconds: float) -> list[OutboxRecord]:
        """Lease up to ``limit`` rows, oldest first, that nobody holds or whose lease expired."""

    async def outbox_done(self, ids: Sequence[str]) -> None: ...

    async def outbox_release(self, ids: Sequence[str]) -> None:
        """Give claimed rows back at once, so the next relay need not wait for their lease."""

    async def outbox_release_owner(self, owner: str) -> int:
        """Give back every row leased to ``owner``: called by a relay as it starts, because owner
        names are stable across restarts, so such rows were left by a killed predecessor."""

    async def outbox_pending_count(self) -> int: ...

    async def inbox_seen(self, handler: str, event_id: str) -> bool: ...

    async def inbox_prune(self, older_than_seconds: float) -> int:
        """Forget inbox marks older than this; returns how many were removed."""

    async def record_dead(self, letter: DeadLetterRecord) -> None: ...

    async def list_dead(self, limit: int = 100) -> list[DeadLetterRecord]:
        """Dead letters, oldest first."""

    async def remove_dead(self, ids: Sequence[str]) -> int: ...

    def attach_relay(self, relay: OutboxSink | None) -> None:
        """Hand the outbox rows this store object commits to ``relay`` (None: detach)."""


class OutboxSink(Protocol):
    """The relay as a store sees it. A commit inserts up to ``free_slots()`` of its events
    already leased to ``owner`` and hands them over with ``take`` (no claim query needed);
    any others are inserted unleased and announced with ``notify``."""

    owner: str
    lease_seconds: float

    def free_slots(self) -> int: ...

    def take(self, records: Sequence[OutboxRecord]) -> None: ...

    def notify(self) -> None: ...


class StoreBase:
    """What both backends share: the attached relay and ``async with``."""

    service: str

    def __init__(self, service: str) -> None:
        if not service or any(c in service for c in "/\\\0"):
            raise ValueError(f"invalid service name for a store: {service!r}")
        self.service = service
        self._relay: OutboxSink | None = None

    def attach_relay(self, relay: OutboxSink | None) -> None:
        self._relay = relay

    def _lease_for(self, count: int) -> tuple[OutboxSink | None, int]:
        """The relay to lease new outbox rows to, and how many of ``count`` it can take now."""
        relay = self._relay
        if relay is None or count == 0:
            return None, 0
        return relay, max(0, min(count, relay.free_slots()))

    @staticmethod
    def _outbox_committed(relay: OutboxSink | None, records: Sequence[OutboxRecord], leased: int) -> None:
        if relay is None or not records:
            return
        try:
            if leased:
                relay.take(records[:leased])
            if len(records) > leased:
                relay.notify()
        except Exception:  # the commit succeeded; the rows wait for the next sweep or lease
            log.exception("handing committed outbox rows to the relay failed")

    def _duplicate(self, handler: str, event_id: str) -> DuplicateDelivery:
        INBOX_DUPLICATES.labels(self.service, handler).inc()
        return DuplicateDelivery(handler, event_id)

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def prefix_end(prefix: str) -> str | None:
    """The smallest string above every string starting with ``prefix`` (None: no upper bound).

    Keys compare by code point in both backends (SQLite's binary collation on UTF-8, PostgreSQL's
    "C" collation), so a prefix match is the index range ``prefix <= key < prefix_end(prefix)``.
    """
    chars = list(prefix)
    while chars:
        point = ord(chars[-1]) + 1
        if point <= 0x10FFFF:
            chars[-1] = chr(0xE000 if 0xD800 <= point <= 0xDFFF else point)  # skip surrogates
            return "".join(chars)
        chars.pop()
    return None


def open_store(service: str, *, data_dir: Path, url: str | None = None) -> Store:
    """The store of ``service`` (not opened yet): a SQLite file ``{data_dir}/{service}.sqlite3``,
    or PostgreSQL when ``url`` is ``postgresql://...`` / ``postgres://...``."""
    if url is None:
        from .sqlite import SqliteStore

        return SqliteStore(Path(data_dir) / f"{service}.sqlite3", service=service)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url, service=service)
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise ValueError(
        f"state store URL for {service!r} must start with postgresql:// or postgres:// "
        f"(or be unset for SQLite), got {scheme!r}"
    )
