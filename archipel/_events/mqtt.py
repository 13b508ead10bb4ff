"""The MQTT 5 event bus (our client, :mod:`archipel._mqtt`): the wire contract of events between processes.

An envelope with topic ``orders/placed`` of app ``shop`` travels as a QoS 1 PUBLISH on
``shop/orders/placed``, JSON payload, content type ``application/json``, and its CloudEvents
attributes (``specversion``, ``id``, ``source``, ``type``, ``time``, ``traceparent``) as MQTT 5
user properties, so ``mosquitto_sub -V 5 -F '%P %p'`` shows everything.

Each ``(group, topic)`` is one shared subscription ``$share/{group}/{root}/{topic}`` (the root is
the deployment name, by default the app's): every group gets each event once and the replicas of
a group share the work. A message is acknowledged (PUBACK) only after all of its handlers have
returned without raising (the runtime's dispatcher raises only when it must not acknowledge), so
a consumer that dies mid-handler gets it again from its durable session.

Shared-subscription groups are named ``{deployment}.{service}:{topic}`` with ``/`` as ``.``
(``$share/shop.email:orders.placed/shop/orders/placed``): MQTT 5 keys a shared subscription by group
*and* filter, but rumqttd (``broker = "rumqttd"``) keeps one filter per group name and client and
silently drops the others, so one group name per (service, topic) works on every broker.

Dead letters travel on ``{app}/$dead/{topic}`` (MQTT only reserves a *leading* ``$``).

At most ``max_inflight`` messages are handled at once: beyond that the bus stops reading the
socket, so the broker holds the rest (TCP back-pressure), and no queue grows in memory.

A bus logs in with ``username``/``password`` when given (each process its own: ``_deploy.acl``)
and speaks TLS on ``mqtts://``. A refused login fails ``start()`` at once, a refused publish raises
(``_events.endpoint``), naming the broker, the user and the reason, never the password.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import ssl
import uuid
from collections import deque
from dataclasses import dataclass

from prometheus_client import Counter

from .._backoff import backoff_delay
from .._mqtt import packets
from .._mqtt.client import ConnectionLost, ConnectRefused, Message, MqttClient, Rejected
from .._telemetry.metrics import EVENTS_ACKED
from .bus import DEAD_PREFIX, Envelope, Handler
from .endpoint import DEFAULT_PORT as DEFAULT_PORT
from .endpoint import BrokerRefused as BrokerRefused
from .endpoint import PublishRefused as PublishRefused
from .endpoint import broker_tls as broker_tls
from .endpoint import parse_broker_url as parse_broker_url

log = logging.getLogger("archipel.mqtt")

CONTENT_TYPE = "application/json"
SESSION_EXPIRY = 3600  # seconds a durable consumer may stay away and still find its queued events

_MAX_SUBSCRIPTION_ID = 268_435_455


@dataclass
class BusStats:
    published: int = 0
    received: int = 0
    acked: int = 0
    failed: int = 0  # a handler raised (the message stays unacked) or the ack could not be sent


@dataclass
class _Route:
    filter: str
    handlers: list[Handler]
    observers: bool = False  # observers see every event; one that fails does not hold its ack


def wire_topic(app: str, topic: str) -> str:
    """The MQTT topic of an envelope topic: ``shop`` + ``orders/placed`` -> ``shop/orders/placed``."""
    return f"{app}/{topic}"


def envelope_topic(app: str, wire: str) -> str:
    return wire.removeprefix(f"{app}/")


def share_group(root: str, service: str, topic: str) -> str:
    """The shared-subscription group of a service's handlers of one topic in deployment ``root``:
    ``shop.email:orders.placed`` (see the module doc). The deployment keeps two deployments of an
    app on one broker apart, and keeps the name unique per filter as rumqttd needs."""
    return f"{root}.{service}:{topic.replace('/', '.')}"


def shared_filter(root: str, service: str, topic: str) -> str:
    """The subscription of a service's handlers of one topic: ``$share/{group}/{root}/{topic}``."""
    return f"$share/{share_group(root, service, topic)}/{wire_topic(root, topic)}"


