"""A small MQTT 5 client for the event bus: QoS 1 publish awaiting its PUBACK, subscriptions with
identifiers, acknowledgement by the consumer when it is done, durable sessions, reconnection.

Why our own (ADR 0010): the bus needs acknowledgement *after* the handler, a bound on the
messages being handled (by pausing the socket: TCP back-pressure, not a queue), a publish that
returns when the broker has the message, and persistent sessions; the asyncio clients that do all
of that cost 3 to 4 times the CPU per message of one that does none. This one keeps each step
on the reading callback: one decode, one call per message.

- :meth:`MqttClient.connect` fails at once when the broker refuses the login
  (:class:`ConnectRefused`) or cannot be reached; once connected, a lost connection is
  re-established in the background with jittered exponential back-off, forever, until
  :meth:`MqttClient.disconnect`. A session the broker did not keep gets its subscriptions again.
- A publish whose connection drops before its PUBACK raises :class:`ConnectionLost`: the caller
  decides whether to send it again (the bus does, once reconnected: at least once).
- :meth:`MqttClient.ack` of a message that came on an earlier connection sends nothing: the broker
  delivers it again on the resumed session.
- The broker's Receive Maximum bounds our QoS 1 publishes awaiting a PUBACK (Mosquitto
  disconnects a client that exceeds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from .._backoff import backoff_delay
from . import packets
from .connection import Connection, ConnectionLost
from .packets import Message

log = logging.getLogger("archipel.mqtt")

__all__ = ["ConnectRefused", "ConnectionLost", "Message", "MqttClient", "Rejected"]


class ConnectRefused(ConnectionError):
    """The broker answered CONNECT with a refusal (a reason code of 0x80 or more)."""

    def __init__(self, reason_code: int) -> None:
        super().__init__(f"CONNECT refused with reason 0x{reason_code:02x}")
        self.reason_code = reason_code


class Rejected(Exception):
    """The broker refused a PUBLISH, SUBSCRIBE or UNSUBSCRIBE: ``reason_code`` says why."""

    def __init__(self, what: str, reason_code: int) -> None:
        super().__init__(f"{what} refused with reason 0x{reason_code:02x}")
        self.what, self.reason_code = what, reason_code


class MqttClient:
    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        on_message: Callable[[Message], None],
        clean_start: bool = True,
        session_expiry: int = 0,
        keep_alive: int = 30,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        reconnect_initial: float = 0.2,
        reconnect_max: float = 5.0,
    ) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self._on_message = on_message
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        self._keep_alive = keep_alive
        self._username = username
        self._password = password  # never logged
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._reconnect_initial = reconnect_initial
        self._reconnect_max = reconnect_max
        self._connection: Connection | None = None
        self._generation = 0
        self._connected = asyncio.Event()
        self._closing = False
        self._paused = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._subscriptions: dict[str, tuple[int, int | None]] = {}  # filter -> (qos, identifier)

    # -- connection -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def connect(self) -> None:
        """The first connection: raises ConnectRefused, OSError or TimeoutError."""
        self._closing = False
        await self._open(clean_start=self._clean_start)

    async def disconnect(self) -> None:
        """Leave for good: a normal DISCONNECT keeps a durable session for its expiry interval."""
        self._closing = True
        self._connected.clear()
        task, self._reconnecting = self._reconnecting, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        connection, self._connection = self._connection, None
        if connection is not None and not connection.closed:
            with contextlib.suppress(ConnectionLost):
                connection.write(packets.DISCONNECT_PACKET)
            connection.close()

    async def _open(self, clean_start: bool) -> Connection:
        loop = asyncio.get_running_loop()
        self._generation += 1
        generation = self._generation

        def protocol() -> Connection:
            return Connection(generation, self._on_message, self._lost, self._keep_alive)

        async with asyncio.timeout(self._connect_timeout):
            _, connection = await loop.create_connection(
                protocol,
                self.host,
                self.port,
                ssl=self._tls,
                server_hostname=self.host if self._tls else None,
            )
            try:
                connection.write(
                    packets.connect(
                        self.client_id,
                        clean_start=clean_start,
                        session_expiry=self._session_expiry,
                        keep_alive=self._keep_alive,
                        username=self._username,
                        password=self._password,
                    )
                )
                ack = await connection.handshake
            except BaseException:
                connection.abort()
                raise
        if ack.reasons[0] >= 0x80:
            connection.abort()
            raise ConnectRefused(ack.reasons[0])
        connection.window = asyncio.Semaphore(int(ack.properties.get(packets.RECEIVE_MAXIMUM, 65_535)))
        self._connection = connection  # before subscribing: what arrives meanwhile can be acked
        if self._paused:
            connection.pause_reading()
        if not ack.session_present:
            try:
                await self._subscribe_again(connection)
            except BaseException:
                self._connection = None  # not "lost": the caller retries or fails
                connection.abort()
                raise
        self._connected.set()
        return connection

    async def _subscribe_again(self, connection: Connection) -> None:
        # A session the broker did not keep (clean start, expired, broker without persistence)
        # has no subscriptions: restore them before anyone counts on being connected.
        for topic_filter, (qos, identifier) in list(self._subscriptions.items()):
            await self._request(
                connection, _subscribe_packet(topic_filter, qos, identifier), f"SUBSCRIBE {topic_filter}"
            )

    def _lost(self, connection: Connection, exc: Exception | None) -> None:
        if connection is not self._connection:
            return
        self._connection = None
        self._connected.clear()
        if self._closing:
            return
        why = connection.disconnect_reason or exc or "closed by the broker"
        log.warning(
            "MQTT connection of %s to %s:%d lost (%s); reconnecting",
            self.client_id,
            self.host,
            self.port,
            why,
        )
        self._reconnecting = asyncio.create_task(self._reconnect(), name=f"mqtt reconnect {self.client_id}")

    async def _reconnect(self) -> None:
        attempt = 0
        while not self._closing:
            attempt += 1
            # A pause even before the first attempt: a broker that dropped us for a session
            # takeover would otherwise see the two clients take the session from each other.
            await asyncio.sleep(backoff_delay(attempt, self._reconnect_initial, self._reconnect_max))
            try:
                # A durable session is resumed; a clean one starts clean again.
                await self._open(clean_start=self._clean_start)
            except (OSError, TimeoutError, Rejected) as exc:  # ConnectRefused is an OSError
                if attempt & (attempt - 1) == 0:  # attempts 1, 2, 4, 8...: logged, not flooded
                    log.warning(
                        "MQTT broker %s:%d: reconnecting failed (attempt %d): %s",
                        self.host,
                        self.port,
                        attempt,
                        exc,
                    )
                continue
            log.info("MQTT connection of %s to %s:%d restored", self.client_id, self.host, self.port)
            self._reconnecting = None
            return

    # -- flow -------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        self._paused = True
        if self._connection is not None:
            self._connection.pause_reading()

    def resume_reading(self) -> None:
        self._paused = False
        if self._connection is not None:
            self._connection.resume_reading()

    # -- packets ----------------------------------------------------------------------------

    def _current(self) -> Connection:
        connection = self._connection
        if connection is None or connection.closed or not self._connected.is_set():
            raise ConnectionLost("not connected to the MQTT broker")
        return connection

    async def _request(self, connection: Connection, make: Callable[[int], bytes], what: str) -> packets.Ack:
        packet_id = connection.packet_id()
        answer = connection.expect(packet_id)
        connection.write(make(packet_id))
        ack = await answer
        failed = [code for code in ack.reasons if code >= 0x80]
        if failed:
            raise Rejected(what, failed[0])
        return ack

    async def publish(self, topic: str, payload: bytes, properties: bytes) -> None:
        """QoS 1: returns once the broker acknowledged it. ``properties``: a block from
        :func:`packets.publish_properties`."""
        connection = self._current()
        async with connection.window:
            if connection.closed:
                raise ConnectionLost("connection to the MQTT broker lost")
            packet_id = connection.packet_id()
            answer = connection.expect(packet_id)
            connection.write_soon(packets.publish(topic, payload, packet_id, properties))
            ack = await answer
        if ack.reasons[0] >= 0x80:
            raise Rejected(f"PUBLISH to {topic}", ack.reasons[0])

    def ack(self, message: Message) -> bool:
        """Acknowledge a QoS 1 message; False when its connection is gone (it will come again)."""
        connection = self._connection
        if message.qos == 0:
            return True
        if connection is None or connection.closed or connection.generation != message.generation:
            return False
        connection.write_soon(packets.puback(message.packet_id))
        return True

    async def subscribe(self, topic_filter: str, qos: int, identifier: int | None = None) -> None:
        """Subscribe now and again after any reconnect that lost the session."""
        self._subscriptions[topic_filter] = (qos, identifier)
        await self._request(
            self._current(), _subscribe_packet(topic_filter, qos, identifier), f"SUBSCRIBE {topic_filter}"
        )

    async def unsubscribe(self, filters: list[str]) -> None:
        for topic_filter in filters:
            self._subscriptions.pop(topic_filter, None)
        await self._request(
            self._current(),
            lambda packet_id: packets.unsubscribe(packet_id, filters),
            f"UNSUBSCRIBE {filters}",
        )


def _subscribe_packet(topic_filter: str, qos: int, identifier: int | None) -> Callable[[int], bytes]:
    return lambda packet_id: packets.subscribe(packet_id, topic_filter, qos, identifier)
