"""The runtime of one process: instantiates the services placed here, wires their dependencies
(the local object, a local proxy when an interceptor has work on that call, or a remote proxy)
and connects their event handlers to the bus through the dispatcher.

It never knows how bytes travel: remote proxies come from a factory, events from a bus, and
every policy is an interceptor of the chain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from . import _context
from ._app import App
from ._chain import Interceptor, Invocation, Next, Site, compose, wanted
from ._errors import DefinitionError
from ._events.bus import Envelope, EventBus, LocalBus
from ._events.dispatch import REDELIVERY_WINDOW, DeadLetter, Dispatcher
from ._model import Event, MethodSpec, Service, ServiceSpec
from ._proxy import make_proxy
from ._state import (
    CollectionField,
    DeadLetterRecord,
    OutboxRecord,
    OutboxRelay,
    Store,
    current_work,
    open_store,
    stage_event,
)
from ._state.interceptors import InboxInterceptor, UnitOfWorkInterceptor
from ._state.records import parse_replay_topic
from ._telemetry.metrics import EVENTS_PUBLISHED
from ._telemetry.tracing import process_tracing, publish_span, with_spans

log = logging.getLogger("archipel.runtime")

WINDOW_VAR = "ARCHIPEL_REDELIVERY_WINDOW"  # seconds a failing handler is retried before its dead letter
DATA_DIR_VAR = "ARCHIPEL_DATA_DIR"  # where the services' SQLite stores live
INBOX_RETENTION = 7 * 24 * 3600.0
DIRECT_PUBLISH_TIMEOUT = 2.0  # seconds an emit waits for the broker before using the outbox
STORE_URL_VAR = "ARCHIPEL_STORE_URL"  # postgresql://... to keep every service's state there instead


class RemoteFactory(Protocol):
    def __call__(
        self, spec: ServiceSpec, *, caller: str, interceptors: Sequence[Interceptor], optional: bool
    ) -> Any: ...


class Runtime:
    def __init__(
        self,
        app: App,
        local: Iterable[str],
        bus: EventBus,
        *,
        remote: RemoteFactory | None = None,
        interceptors: Sequence[Interceptor] | None = None,
        redelivery_window: float | None = None,
        data_dir: Path | None = None,
        store_url: str | None = None,
        instance: str | None = None,
    ) -> None:
        from ._interceptors import default_interceptors

        self.app = app
        names = list(local)
        self.local = app.start_order(names)
        unknown = set(names) - set(app.specs)
        if unknown:
            raise DefinitionError(f"app {app.name!r} has no service named {', '.join(sorted(unknown))}")
        self.bus = bus
        self._remote = remote
        self.data_dir = data_dir or Path(os.environ.get(DATA_DIR_VAR) or Path(".archipel", "data", app.name))
        self.store_url = store_url or os.environ.get(STORE_URL_VAR) or None
        # Names this process in outbox leases: stable across its restarts, distinct between replicas.
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self.stores: dict[str, Store] = {}
        self._relays: list[OutboxRelay] = []
        self._stateful = {name for name in self.local if _declares_state(app.specs[name].cls)}
        # What a handler can do that the inbox makes happen once: write state, emit events.
        self._has_effects = {name for name in self.local if name in self._stateful or app.specs[name].emits}
        policies = default_interceptors(app) if interceptors is None else interceptors
        self.tracing = process_tracing(app.name, self.instance)  # None: OTEL_SDK_DISABLED
        self._messaging = "archipel" if isinstance(bus, LocalBus) else "mqtt"  # spans' messaging.system
        self.interceptors: list[Interceptor] = [
            *with_spans(policies, self.tracing, self._messaging),
            UnitOfWorkInterceptor(self.stores.get, self._stateful.__contains__),
            InboxInterceptor(self.stores.get, self._has_effects.__contains__),
        ]
        window = redelivery_window if redelivery_window is not None else _window_from_env()
        self.dispatcher = Dispatcher(
            bus.publish,
            self.interceptors,
            redelivery_window=window,
            on_dead=self._record_dead,
            allowed_sources=app.emitters(),  # an event from a service that does not declare it: dead letter
        )
        self.instances: dict[str, Service] = {}
        self._replays: dict[str, Callable[[Envelope], Awaitable[None]]] = {}  # "service.handler" ->
        self._started = False

    async def start(self) -> None:
        for name in self.local:
            store = open_store(name, data_dir=self.data_dir, url=self.store_url)
            await store.open()
            # Inbox marks only matter while a redelivery can still come (a broker session lasts an
            # hour, a redelivery window a minute); a week leaves a wide margin.
            await store.inbox_prune(INBOX_RETENTION)
            self.stores[name] = store
            instance = self.app.specs[name].cls()
            self.instances[name] = instance
            instance._archipel_emit = self._emitter(name, store)
            instance._archipel_store = store
        for name, instance in self.instances.items():
            spec = self.app.specs[name]
            for attr, dependency in spec.dependencies.items():
                setattr(instance, attr, self.target(dependency.__service_name__, caller=name))
            for handler in spec.handlers:
                dispatch = self.dispatcher.handler(instance, handler)
                self.bus.subscribe(name, handler.topic, dispatch)
                self._replays[f"{name}.{handler.name}"] = dispatch
        started: list[Service] = []
        try:
            for instance in self.instances.values():
                await instance.start()
                started.append(instance)
            await self.bus.start()
            for name, store in self.stores.items():
                relay = OutboxRelay(store, self._relay_sink, owner=f"{self.instance}.{name}")
                await relay.start()
                self._relays.append(relay)
        except BaseException:
            for relay in self._relays:
                await _quietly(relay.stop(), "outbox relay stop")
            for instance in reversed(started):
                await _quietly(instance.stop(), f"{type(instance).__name__}.stop")
            await self._close_stores()
            raise
        self._started = True

    @property
    def ready(self) -> bool:
        """Started, and able to take and send events (``/readyz``)."""
        return self._started and self.bus.connected

    async def stop(self, *, leave: bool = False) -> None:
        """Stop relaying (what is not yet out stays in the outbox for the next start), stop taking
        events (handlers in flight finish), stop the services, close their stores. ``leave``: this
        replica is removed for good, so its share of events goes to the others first."""
        self._started = False
        relays, self._relays = self._relays, []
        await asyncio.gather(*(_quietly(relay.stop(), "outbox relay stop") for relay in relays))
        if leave:
            await _quietly(self.bus.leave(), "event bus leave")
        await _quietly(self.bus.stop(), "event bus stop")
        for instance in reversed(list(self.instances.values())):
            await _quietly(instance.stop(), f"{type(instance).__name__}.stop")
        await self._close_stores()

    async def _close_stores(self) -> None:
        stores = dict(self.stores)
        self.stores.clear()  # cleared in place: the state interceptors hold this dict's ``get``
        for name, store in stores.items():
            await _quietly(store.close(), f"closing the store of {name}")

    async def _relay_sink(self, envelope: Envelope) -> None:
        """Where the outbox goes: the bus, except a replayed dead letter, which goes to the handler
        that gave up on it, here (``archipel events replay``); raising keeps it for a retry."""
        replay = parse_replay_topic(envelope.topic)
        if replay is None:
            await self.bus.publish(envelope)
            return
        handler, topic = replay
        dispatch = self._replays.get(handler)
        if dispatch is None:
            log.warning("dropped the replay of event %s: no handler %s in this process", envelope.id, handler)
            return
        await dispatch(dataclasses.replace(envelope, topic=topic))

    async def _published_directly(self, envelope: Envelope) -> bool:
        """Publish now if the broker takes it promptly; False (nothing lost) sends it through the
        outbox instead: the broker is away, slow, or refused it (the relay retries and logs)."""
        if not self.bus.connected:
            return False
        try:
            await self.bus.publish(envelope, timeout=DIRECT_PUBLISH_TIMEOUT)
        except Exception as exc:  # TimeoutError included: maybe published; the outbox may send it again
            log.debug("publishing %s directly failed (%r): through the outbox", envelope.id, exc)
            return False
        return True

    async def _record_dead(self, envelope: Envelope, letter: DeadLetter) -> None:
        store = self.stores.get(letter.handler.split(".")[0])
        if store is not None:
            await store.record_dead(DeadLetterRecord.from_envelope(envelope, letter.handler, letter.reason))

    def target(self, service: str, caller: str = "") -> Any:
        """What ``caller`` calls ``service`` through: the instance itself when it lives here and no
        interceptor has work on those calls, a local proxy when one has, else a remote proxy."""
        spec = self.app.specs[service]
        optional = caller in self.app.specs and service in self.app.specs[caller].optional
        if service in self.instances:
            instance = self.instances[service]
            sites = {m.name: self._local_site(caller, m, optional) for m in spec.methods.values()}
            if not any(wanted(site, self.interceptors) for site in sites.values()):
                return instance
            return make_proxy(
                spec,
                lambda m: (sites[m.name], compose(sites[m.name], self.interceptors, _call(instance, m))),
            )
        if self._remote is None:
            raise DefinitionError(
                f"service {service!r} is not in this process and no remote transport is set"
            )
        return self._remote(spec, caller=caller, interceptors=self.interceptors, optional=optional)

    @staticmethod
    def _local_site(caller: str, method: MethodSpec, optional: bool) -> Site:
        return Site(
            "call", method.service, method.name, caller, idempotent=method.idempotent, optional=optional
        )

    def _emitter(self, service: str, store: Store) -> Callable[[Event], Awaitable[None]]:
        source = f"/{self.app.name}/{service}"
        declared = set(self.app.specs[service].emits)
        # No unit of work to be atomic with, and a broker that acknowledges: the broker keeps
        # the event as surely as the outbox would, for one network round trip instead of two
        # database writes (insert, then delete once published).
        direct = getattr(self.bus, "durable_publish", False)
        published: dict[str, Any] = {}  # by topic: the metric's label lookup, once

        async def emit(event: Event) -> None:
            topic = getattr(type(event), "__topic__", "")
            if not isinstance(event, Event) or not topic:
                raise TypeError(f"{service}.emit expects an Event with a topic, got {type(event).__name__}")
            if type(event) not in declared:
                cls = self.app.specs[service].cls.__name__
                raise DefinitionError(
                    f"{cls} emits {type(event).__name__} without declaring it: "
                    f"class {cls}(Service, emits=[{type(event).__name__}]) (the broker would refuse it)"
                )
            tracing = self.tracing
            span = None if tracing is None else publish_span(tracing, service, topic, self._messaging)
            envelope = Envelope(
                topic=topic,
                type=type(event).__name__,
                source=source,
                traceparent=_context.child_traceparent() if span is None else span.traceparent,
                event=event,
            )
            try:
                if not (direct and current_work(store) is None and await self._published_directly(envelope)):
                    # Into the outbox: with the current unit of work (the RPC or handler that emits
                    # it), or committed at once; the relay publishes it after the commit.
                    await stage_event(store, OutboxRecord.from_envelope(envelope))
            except BaseException as exc:
                if span is not None:
                    span.fail(type(exc).__name__, str(exc))
                raise
            if span is not None:
                span.attributes["messaging.message.id"] = envelope.id
                span.end()
            counter = published.get(topic)
            if counter is None:
                counter = published[topic] = EVENTS_PUBLISHED.labels(topic)
            counter.inc()

        return emit


def _declares_state(cls: type[Service]) -> bool:
    return any(isinstance(v, CollectionField) for klass in cls.__mro__ for v in vars(klass).values())


def _window_from_env() -> float:
    raw = os.environ.get(WINDOW_VAR)
    if raw is None:
        return REDELIVERY_WINDOW
    try:
        window = float(raw)
    except ValueError:
        window = -1.0
    if not window >= 0:
        raise DefinitionError(f"{WINDOW_VAR}={raw!r}: expected a number of seconds >= 0")
    return window


def _call(instance: Service, method: MethodSpec) -> Next:
    bound = getattr(instance, method.name)

    async def call(invocation: Invocation) -> Any:
        return await bound(**invocation.arguments)

    return call


async def _quietly(awaitable: Awaitable[Any], what: str) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("%s failed", what)