def subscription_id(key: str) -> int:
    # Stable across restarts: a resumed durable session delivers queued messages tagged with the
    # identifier of the previous run, and the bus routes on it.
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _MAX_SUBSCRIPTION_ID + 1


_PROPERTIES = packets.PropertiesEncoder(CONTENT_TYPE, (("specversion", "1.0"),))


def encode_properties(envelope: Envelope) -> bytes:
    """The PUBLISH properties block of an envelope: its CloudEvents attributes as user properties."""
    attributes: tuple[tuple[str, str], ...] = (
        ("id", envelope.id),
        ("source", envelope.source),
        ("type", envelope.type),
        ("time", envelope.time),
    )
    if envelope.traceparent:
        attributes += (("traceparent", envelope.traceparent),)
    return _PROPERTIES(attributes)


def decode_message(app: str, message: Message) -> Envelope:
    """An incoming PUBLISH as an Envelope; attributes a plain client did not send get defaults."""
    attrs = dict(message.user_properties)
    return Envelope(
        topic=envelope_topic(app, message.topic),
        type=attrs.get("type", ""),
        source=attrs.get("source", ""),
        id=attrs.get("id") or uuid.uuid4().hex,
        time=attrs.get("time") or datetime.datetime.now(datetime.UTC).isoformat(),
        traceparent=attrs.get("traceparent"),
        payload=message.payload,
    )


