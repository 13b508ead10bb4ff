"""MQTT-level checks and repairs of a broker, in a few raw MQTT 5 packets (no client library).

A TCP accept proves little: the kernel accepts for a stopped (SIGSTOP) broker, and rumqttd keeps
accepting after its router thread died. :func:`probe` therefore does a whole round trip on a
private topic: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH to itself and receive it. The session is
clean with expiry 0, so the broker keeps nothing of it (nothing for Mosquitto to persist).

:func:`end_session` connects once under a client id with clean start, which makes the broker drop
that id's session and whatever is queued for it. :func:`restore_subscriptions` resumes a session
and subscribes it again, as its own client would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

PROBE_ROOT = "archipel-probe"  # outside every deployment's topic tree: observers never see probes

_CONNECT, _CONNACK, _PUBLISH, _SUBSCRIBE, _SUBACK = 0x10, 0x20, 0x30, 0x82, 0x90
_DISCONNECT = b"\xe0\x00"


class ProbeFailed(Exception):
    """The broker did not complete an MQTT exchange; the message says which step and why."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def _connect(client_id: str, session_expiry: int = 0) -> bytes:
    # Protocol "MQTT" level 5; keep-alive 10 s. Expiry 0: clean start, nothing kept. Otherwise
    # resume the session (clean start off) and keep it that many seconds after we leave.
    if not session_expiry:
        return _packet(_CONNECT, _string("MQTT") + b"\x05\x02\x00\x0a\x00" + _string(client_id))
    properties = b"\x11" + session_expiry.to_bytes(4, "big")
    header = _string("MQTT") + b"\x05\x00\x00\x0a" + _varint(len(properties)) + properties
    return _packet(_CONNECT, header + _string(client_id))


def _subscribe(packet_id: int, topic_filter: str, qos: int, identifier: int | None) -> bytes:
    properties = b"" if identifier is None else b"\x0b" + _varint(identifier)
    body = packet_id.to_bytes(2, "big") + _varint(len(properties)) + properties
    return _packet(_SUBSCRIBE, body + _string(topic_filter) + bytes([qos]))


async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    kind = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        digit = (await reader.readexactly(1))[0]
        length += (digit & 0x7F) << shift
        shift += 7
        if not digit & 0x80:
            break
    return kind, await reader.readexactly(length)


async def _handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client_id: str, session_expiry: int = 0
) -> None:
    writer.write(_connect(client_id, session_expiry))
    kind, body = await _read(reader)
    if kind != _CONNACK or len(body) < 2:
        raise ProbeFailed(f"expected CONNACK, got packet type {kind >> 4}")
    if body[1] != 0:
        raise ProbeFailed(f"CONNECT refused with reason code 0x{body[1]:02x}")


async def _subscribed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, packet: bytes, topic_filter: str
) -> None:
    writer.write(packet)
    # A resumed session may first get its queued messages: left unacknowledged, they stay queued
    # for the session's own client.
    while (reply := await _read(reader))[0] & 0xF0 == _PUBLISH:
        pass
    kind, body = reply
    if kind != _SUBACK or not body or body[-1] >= 0x80:
        raise ProbeFailed(f"SUBSCRIBE to {topic_filter} refused")


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, topic: str) -> None:
    await _subscribed(reader, writer, _subscribe(1, topic, 0, None), topic)
    writer.write(_packet(_PUBLISH, _string(topic) + b"\x00" + b"ping"))
    while (await _read(reader))[0] & 0xF0 != _PUBLISH:
        pass  # anything else (none expected) is skipped until our message comes back


async def _exchange(
    host: str,
    port: int,
    client_id: str,
    timeout: float,
    round_trip: bool = False,
    session_expiry: int = 0,
    filters: Sequence[tuple[str, int]] = (),
) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            await _handshake(reader, writer, client_id, session_expiry)
            if round_trip:
                await _round_trip(reader, writer, f"{PROBE_ROOT}/{client_id}")
            for packet_id, (topic_filter, identifier) in enumerate(filters, start=1):
                # QoS 1, as the bus subscribes; one packet each: the identifier is per SUBSCRIBE.
                await _subscribed(
                    reader, writer, _subscribe(packet_id, topic_filter, 1, identifier), topic_filter
                )
            writer.write(_DISCONNECT)
            await writer.drain()
    except TimeoutError:
        raise ProbeFailed(f"no answer from mqtt://{host}:{port} within {timeout:g}s") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise ProbeFailed(f"mqtt://{host}:{port}: {type(exc).__name__}: {exc}") from None
    finally:
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.close()  # not awaited: a stopped broker never completes the close
    return loop.time() - started


async def probe(host: str, port: int, client_id: str, timeout: float = 1.0) -> float:
    """Seconds one publish/subscribe round trip took; raises :class:`ProbeFailed`."""
    return await _exchange(host, port, client_id, timeout, round_trip=True)


async def restore_subscriptions(
    host: str,
    port: int,
    client_id: str,
    filters: Sequence[tuple[str, int]],
    session_expiry: int,
    timeout: float = 5.0,
) -> None:
    """Resume ``client_id``'s session and subscribe it to ``filters`` (filter, subscription
    identifier) at QoS 1, then leave it for ``session_expiry`` seconds; raises ProbeFailed.

    A connected client with that id is disconnected by the broker (session takeover).
    """
    await _exchange(host, port, client_id, timeout, session_expiry=session_expiry, filters=filters)


async def end_session(host: str, port: int, client_id: str, timeout: float = 5.0) -> None:
    """Drop ``client_id``'s session on the broker, with what is queued for it; raises ProbeFailed.

    A connected client with that id is disconnected by the broker (session takeover).
    """
    await _exchange(host, port, client_id, timeout)
