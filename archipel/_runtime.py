"""The runtime of one process: instantiates the services placed here, wires their dependencies
(a local object or a remote proxy) and connects their event handlers to the bus.

It never knows how bytes travel: remote proxies come from a factory, events from a bus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec

from . import _context
from ._app import App
from ._errors import DefinitionError
from ._events.bus import DEAD_PREFIX, Envelope, EventBus
from ._model import Event, HandlerSpec, Service, ServiceSpec
from ._telemetry.metrics import EVENTS_HANDLED, EVENTS_PUBLISHED

log = logging.getLogger("archipel.runtime")

RemoteFactory = Callable[[ServiceSpec], Any]


class DeadLetter(msgspec.Struct, kw_only=True):
    """Payload published on ``{app}/$dead/{topic}`` for an event no handler could take."""

    reason: str
    topic: str
    handler: str
    event_id: str
    payload: str


class Runtime:
    def __init__(
        self,
        app: App,
        local: Iterable[str],
        bus: EventBus,
        *,
        remote: RemoteFactory | None = None,
        handler_attempts: int = 3,
        retry_backoff: float = 0.05,
    ) -> None:
        self.app = app
        names = list(local)
        self.local = app.start_order(names)
        unknown = set(names) - set(app.specs)
        if unknown:
            raise DefinitionError(f"app {app.name!r} has no service named {', '.join(sorted(unknown))}")
        self.bus = bus
        self._remote = remote
        self._attempts = max(1, handler_attempts)
        self._backoff = retry_backoff
        self.instances: dict[str, Service] = {}
        self._proxies: dict[str, Any] = {}
        self.ready = False

    async def start(self) -> None:
        for name in self.local:
            spec = self.app.specs[name]
            instance = spec.cls()
            for attr, dependency in spec.dependencies.items():
                setattr(instance, attr, self.target(dependency.__service_name__))
            instance._archipel_emit = self._emitter(name)
            self.instances[name] = instance
            for handler in spec.handlers:
                self.bus.subscribe(name, handler.topic, self._dispatcher(instance, handler))
        started: list[Service] = []
        try:
            for instance in self.instances.values():
                await instance.start()
                started.append(instance)
            await self.bus.start()
        except BaseException:
            for instance in reversed(started):
                await _quietly(instance.stop(), f"{type(instance).__name__}.stop")
            raise
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await _quietly(self.bus.stop(), "event bus stop")
        for instance in reversed(list(self.instances.values())):
            await _quietly(instance.stop(), f"{type(instance).__name__}.stop")

    def target(self, service: str) -> Any:
        """The object to call ``service`` through: the instance if it lives here, else a proxy."""
        if service in self.instances:
            return self.instances[service]
        if service not in self._proxies:
            if self._remote is None:
                raise DefinitionError(
                    f"service {service!r} is not in this process and no remote transport is set"
                )
            self._proxies[service] = self._remote(self.app.specs[service])
        return self._proxies[service]

    def _emitter(self, service: str) -> Callable[[Event], Awaitable[None]]:
        source = f"/{self.app.name}/{service}"

        async def emit(event: Event) -> None:
            topic = getattr(type(event), "__topic__", "")
            if not isinstance(event, Event) or not topic:
                raise TypeError(f"{service}.emit expects an Event with a topic, got {type(event).__name__}")
            envelope = Envelope(
                topic=topic,
                type=type(event).__name__,
                source=source,
                traceparent=_context.child_traceparent(),
                event=event,
            )
            await self.bus.publish(envelope)
            EVENTS_PUBLISHED.labels(topic).inc()

        return emit

    def _dispatcher(self, instance: Service, spec: HandlerSpec) -> Callable[[Envelope], Awaitable[None]]:
        method = getattr(instance, spec.name)
        decoder = msgspec.json.Decoder(spec.event_type)
        where = f"{spec.service}.{spec.name}"
        handled = EVENTS_HANDLED.labels(spec.service, spec.name, "ok")
        retried = EVENTS_HANDLED.labels(spec.service, spec.name, "retried")
        dead = EVENTS_HANDLED.labels(spec.service, spec.name, "dead")

        async def dispatch(envelope: Envelope) -> None:
            # Never raises: a bad payload or a handler that keeps failing ends as a dead letter,
            # so the bus can acknowledge and the consumer keeps going.
            _context.set_traceparent(envelope.traceparent)
            try:
                event = (
                    envelope.event if envelope.event is not None else decoder.decode(envelope.payload or b"")
                )
            except msgspec.DecodeError as exc:
                log.warning("%s: dropped invalid %s event %s: %s", where, envelope.topic, envelope.id, exc)
                dead.inc()
                await self._dead_letter(envelope, where, f"invalid payload: {exc}")
                return
            for attempt in range(1, self._attempts + 1):
                try:
                    await method(event)
                    handled.inc()
                    return
                except Exception as exc:
                    if attempt == self._attempts:
                        log.exception("%s failed on event %s after %d attempts", where, envelope.id, attempt)
                        dead.inc()
                        await self._dead_letter(envelope, where, f"{type(exc).__name__}: {exc}")
                        return
                    log.warning("%s failed on event %s (attempt %d): %r", where, envelope.id, attempt, exc)
                    retried.inc()
                    await asyncio.sleep(self._backoff * 2 ** (attempt - 1))

        return dispatch

    async def _dead_letter(self, envelope: Envelope, handler: str, reason: str) -> None:
        original = envelope.payload if envelope.payload is not None else msgspec.json.encode(envelope.event)
        letter = DeadLetter(
            reason=reason,
            topic=envelope.topic,
            handler=handler,
            event_id=envelope.id,
            payload=original.decode("utf-8", "replace"),
        )
        dead = Envelope(
            topic=DEAD_PREFIX + envelope.topic,
            type="DeadLetter",
            source=f"/{self.app.name}/{handler.split('.')[0]}",
            traceparent=envelope.traceparent,
            payload=msgspec.json.encode(letter),
        )
        await _quietly(self.bus.publish(dead), f"dead letter for {envelope.id}")


async def _quietly(awaitable: Awaitable[Any], what: str) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("%s failed", what)
