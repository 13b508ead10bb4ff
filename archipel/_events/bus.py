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

import msgspec

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

    def body(self) -> bytes:
        """The event as JSON bytes: the payload it arrived with, or the object encoded."""
        return self.payload if self.payload is not None else msgspec.json.encode(self.event)


Handler = Callable[[Envelope], Awaitable[None]]


class EventBus(Protocol):
    """What the runtime needs from an event transport.

    ``durable_publish``: ``publish`` returns only once the event is kept by something that
    outlives this process (a broker's acknowledgement), so an emit outside any unit of work may
    publish directly instead of going through the outbox.
    """

    durable_publish: bool

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

    async def leave(self) -> None:
        """This process is removed for good (scale-down, rollout): hand its share of future
        events to the other replicas and handle what it was already given. Before ``stop``."""

    async def publish(self, envelope: Envelope, *, timeout: float | None = None) -> None:
        """Hand the event over; returns once the transport has accepted it, or raises
        TimeoutError after ``timeout`` seconds (default: the bus's own)."""

    @property
    def connected(self) -> bool:
        """Whether events can flow now (an MQTT bus is False while its broker is away)."""


class LocalBus:
    """In-process bus of a monolith: each handler runs as a task; ``publish`` (called by the
    outbox relay) returns when they are done. Events from the outbox arrive as JSON and are
    decoded once per handler, as off the wire."""

    durable_publish = False  # publish runs the handlers: the outbox row is what keeps the event

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, list[Handler]]] = defaultdict(lambda: defaultdict(list))
        self._observers: list[Handler] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False

    def subscribe(self, group: str, topic: str, handler: Handler) -> None:
        self._routes[topic][group].append(handler)

    def observe(self, handler: Handler) -> None:
        self._observers.append(handler)

    @property
    def connected(self) -> bool:
        return self._running

    async def start(self) -> None:
        self._running = True

    async def leave(self) -> None:
        return None  # one process: no other replica to hand events to

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop taking events; give handlers in flight ``drain_timeout`` seconds, then cancel them."""
        self._running = False
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def publish(self, envelope: Envelope, *, timeout: float | None = None) -> None:
        """Run every handler of the event and return when they are done: nothing but the outbox
        row the relay deletes after this returns keeps the event, so it must not return earlier
        (``timeout`` is not applied: handlers take the time they take). Emitters do not wait for
        this: they return once the event is in their outbox."""
        if not self._running:
            raise RuntimeError(f"event bus is stopped; cannot publish {envelope.topic!r}")
        handlers = [h for group in self._routes.get(envelope.topic, {}).values() for h in group]
        tasks = [asyncio.create_task(self._deliver(h, envelope)) for h in [*handlers, *self._observers]]
        for task in tasks:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results[len(handlers) :]:
            if isinstance(result, Exception):  # an observer's bug (a test tool) must not stop delivery
                log.error("event observer failed on %s", envelope.topic, exc_info=result)
        failed = [r for r in results[: len(handlers)] if isinstance(r, BaseException)]
        if failed:  # stopped before a handler finished: keep the event for the next start
            raise RuntimeError(f"event {envelope.id} on {envelope.topic!r} was not handled: {failed[0]!r}")

    @staticmethod
    async def _deliver(handler: Handler, envelope: Envelope) -> None:
        await handler(envelope)
