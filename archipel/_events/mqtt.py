"""The MQTT 5 event bus (zmqtt client): the wire contract of events between processes.

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

Dead letters travel on ``{app}/$dead/{topic}``. MQTT only reserves a *leading* ``$``, but zmqtt's
``publish`` refuses ``$`` anywhere, so dead letters go through its protocol layer directly.

A bus logs in with ``username``/``password`` when given (each process its own: ``_deploy.acl``)
and speaks TLS on ``mqtts://``. A refused login fails ``start()`` at once, a refused publish raises
(``_events.endpoint``), naming the broker, the user and the reason, never the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import ssl
import uuid
from dataclasses import dataclass

from zmqtt import Message as MqttMessage
from zmqtt import (
    MQTTClient,
    MQTTConnectError,
    MQTTDisconnectedError,
    MQTTError,
    MQTTPublishError,
    PublishProperties,
    QoS,
    ReconnectConfig,
    Subscription,
)
from zmqtt._internal.packets.publish import Publish

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

# Must exceed the broker's in-flight window for QoS 1 (Mosquitto 20, EMQX 32, rumqttd
# max_inflight_count 100): unacked messages then always fit, and zmqtt's read loop never blocks on
# a full queue while a handler awaits the PUBACK of an event it emits (that would deadlock).
# Only QoS 0 floods from foreign clients can fill it; then TCP pushes back on the broker.
_RECEIVE_BUFFER = 10_000
_MAX_SUBSCRIPTION_ID = 268_435_455
_RECONNECT_POLL = 0.05


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
    manual_ack: bool
    subscription: Subscription | None = None


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
    # identifier of the previous run, and zmqtt routes on it.
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _MAX_SUBSCRIPTION_ID + 1


def encode_properties(envelope: Envelope) -> PublishProperties:
    props = [
        ("specversion", "1.0"),
        ("id", envelope.id),
        ("source", envelope.source),
        ("type", envelope.type),
        ("time", envelope.time),
    ]
    if envelope.traceparent:
        props.append(("traceparent", envelope.traceparent))
    return PublishProperties(
        payload_format_indicator=1, content_type=CONTENT_TYPE, user_properties=tuple(props)
    )


def decode_message(app: str, message: MqttMessage) -> Envelope:
    """An incoming PUBLISH as an Envelope; attributes a plain client did not send get defaults."""
    attrs: dict[str, str] = dict(message.properties.user_properties) if message.properties else {}
    return Envelope(
        topic=envelope_topic(app, message.topic),
        type=attrs.get("type", ""),
        source=attrs.get("source", ""),
        id=attrs.get("id") or uuid.uuid4().hex,
        time=attrs.get("time") or datetime.datetime.now(datetime.UTC).isoformat(),
        traceparent=attrs.get("traceparent"),
        payload=message.payload,
    )


class MqttBus:
    """EventBus over an MQTT 5 broker (``mqtt://host:port``, or ``mqtts://host:port`` for TLS).

    ``app`` is the topic root: the deployment's name (the app's name unless configured), which
    also prefixes share-group names, so two deployments on one broker never mix.
    ``durable=True`` keeps the broker-side session (stable ``client_id``, no clean start, one hour
    expiry): events published while this process is down wait for it. ``durable=False`` starts
    clean, for tests and observers. ``max_inflight`` bounds the handlers running at once; beyond
    it messages wait in the client's buffer and, unacked, in the broker.
    ``username``/``password``: the broker login (none: anonymous). ``tls``: the context of an
    ``mqtts://`` connection (default: the system's trusted CAs, host name checked).
    """

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
        self._client: MQTTClient | None = None
        self._slots = asyncio.Semaphore(max_inflight)
        self._dead_prefix = wire_topic(app, DEAD_PREFIX)
        self._active: list[_Route] = []
        self._consumers: list[asyncio.Task[None]] = []
        self._handling: set[asyncio.Task[None]] = set()

    # -- EventBus ---------------------------------------------------------------------------

    def subscribe(self, group: str, topic: str, handler: Handler) -> None:
        self._check_not_started("subscribe")
        route = self._routes.get((group, topic))
        if route is None:
            route = self._routes[(group, topic)] = _Route(
                shared_filter(self.app, group, topic), [], manual_ack=True
            )
        route.handlers.append(handler)

    def observe(self, handler: Handler) -> None:
        self._check_not_started("observe")
        self._observers.append(handler)

    async def start(self) -> None:
        if self._client is not None:
            return
        client = MQTTClient(
            self._host,
            self._port,
            client_id=self.client_id,
            version="5.0",
            clean_session=not self.durable,
            session_expiry_interval=SESSION_EXPIRY if self.durable else 0,
            # A service keeps trying while the broker restarts; the supervisor decides when to give up.
            reconnect=ReconnectConfig(initial_delay=0.2, max_delay=5.0, max_attempts=None),
            mqtt_connect_timeout=10.0,
            username=self.username,
            password=self._password,
            tls=self._tls,
        )
        try:
            await asyncio.wait_for(client.connect(), self._connect_timeout)
        except TimeoutError as exc:
            # zmqtt retries a failed TLS handshake like any network error (and logs why).
            hint = "; is its certificate trusted and issued for that host?" if self._tls else ""
            raise ConnectionError(
                f"MQTT broker {self.url} not reachable within {self._connect_timeout}s{hint}"
            ) from exc
        except MQTTConnectError as exc:
            # zmqtt never retries a refused CONNECT: fail now, naming who was refused and why.
            raise BrokerRefused(self.url, self.username, exc.return_code) from None
        self._client = client
        routes = list(self._routes.values())
        if self._observers:
            # Manual ack here too: observers' messages then count against the broker's in-flight
            # window like the others, which keeps the receive buffer from filling (see above).
            routes.append(_Route(f"{self.app}/#", self._observers, manual_ack=True))
        try:
            for route in routes:
                self._active.append(route)
                route.subscription = client.subscribe(
                    route.filter,
                    qos=QoS.AT_LEAST_ONCE,
                    auto_ack=not route.manual_ack,
                    receive_buffer_size=_RECEIVE_BUFFER,
                    subscription_identifier=subscription_id(route.filter),
                )
                await route.subscription.start()
                self._consumers.append(asyncio.create_task(self._consume(route), name=f"mqtt {route.filter}"))
        except BaseException:
            await self.stop()
            raise

    async def leave(self, quiet: float = 0.5) -> None:
        """This replica is removed for good: unsubscribe its shared subscriptions, so the broker
        gives their next events to the other replicas, then keep handling what was already sent
        or queued for this session until nothing has come for ``quiet`` seconds (at most the
        drain timeout). Without this, ending the session of a removed replica would drop the
        events queued for it. Call before :meth:`stop`."""
        client = self._client
        protocol = client._protocol if client is not None else None  # zmqtt's protocol layer
        if protocol is None:
            return
        for route in self._active:
            subscription = route.subscription
            if subscription is None or route.handlers is self._observers:
                continue
            # UNSUBSCRIBE without zmqtt's Subscription.stop(), which would also stop routing the
            # messages still on their way to this subscription.
            filters = list(subscription._registered_filters)
            try:
                await protocol.unsubscribe(filters)
            except Exception as exc:  # the session ends anyway; what was queued may be redelivered
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
        consumers, self._consumers = self._consumers, []
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        if self._handling:
            _, pending = await asyncio.wait(set(self._handling), timeout=self._drain_timeout)
            for task in pending:  # left unacked: the broker redelivers them
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        active, self._active = self._active, []
        for route in active:
            await self._detach(route)
        with contextlib.suppress(Exception):
            await client.disconnect()

    async def publish(self, envelope: Envelope) -> None:
        """Publish at QoS 1; returns once the broker acknowledged it. While the connection is
        being restored, waits (up to ``publish_timeout``) and retries: at least once."""
        client = self._client
        if client is None:
            raise RuntimeError(f"event bus is stopped; cannot publish {envelope.topic!r}")
        payload = envelope.body()
        topic = wire_topic(self.app, envelope.topic)
        properties = encode_properties(envelope)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._publish_timeout
        retry = False
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    if retry:  # let zmqtt's run loop notice the loss before we look again
                        await asyncio.sleep(_RECONNECT_POLL)
                    await self._wait_connected(client)
                    if topic.startswith(self._dead_prefix):
                        await _publish_unchecked(client, topic, payload, properties)
                    else:
                        await client.publish(topic, payload, qos=QoS.AT_LEAST_ONCE, properties=properties)
            except MQTTPublishError as exc:
                raise PublishRefused(self.url, self.username, topic, exc.reason_code) from None
            except (MQTTDisconnectedError, ConnectionError):
                if self._client is not client:
                    raise
                retry = True  # the connection dropped before PUBACK: wait for the reconnect, send again
                continue
            except TimeoutError as exc:
                raise TimeoutError(
                    f"publishing {topic!r}: no broker acknowledgement within {self._publish_timeout}s"
                ) from exc
            self.stats.published += 1
            return

    # -- internals --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            client.connection_info  # noqa: B018 - raises while disconnected
        except MQTTDisconnectedError:
            return False
        return True

    async def _wait_connected(self, client: MQTTClient) -> None:
        # zmqtt offers no "reconnected" signal; poll its handshake snapshot.
        while self._client is client and not self.connected:
            await asyncio.sleep(_RECONNECT_POLL)

    def _check_not_started(self, what: str) -> None:
        if self._client is not None:
            raise RuntimeError(f"MqttBus.{what}() must be called before start()")

    async def _consume(self, route: _Route) -> None:
        assert route.subscription is not None
        while True:
            await self._slots.acquire()  # bounded concurrency; the buffer and the broker hold the rest
            try:
                message = await route.subscription.get_message()
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except Exception:
                self._slots.release()
                log.exception("MQTT subscription %s stopped", route.filter)
                return
            self.stats.received += 1
            task = asyncio.create_task(self._handle(route, message))
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)

    async def _handle(self, route: _Route, message: MqttMessage) -> None:
        try:
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
            if failures and route.handlers is not self._observers:
                # Not acknowledged: the broker delivers it again when this session resumes.
                return
            try:
                await message.ack()
            except (MQTTError, OSError):
                # Connection lost meanwhile: a durable session gets the message again.
                self.stats.failed += 1
                log.warning("could not acknowledge %s; the broker will redeliver it", message.topic)
            else:
                self.stats.acked += 1
                if route.manual_ack and route.handlers is not self._observers:
                    EVENTS_ACKED.labels(envelope.topic).inc()
        finally:
            self._slots.release()

    async def _detach(self, route: _Route) -> None:
        subscription, route.subscription = route.subscription, None
        if subscription is None:
            return
        # Detach, not unsubscribe: a durable session must keep its broker-side subscriptions so
        # events published while we are down are queued for us.
        with contextlib.suppress(Exception):
            await subscription.detach()


async def _publish_unchecked(
    client: MQTTClient, topic: str, payload: bytes, properties: PublishProperties
) -> None:
    """QoS 1 publish of a topic with ``$`` past its first level, valid MQTT that zmqtt's
    ``publish`` refuses. Uses zmqtt's protocol layer, the step its ``publish`` ends with."""
    protocol = client._protocol
    if protocol is None:
        raise MQTTDisconnectedError("Not connected")
    packet = Publish(
        topic=topic, payload=payload, qos=QoS.AT_LEAST_ONCE, retain=False, dup=False, properties=properties
    )
    await protocol.publish(packet)
