"""MQTT-level checks and repairs of a broker, in a few raw MQTT 5 packets (one exchange each, no client).

A TCP accept proves little: the kernel accepts for a stopped (SIGSTOP) broker, and rumqttd keeps
accepting after its router thread died. :func:`probe` therefore does a whole round trip on a
private topic: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH to itself and receive it. The session is
clean with expiry 0, so the broker keeps nothing of it (nothing for Mosquitto to persist).

:func:`end_session` connects once under a client id with clean start, which makes the broker drop
that id's session and whatever is queued for it. :func:`restore_subscriptions` resumes a session
and subscribes it again, as its own client would.

Each takes an optional login (``username``, ``password``) and TLS context. On a broker with access
rules, log in as the user the rules are about: the supervisor's own login for :func:`probe` (its
topic is then ``archipel-probe/{username}/{client_id}``, which its rules allow), and the
consumer's login for :func:`restore_subscriptions` and :func:`end_session`: Mosquitto checks the
read rules of a session's messages against the user who last connected it, so a session
subscribed again by another user would silently drop its consumer's events while it is away.
A refusal raises :class:`ProbeFailed` naming the step and the reason, e.g. "not authorized (0x87)".
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._events.endpoint import reason_name
from .._mqtt import packets

PROBE_ROOT = "archipel-probe"  # outside every deployment's topic tree: observers never see probes

_CONNACK, _PUBLISH, _PUBACK, _SUBACK = 0x20, 0x30, 0x40, 0x90  # first bytes, flags included
_DISCONNECT = packets.DISCONNECT_PACKET
_PUBLISH_ID = 2  # the probe's QoS 1 publish; its SUBSCRIBE is packet 1


class ProbeFailed(Exception):
    """The broker did not complete an MQTT exchange; the message says which step and why."""


@dataclass(frozen=True)
class _Login:
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a message or a log


_ANONYMOUS = _Login()


def probe_topic(client_id: str, username: str | None = None) -> str:
    """The private topic of a probe: under the login's own branch when it has one, so access
    rules can give each supervisor its probes and nothing else."""
    return f"{PROBE_ROOT}/{username}/{client_id}" if username else f"{PROBE_ROOT}/{client_id}"


def _connect(client_id: str, session_expiry: int = 0, login: _Login = _ANONYMOUS) -> bytes:
    # Keep-alive 10 s. Expiry 0: clean start, nothing kept. Otherwise resume the session (clean
    # start off) and keep it that many seconds after we leave.
    return packets.connect(
        client_id,
        clean_start=not session_expiry,
        session_expiry=session_expiry,
        keep_alive=10,
        username=login.username,
        password=login.password,
    )


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
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    client_id: str,
    session_expiry: int = 0,
    login: _Login = _ANONYMOUS,
) -> None:
    writer.write(_connect(client_id, session_expiry, login))
    kind, body = await _read(reader)
    if kind != _CONNACK or len(body) < 2:
        raise ProbeFailed(f"expected CONNACK, got packet type {kind >> 4}")
    if body[1] != 0:
        who = f"user {login.username!r}" if login.username else "an anonymous client"
        raise ProbeFailed(f"CONNECT of {who} refused: {reason_name(body[1])}")


async def _subscribed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, packet: bytes, topic_filter: str
) -> None:
    writer.write(packet)
    # A resumed session may first get its queued messages: left unacknowledged, they stay queued
    # for the session's own client.
    while (reply := await _read(reader))[0] & 0xF0 == _PUBLISH:
        pass
    kind, body = reply
    if kind != _SUBACK or not body:
        raise ProbeFailed(f"SUBSCRIBE to {topic_filter}: expected SUBACK, got packet type {kind >> 4}")
    if body[-1] >= 0x80:
        raise ProbeFailed(f"SUBSCRIBE to {topic_filter} refused: {reason_name(body[-1])}")


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, topic: str) -> None:
    await _subscribed(reader, writer, packets.subscribe(1, topic, 0, None), topic)
    # QoS 1, so a broker that refuses the publish says so (PUBACK reason) instead of dropping it.
    # Our message coming back (at QoS 0, as subscribed) ends the probe without waiting for the
    # PUBACK, which a broker without TCP_NODELAY may hold back for a delayed ACK (40 ms).
    packet_id = _PUBLISH_ID.to_bytes(2, "big")
    writer.write(packets.packet(_PUBLISH | 0x02, packets.string(topic) + packet_id + b"\x00" + b"ping"))
    while (reply := await _read(reader))[0] & 0xF0 != _PUBLISH:
        kind, body = reply
        if kind == _PUBACK and body[:2] == packet_id and len(body) > 2 and body[2] >= 0x80:
            raise ProbeFailed(f"PUBLISH to {topic} refused: {reason_name(body[2])}")


async def _exchange(
    host: str,
    port: int,
    client_id: str,
    timeout: float,
    round_trip: bool = False,
    session_expiry: int = 0,
    filters: Sequence[tuple[str, int]] = (),
    login: _Login = _ANONYMOUS,
    tls: ssl.SSLContext | None = None,
) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer: asyncio.StreamWriter | None = None
    url = f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=tls)
            await _handshake(reader, writer, client_id, session_expiry, login)
            if round_trip:
                await _round_trip(reader, writer, probe_topic(client_id, login.username))
            for packet_id, (topic_filter, identifier) in enumerate(filters, start=1):
                # QoS 1, as the bus subscribes; one packet each: the identifier is per SUBSCRIBE.
                await _subscribed(
                    reader, writer, packets.subscribe(packet_id, topic_filter, 1, identifier), topic_filter
                )
            writer.write(_DISCONNECT)
            await writer.drain()
    except TimeoutError:
        raise ProbeFailed(f"no answer from {url} within {timeout:g}s") from None
    except ProbeFailed as exc:
        raise ProbeFailed(f"{url}: {exc}") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise ProbeFailed(f"{url}: {type(exc).__name__}: {exc}") from None
    finally:
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.close()  # not awaited: a stopped broker never completes the close
    return loop.time() - started


async def probe(
    host: str,
    port: int,
    client_id: str,
    timeout: float = 1.0,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> float:
    """Seconds one publish/subscribe round trip took; raises :class:`ProbeFailed`."""
    login = _Login(username, password)
    return await _exchange(host, port, client_id, timeout, round_trip=True, login=login, tls=tls)


async def restore_subscriptions(
    host: str,
    port: int,
    client_id: str,
    filters: Sequence[tuple[str, int]],
    session_expiry: int,
    timeout: float = 5.0,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Resume ``client_id``'s session and subscribe it to ``filters`` (filter, subscription
    identifier) at QoS 1, then leave it for ``session_expiry`` seconds; raises ProbeFailed.
    Log in as the session's own user (see the module doc).

    A connected client with that id is disconnected by the broker (session takeover).
    """
    await _exchange(
        host,
        port,
        client_id,
        timeout,
        session_expiry=session_expiry,
        filters=filters,
        login=_Login(username, password),
        tls=tls,
    )


async def end_session(
    host: str,
    port: int,
    client_id: str,
    timeout: float = 5.0,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Drop ``client_id``'s session on the broker, with what is queued for it; raises ProbeFailed.

    A connected client with that id is disconnected by the broker (session takeover).
    """
    await _exchange(host, port, client_id, timeout, login=_Login(username, password), tls=tls)
