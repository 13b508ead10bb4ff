"""The rows the state layer stores besides key-value state: outbox events and dead letters."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec

from .._events.bus import Envelope


class StateError(Exception):
    """A problem with a service's durable state (bad value, newer schema, closed store...)."""


class InvalidValue(StateError, ValueError):
    """A value that cannot be stored in, or read back from, a collection as its declared type."""


class DuplicateDelivery(StateError):
    """The unit of work marked an event as handled that another commit already recorded.

    The whole commit is discarded, so a redelivered event that raced its first delivery
    changes state once; dispatch treats this as a duplicate to acknowledge, not as a failure.
    """

    def __init__(self, handler: str, event_id: str) -> None:
        super().__init__(f"{handler} already handled event {event_id}")
        self.handler = handler
        self.event_id = event_id


class OutboxRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An event waiting in the outbox: the CloudEvents attributes and the JSON payload."""

    id: str
    topic: str
    type: str
    source: str
    time: str
    traceparent: str | None
    payload: bytes
    created_at: float

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> OutboxRecord:
        payload = envelope.body()
        return cls(
            id=envelope.id,
            topic=envelope.topic,
            type=envelope.type,
            source=envelope.source,
            time=envelope.time,
            traceparent=envelope.traceparent,
            payload=payload,
            created_at=time.time(),
        )

    def to_envelope(self) -> Envelope:
        # ``event`` stays unset: consumers decode the payload, as they do off the wire.
        return Envelope(
            topic=self.topic,
            type=self.type,
            source=self.source,
            id=self.id,
            time=self.time,
            traceparent=self.traceparent,
            payload=self.payload,
        )


class DeadLetterRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An event a handler could not take, kept until an operator re-drives or removes it."""

    id: str
    topic: str
    handler: str
    event_id: str
    reason: str
    payload: bytes
    traceparent: str | None
    at: float
    # Kept so a re-drive can publish the event again with its original attributes.
    type: str = ""
    source: str = ""
    time: str = ""

    @classmethod
    def from_envelope(cls, envelope: Envelope, handler: str, reason: str) -> DeadLetterRecord:
        payload = envelope.body()
        return cls(
            # One letter per handler and event: recording the same failure again (after a
            # redelivery) keeps the first letter rather than piling up copies.
            id=f"{handler}:{envelope.id}",
            topic=envelope.topic,
            handler=handler,
            event_id=envelope.id,
            reason=reason,
            payload=payload,
            traceparent=envelope.traceparent,
            at=time.time(),
            type=envelope.type,
            source=envelope.source,
            time=envelope.time,
        )

    def to_outbox(self) -> OutboxRecord:
        """The event again, under its original id and attributes, addressed to the handler that
        gave up on it (``REPLAY_PREFIX``): the consumer's relay hands it to that handler in its
        own process, never to the broker, so a consumer needs no right to publish what it
        consumes and no other consumer sees the event twice."""
        return OutboxRecord(
            id=self.event_id,
            topic=replay_topic(self.handler, self.topic),
            type=self.type,
            source=self.source,
            time=self.time,
            traceparent=self.traceparent,
            payload=self.payload,
            created_at=time.time(),
        )


REPLAY_PREFIX = "$replay/"  # outbox topic of a replayed dead letter: $replay/{service.handler}/{topic}


def replay_topic(handler: str, topic: str) -> str:
    return f"{REPLAY_PREFIX}{handler}/{topic}"


def parse_replay_topic(topic: str) -> tuple[str, str] | None:
    """``(handler, topic)`` of a replay's outbox topic, or None for an event to publish."""
    if not topic.startswith(REPLAY_PREFIX):
        return None
    handler, _, original = topic[len(REPLAY_PREFIX) :].partition("/")
    return handler, original


# Table columns in field order, so rows and records convert without naming every field.
OUTBOX_FIELDS: tuple[str, ...] = OutboxRecord.__struct_fields__
DEAD_FIELDS: tuple[str, ...] = DeadLetterRecord.__struct_fields__
OUTBOX_COLUMNS = ", ".join(OUTBOX_FIELDS)
DEAD_COLUMNS = ", ".join(DEAD_FIELDS)


def values(record: OutboxRecord | DeadLetterRecord) -> tuple[Any, ...]:
    return msgspec.structs.astuple(record)


def outbox_from_row(row: Sequence[Any]) -> OutboxRecord:
    return OutboxRecord(**dict(zip(OUTBOX_FIELDS, row, strict=True)))


def dead_from_row(row: Sequence[Any]) -> DeadLetterRecord:
    return DeadLetterRecord(**dict(zip(DEAD_FIELDS, row, strict=True)))
