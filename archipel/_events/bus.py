"""The event-bus interface, and the in-process bus used by the monolith.

A bus moves :class:`Envelope` objects from ``publish`` to the handlers subscribed to their
topic. It knows nothing of event types: decoding, retries and dead letters are the runtime's
job (``_dispatch``), so every bus gives handlers the same at-least-once contract.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from .._model import Event

log = logging.getLogger("archipel.bus")

DEAD_PREFIX = "$dead/"


@dataclass
class Envelope:
    """One event in flight: CloudEvents attributes plus either the object or its JSON bytes.

    ``topic`` is the event topic without the app prefix (``orders/placed``); a bus that talks
    to a broker adds ``{app}/`` on the wire. In-process buses pass ``event`` and never encode.
    """

    topic: str
    type: str
    source: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: str = field(default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat())
    traceparent: str | None = None
    event: Event | None = None
    payload: bytes | None = None


Handler = Callable[[Envelope], Awaitable[None]]


class EventBus(Protocol):
    """What the runtime needs from an event transport."""

    def subscribe(self, group: str, topic: str, handler: Handler) -> None:
        """Deliver each event on ``topic`` to ``handler`` once per ``group`` (a service name):
        replicas of one group share the work. Call before ``start``."""

    def observe(self, handler: Handler) -> None:
        """Deliver every event of the app, dead letters included, to ``handler`` (tests, tools).
        Call before ``start``."""

    async def start(self) -> None:
        """Connect and subscribe. Returns when subscriptions are active."""

    async def stop(self) -> None:
        """Stop taking events, let handlers in flight finish, disconnect."""

    async def publish(self, envelope: Envelope) -> None:
        """Hand the event over; returns once the transport has accepted it."""


class LocalBus:
    """In-process bus: handlers run as tasks, concurrently with the emitter; nothing is encoded."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, list[Handler]]] = defaultdict(lambda: defaultdict(list))
        self._observers: list[Handler] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False

    def subscribe(self, group: str, topic: str, handler: Handler) -> None:
        self._routes[topic][group].append(handler)

    def observe(self, handler: Handler) -> None:
        self._observers.append(handler)

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def publish(self, envelope: Envelope) -> None:
        if not self._running:
            raise RuntimeError(f"event bus is stopped; cannot publish {envelope.topic!r}")
        handlers = [h for group in self._routes.get(envelope.topic, {}).values() for h in group]
        for handler in [*handlers, *self._observers]:
            task = asyncio.create_task(self._deliver(handler, envelope))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _deliver(handler: Handler, envelope: Envelope) -> None:
        try:
            await handler(envelope)
        except Exception:  # the runtime's dispatcher never raises; an observer might
            log.exception("event handler failed on %s", envelope.topic)
