"""Units of work: what one RPC call or one event handling changes, committed at once.

A unit of work is an in-memory buffer, never an open database transaction: a handler may await
remote calls for as long as it likes without holding a lock. The store applies the buffer in one
transaction when the block ends normally, so state, emitted events and the inbox mark of the
handled event are all saved, or none is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .records import OutboxRecord

if TYPE_CHECKING:
    from .store import Store


@dataclass(eq=False)
class UnitOfWork:
    """Changes waiting for one store: ``writes[(collection, key)]`` is JSON, or None to delete."""

    store: Store
    writes: dict[tuple[str, str], bytes | None] = field(default_factory=dict)
    outbox: list[OutboxRecord] = field(default_factory=list)
    inbox: list[tuple[str, str]] = field(default_factory=list)
    # Set once committed or discarded: a task spawned inside the block that outlives it must
    # not write into a buffer nobody will commit again, so it commits on its own instead.
    closed: bool = False

    def __bool__(self) -> bool:
        return bool(self.writes or self.outbox or self.inbox)


_current: ContextVar[UnitOfWork | None] = ContextVar("archipel_unit_of_work", default=None)


def current_work(store: Store | None = None) -> UnitOfWork | None:
    """The unit of work of this task, or None; with ``store``, only one buffering for that store.

    A monolith calls another service's methods directly, inside the caller's unit of work: the
    store check keeps the callee's writes out of the caller's buffer (they commit on their own).
    """
    work = _current.get()
    if work is None or work.closed or (store is not None and work.store is not store):
        return None
    return work


@asynccontextmanager
async def unit_of_work(store: Store) -> AsyncIterator[UnitOfWork]:
    """Buffer the writes, events and inbox marks of the block; commit them together at exit.

    An exception discards everything. Inside another unit of work on the same store, the block
    joins it (the outer one commits), and an exception leaving the inner block takes back only
    what the inner block added, like a savepoint. On another store, it is a separate unit of work.
    """
    outer = current_work(store)
    if outer is not None:
        writes, events, marks = dict(outer.writes), len(outer.outbox), len(outer.inbox)
        try:
            yield outer
        except BaseException:
            outer.writes.clear()
            outer.writes.update(writes)
            del outer.outbox[events:], outer.inbox[marks:]
            raise
        return
    work = UnitOfWork(store)
    token = _current.set(work)
    try:
        yield work
    except BaseException:
        work.closed = True
        raise
    finally:
        _current.reset(token)
    work.closed = True
    if work:
        await store.commit(work)


async def stage_event(store: Store, record: OutboxRecord) -> None:
    """Add an event to the outbox: with the current unit of work on ``store``, else at once."""
    work = current_work(store)
    if work is not None:
        work.outbox.append(record)
    else:
        await store.enqueue(record)