def filter_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (``+`` one level, ``#`` the rest; a shared
    subscription's ``$share/{group}/`` prefix is not part of the match)."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for index, part in enumerate(wanted):
        if part == "#":
            return True
        if index >= len(levels) or (part != "+" and part != levels[index]):
            return False
    return len(wanted) == len(levels)


class MqttBus:
    """EventBus over an MQTT 5 broker (``mqtt://host:port``, or ``mqtts://host:port`` for TLS).

    ``app`` is the topic root: the deployment's name (the app's name unless configured), which
    also prefixes share-group names, so two deployments on one broker never mix.
    ``durable=True`` keeps the broker-side session (stable ``client_id``, no clean start, one hour
    expiry): events published while this process is down wait for it. ``durable=False`` starts
    clean, for tests and observers. ``max_inflight`` bounds the handlers running at once; beyond
    it the bus stops reading the socket and messages wait, unacked, in the broker.
    ``username``/``password``: the broker login (none: anonymous). ``tls``: the context of an
    ``mqtts://`` connection (default: the system's trusted CAs, host name checked).
    """

    durable_publish = True  # publish returns on the broker's PUBACK

    def __init__(
        self,
        url: str,
        app: str,
        client_id: str,
        *,
        durable: bool = True,
        max_inflight: int = 100,
        connect_timeout: float = 30.0,
        publish_timeout: float = 30.0,
        drain_timeout: float = 10.0,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        self.url = url
        self.app = app
        self.client_id = client_id
        self.durable = durable
        self.username = username
        self.stats = BusStats()
        self._host, self._port = parse_broker_url(url)
        if tls is not None and not broker_tls(url):
            raise ValueError(f"a TLS context was given for {url}; use mqtts://{self._host}:{self._port}")
        self._tls = tls if tls is not None or not broker_tls(url) else ssl.create_default_context()
        self._password = password  # never logged, never in a message
        self._max_inflight = max_inflight
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._drain_timeout = drain_timeout
        self._routes: dict[tuple[str, str], _Route] = {}
        self._observers: list[Handler] = []
        self._client: MqttClient | None = None  # None: not started, or stopping
        self._acks: MqttClient | None = None  # kept while stopping, for the handlers finishing
        self._accepting = False  # new messages are handled (from connect until stop)
        self._by_id: dict[int, _Route] = {}
        self._dead_prefix = wire_topic(app, DEAD_PREFIX)
        self._handling: set[asyncio.Task[None]] = set()
        self._acked: dict[str, Counter] = {}  # by topic: label lookups cost more than the count
        self._waiting: deque[tuple[_Route, Message]] = deque()  # read beyond max_inflight, not started

    # -- EventBus ---------------------------------------------------------------------------

    def subscribe(self, group: str, topic: str, handler: Handler) -> None:
        self._check_not_started("subscribe")
        route = self._routes.get((group, topic))
        if route is None:
            route = self._routes[(group, topic)] = _Route(shared_filter(self.app, group, topic), [])
        route.handlers.append(handler)

    def observe(self, handler: Handler) -> None:
        self._check_not_started("observe")
        self._observers.append(handler)

    async def start(self) -> None:
        if self._client is not None:
            return
        routes = list(self._routes.values())
        if self._observers:
            routes.append(_Route(f"{self.app}/#", self._observers, observers=True))
        # Known before connecting: a resumed session delivers what was queued for it at once,
        # tagged with the identifiers of the previous run, which are the same (subscription_id).
        self._by_id = {subscription_id(route.filter): route for route in routes}
        client = MqttClient(
            self._host,
            self._port,
            self.client_id,
            on_message=self._on_message,
            clean_start=not self.durable,
            session_expiry=SESSION_EXPIRY if self.durable else 0,
            username=self.username,
            password=self._password,
            tls=self._tls,
        )
        self._acks, self._accepting = client, True  # a resumed session delivers during connect
        try:
            await self._connect(client)
        except BaseException:
            self._acks, self._accepting = None, False
            raise
        self._client = client
        try:
            for identifier, route in self._by_id.items():
                await client.subscribe(route.filter, 1, identifier)
        except BaseException:
            await self.stop()
            raise

    async def _connect(self, client: MqttClient) -> None:
        # A broker still starting refuses the TCP connection: try again until connect_timeout.
        # A refused login is final at once (trying again cannot fix it).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        attempt, failure = 0, ""
        while True:
            attempt += 1
            try:
                async with asyncio.timeout_at(deadline):
                    await client.connect()
                return
            except ConnectRefused as exc:
                raise BrokerRefused(self.url, self.username, exc.reason_code) from None
            except ssl.SSLError as exc:
                failure = f": {exc}"
            except TimeoutError:
                pass
            except OSError as exc:
                failure = f": {exc}"
            if loop.time() >= deadline:
                hint = "; is its certificate trusted and issued for that host?" if self._tls else ""
                raise ConnectionError(
                    f"MQTT broker {self.url} not reachable within {self._connect_timeout}s{failure}{hint}"
                )
            await asyncio.sleep(min(backoff_delay(attempt, 0.05, 1.0), max(0.0, deadline - loop.time())))

    async def leave(self, quiet: float = 0.5) -> None:
        """This replica is removed for good: unsubscribe its shared subscriptions, so the broker
        gives their next events to the other replicas, then keep handling what was already sent
        or queued for this session until nothing has come for ``quiet`` seconds (at most the
        drain timeout). Without this, ending the session of a removed replica would drop the
        events queued for it. Call before :meth:`stop`."""
        client = self._client
        if client is None:
            return
        filters = [route.filter for route in self._by_id.values() if not route.observers]
        if filters:
            try:
                await client.unsubscribe(filters)
            except (Rejected, ConnectionLost) as exc:  # the session ends anyway; queued may come again
                log.warning("leaving: could not unsubscribe %s: %s", filters, exc)
            else:
                log.info("leaving: unsubscribed %s", ", ".join(filters))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._drain_timeout
        seen = -1
        while loop.time() < deadline and (seen != self.stats.received or self._handling):
            seen = self.stats.received
            await asyncio.sleep(quiet)  # no event announces "nothing more is queued": wait for quiet

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        self._accepting = False
        client.pause_reading()  # nothing new starts; what was read but not started stays unacked
        self._waiting.clear()
        if self._handling:
            _, pending = await asyncio.wait(set(self._handling), timeout=self._drain_timeout)
            for task in pending:  # left unacked: the broker redelivers them
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._acks = None
        await client.disconnect()

    async def publish(self, envelope: Envelope, *, timeout: float | None = None) -> None:
        """Publish at QoS 1; returns once the broker acknowledged it. While the connection is
        being restored, waits (up to ``timeout``, default ``publish_timeout``) and sends again:
        at least once."""
        client = self._client
        if client is None:
            raise RuntimeError(f"event bus is stopped; cannot publish {envelope.topic!r}")
        payload = envelope.body()
        topic = wire_topic(self.app, envelope.topic)
        properties = encode_properties(envelope)
        limit = self._publish_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                while True:
                    if not client.connected:
                        await client.wait_connected()
                    try:
                        await client.publish(topic, payload, properties)
                        break
                    except ConnectionLost:
                        if self._client is not client:
                            raise
                        # Dropped before the PUBACK: send again once reconnected.
        except Rejected as exc:
            raise PublishRefused(self.url, self.username, topic, exc.reason_code) from None
        except TimeoutError as exc:
            raise TimeoutError(f"publishing {topic!r}: no broker acknowledgement within {limit}s") from exc
        self.stats.published += 1

    # -- internals --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        client = self._client
        return client is not None and client.connected

    def _check_not_started(self, what: str) -> None:
        if self._client is not None:
            raise RuntimeError(f"MqttBus.{what}() must be called before start()")

    def _route_of(self, message: Message) -> _Route | None:
        for identifier in message.subscription_ids:
            route = self._by_id.get(identifier)
            if route is not None:
                return route
        # A broker that does not send subscription identifiers: match the filters.
        for route in self._by_id.values():
            if filter_matches(route.filter, message.topic):
                return route
        return None

    def _on_message(self, message: Message) -> None:
        # Called by the client as each PUBLISH is read: no queue between the socket and here.
        if not self._accepting:
            return  # stopping: left unacknowledged, the broker delivers it again
        self.stats.received += 1
        route = self._route_of(message)
        if route is None:
            # Queued for a subscription this code no longer has (its shape changed): nobody here
            # handles it, and left unacknowledged it would hold a slot of the broker's window.
            log.warning(
                "no handler here for %s (subscriptions %s): acknowledged",
                message.topic,
                message.subscription_ids,
            )
            if self._acks is not None:
                self._acks.ack(message)
            return
        if len(self._handling) >= self._max_inflight:
            self._waiting.append((route, message))
            if self._acks is not None:
                self._acks.pause_reading()
            return
        self._start(route, message)

    def _start(self, route: _Route, message: Message) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(route, message))
        self._handling.add(task)
        task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Task[None]) -> None:
        self._handling.discard(task)
        while self._waiting and len(self._handling) < self._max_inflight:
            self._start(*self._waiting.popleft())
        if not self._waiting and self._accepting and self._acks is not None:
            self._acks.resume_reading()

    async def _handle(self, route: _Route, message: Message) -> None:
        envelope = decode_message(self.app, message)
        handlers = route.handlers
        if len(handlers) == 1:  # the common case; skips gather's extra tasks
            results: list[BaseException | None] = []
            try:
                await handlers[0](envelope)
            except Exception as exc:
                results.append(exc)
        else:
            results = await asyncio.gather(*(h(envelope) for h in handlers), return_exceptions=True)
        failures = [result for result in results if isinstance(result, Exception)]
        for failure in failures:
            self.stats.failed += 1
            log.error("event handler failed on %s", message.topic, exc_info=failure)
        if failures and not route.observers:
            # Not acknowledged: the broker delivers it again when this session resumes.
            return
        client = self._acks
        try:
            acked = client is not None and client.ack(message)
        except ConnectionLost:
            acked = False
        if not acked:
            # Connection lost meanwhile: a durable session gets the message again.
            self.stats.failed += 1
            log.warning("could not acknowledge %s; the broker will redeliver it", message.topic)
            return
        self.stats.acked += 1
        if not route.observers:
            counter = self._acked.get(envelope.topic)
            if counter is None:
                counter = self._acked[envelope.topic] = EVENTS_ACKED.labels(envelope.topic)
            counter.inc()
