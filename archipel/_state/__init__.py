"""Durable state of services: typed collections, and the transactional outbox and inbox.

Each service owns a store (SQLite file by default, PostgreSQL by URL). One RPC call or one
event handling is one unit of work: its state changes, the events it emits and the mark of
the event it handled commit in one transaction. The outbox relay then publishes the events
(at least once); the inbox turns redeliveries into no-ops, so effects happen once.
"""

from .collection import Collection, CollectionField, State, collection
from .inbox import Inbox
from .postgres import PostgresStore
from .records import DeadLetterRecord, DuplicateDelivery, InvalidValue, OutboxRecord, StateError
from .relay import OutboxRelay
from .sqlite import SqliteStore
from .store import SCHEMA_VERSION, OutboxSink, Store, open_store
from .work import UnitOfWork, current_work, stage_event, unit_of_work

__all__ = [
    "SCHEMA_VERSION",
    "Collection",
    "CollectionField",
    "DeadLetterRecord",
    "DuplicateDelivery",
    "Inbox",
    "InvalidValue",
    "OutboxRecord",
    "OutboxRelay",
    "OutboxSink",
    "PostgresStore",
    "SqliteStore",
    "State",
    "StateError",
    "Store",
    "UnitOfWork",
    "collection",
    "current_work",
    "open_store",
    "stage_event",
    "unit_of_work",
]
