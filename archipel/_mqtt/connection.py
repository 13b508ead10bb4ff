"""One TCP (or TLS) connection to an MQTT 5 broker, as an asyncio protocol.

It frames packets, resolves the futures of packets awaiting an acknowledgement (CONNACK, PUBACK,
SUBACK, UNSUBACK) and hands each incoming PUBLISH to the client at once, on the event loop's
reading callback: no task, no queue per message. Reading can be paused, which stops the kernel
from taking more bytes from the broker (TCP back-pressure) while the consumer is busy.

Keep-alive: a PINGREQ every half keep-alive interval; nothing received for one and a half
intervals means the broker is gone (or stopped), and the connection is aborted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from . import packets
from .packets import Ack, MalformedPacket, Message

log = logging.getLogger("archipel.mqtt")


class ConnectionLost(ConnectionError):
    """The connection to the broker closed before the answer came."""


class Connection(asyncio.Protocol):
    def __init__(
        self,
        generation: int,
        on_message: Callable[[Message], None],
        on_lost: Callable[[Connection, Exception | None], None],
        keep_alive: float,
    ) -> None:
        self.generation = generation
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Ack]] = {}  # packet id -> its acknowledgement
        self.handshake: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self.window: asyncio.Semaphore = asyncio.Semaphore(65_535)  # set from CONNACK's Receive Maximum
        self.closed = False
        self.disconnect_reason: tuple[int, str | None] | None = None
        self._on_message = on_message
        self._on_lost = on_lost
        self._buffer = bytearray()
        self._outgoing: list[bytes] = []  # write_soon's packets, written at the end of this turn
        self._keep_alive = keep_alive
        self._loop = asyncio.get_running_loop()
        self._last_received = self._loop.time()
        self._ping: asyncio.TimerHandle | None = None
        self._next_id = 0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's is not an asyncio.Transport subclass, hence no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        if self._keep_alive > 0:
            self._ping = self._loop.call_later(self._keep_alive / 2, self._keep_alive_tick)

    def data_received(self, data: bytes) -> None:
        self._last_received = self._loop.time()
        if self._buffer:  # the rest of a packet split across reads
            self._buffer += data
            data = bytes(self._buffer)
            self._buffer.clear()
        try:
            found, used = packets.split(data)
            if used < len(data):
                self._buffer += data[used:]
            for first_byte, body in found:
                kind = first_byte >> 4
                if kind == packets.PUBLISH:
                    message = packets.decode_publish(first_byte, body)
                    message.generation = self.generation
                    self._on_message(message)
                elif kind in (packets.PUBACK, packets.SUBACK, packets.UNSUBACK):
                    ack = packets.decode_ack(kind, body)
                    future = self.pending.pop(ack.packet_id, None)
                    if future is not None and not future.done():
                        future.set_result(ack)
                elif kind == packets.CONNACK:
                    if not self.handshake.done():
                        self.handshake.set_result(packets.decode_ack(kind, body))
                elif kind == packets.DISCONNECT:
                    self.disconnect_reason = packets.decode_disconnect(body)
                elif kind != packets.PINGRESP:
                    raise MalformedPacket(f"unexpected packet type {kind} from a broker")
        except MalformedPacket as exc:
            log.error("closing the connection to the MQTT broker: %s", exc)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._ping is not None:
            self._ping.cancel()
        reason = self._why(exc)
        if not self.handshake.done():
            self.handshake.set_exception(reason)
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(reason)
        self._on_lost(self, exc)

    # -- use --------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ConnectionLost("not connected to the MQTT broker")
        if self._outgoing:
            self._flush()  # what was queued goes first: a DISCONNECT never overtakes an ack
        self.transport.write(data)

    def write_soon(self, data: bytes) -> None:
        """Queue ``data`` to be written with everything else queued in this turn of the event
        loop: the PUBACKs of a burst of messages and the PUBLISHes of a burst of emits each leave
        in one system call instead of one per packet (a third of a consumer's CPU otherwise)."""
        if self.closed or self.transport is None:
            raise ConnectionLost("not connected to the MQTT broker")
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(data)

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if outgoing and not self.closed and self.transport is not None:
            self.transport.write(b"".join(outgoing))

    def expect(self, packet_id: int) -> asyncio.Future[Ack]:
        future: asyncio.Future[Ack] = self._loop.create_future()
        self.pending[packet_id] = future
        return future

    def packet_id(self) -> int:
        """A packet identifier not awaiting an acknowledgement on this connection."""
        for _ in range(65_535):
            self._next_id = self._next_id % 65_535 + 1
            if self._next_id not in self.pending:
                return self._next_id
        raise ConnectionLost("every MQTT packet identifier is in use")

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and self.transport.is_reading():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and not self.transport.is_reading():
            self._last_received = self._loop.time()
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def _why(self, exc: Exception | None) -> ConnectionLost:
        if self.disconnect_reason is not None:
            code, text = self.disconnect_reason
            detail = f": {text}" if text else ""
            return ConnectionLost(f"the MQTT broker disconnected us with reason 0x{code:02x}{detail}")
        return ConnectionLost(f"connection to the MQTT broker lost{f': {exc}' if exc else ''}")

    def _keep_alive_tick(self) -> None:
        if self.closed:
            return
        # While reading is paused the broker's answers wait in the kernel: silence proves nothing.
        reading = self.transport is not None and self.transport.is_reading()
        if reading and self._loop.time() - self._last_received > self._keep_alive * 1.5:
            log.warning("no answer from the MQTT broker for %.0fs: reconnecting", self._keep_alive * 1.5)
            self.abort()
            return
        try:
            self.write(packets.PINGREQ_PACKET)
        except ConnectionLost:
            return
        self._ping = self._loop.call_later(self._keep_alive / 2, self._keep_alive_tick)
