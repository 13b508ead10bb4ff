"""Records the events an app emits, so tests can wait for one instead of sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import msgspec

from .._events.bus import DEAD_PREFIX, Envelope
from .._events.dispatch import DeadLetter
from .._model import Event

E = TypeVar("E", bound=Event)
T = TypeVar("T")


class EventRecorder:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self._changed = asyncio.Condition()

    async def record(self, envelope: Envelope) -> None:
        async with self._changed:
            self.envelopes.append(envelope)
            self._changed.notify_all()

    def of(self, event_type: type[E]) -> list[E]:
        """Every recorded event of ``event_type``, decoded, in arrival order."""
        topic = event_type.__topic__
        return [_decode(e, event_type) for e in self.envelopes if e.topic == topic]

    def dead_letters(self, topic: str | None = None) -> list[DeadLetter]:
        return [
            msgspec.json.decode(e.payload or b"{}", type=DeadLetter)
            for e in self.envelopes
            if e.topic.startswith(DEAD_PREFIX) and (topic is None or e.topic == DEAD_PREFIX + topic)
        ]

    async def wait_for(
        self, event_type: type[E], predicate: Callable[[E], bool] | None = None, *, timeout: float = 10.0
    ) -> E:
        """The first recorded event of ``event_type`` matching ``predicate``; waits up to ``timeout``."""

        def found() -> E | None:
            return next((e for e in self.of(event_type) if predicate is None or predicate(e)), None)

        return await self._wait(found, timeout)

    async def wait_for_dead_letter(
        self, topic: str, predicate: Callable[[DeadLetter], bool] | None = None, *, timeout: float = 10.0
    ) -> DeadLetter:
        """The first dead letter of events on ``topic`` matching ``predicate``; waits up to ``timeout``."""

        def found() -> DeadLetter | None:
            return next((d for d in self.dead_letters(topic) if predicate is None or predicate(d)), None)

        return await self._wait(found, timeout)

    async def _wait(self, found: Callable[[], T | None], timeout: float) -> T:
        async with asyncio.timeout(timeout), self._changed:
            while (value := found()) is None:
                await self._changed.wait()
            return value


def _decode(envelope: Envelope, event_type: type[E]) -> E:
    if isinstance(envelope.event, event_type):
        return envelope.event
    return msgspec.json.decode(envelope.payload or b"", type=event_type)
