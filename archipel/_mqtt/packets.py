"""MQTT 5 packets: the subset an event bus speaks, encoded and decoded (OASIS MQTT 5.0, section 3).

Encoded: CONNECT, PUBLISH, PUBACK, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT. Decoded: CONNACK,
PUBLISH, PUBACK, SUBACK, UNSUBACK, PINGRESP, DISCONNECT. Properties are decoded generically (every
property of the spec by its type), so a broker that adds one we do not use is not an error.
Malformed input raises :class:`MalformedPacket`; the connection that read it is then closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # normal disconnection: the session stays for its expiry interval
MAX_REMAINING_LENGTH = 268_435_455

# Property identifiers we write or read by name.
PAYLOAD_FORMAT, CONTENT_TYPE, SUBSCRIPTION_ID, SESSION_EXPIRY = 0x01, 0x03, 0x0B, 0x11
ASSIGNED_CLIENT_ID, SERVER_KEEP_ALIVE, REASON_STRING = 0x12, 0x13, 0x1F
RECEIVE_MAXIMUM, USER_PROPERTY = 0x21, 0x26

_BYTE, _INT2, _INT4, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES = {
    0x01: _BYTE, 0x02: _INT4, 0x03: _STRING, 0x08: _STRING, 0x09: _BINARY, 0x0B: _VARINT,
    0x11: _INT4, 0x12: _STRING, 0x13: _INT2, 0x15: _STRING, 0x16: _BINARY, 0x17: _BYTE,
    0x18: _INT4, 0x19: _BYTE, 0x1A: _STRING, 0x1C: _STRING, 0x1F: _STRING, 0x21: _INT2,
    0x22: _INT2, 0x23: _INT2, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _INT4, 0x28: _BYTE,
    0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip


class MalformedPacket(ValueError):
    """The peer sent bytes that are not a valid MQTT 5 packet."""


# -- encoding ---------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"{value} does not fit an MQTT variable byte integer")
    if value < 128:
        return bytes((value,))
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def string(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 0xFFFF:
        raise ValueError(f"an MQTT string holds at most 65535 bytes, not {len(raw)}")
    return len(raw).to_bytes(2, "big") + raw


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + varint(len(body)) + body


def publish_properties(content_type: str, user_properties: tuple[tuple[str, str], ...]) -> bytes:
    """The properties block (length included) of a UTF-8 payload with a content type."""
    return PropertiesEncoder(content_type, ())(user_properties)


class PropertiesEncoder:
    """Encodes the properties block of many PUBLISHes that share a content type, fixed user
    properties and user property names: what does not change is encoded once."""

    def __init__(self, content_type: str, fixed: tuple[tuple[str, str], ...]) -> None:
        self._prefix = b"\x01\x01\x03" + string(content_type)
        self._prefix += b"".join(b"\x26" + string(name) + string(value) for name, value in fixed)
        self._names: dict[str, bytes] = {}

    def __call__(self, user_properties: tuple[tuple[str, str], ...]) -> bytes:
        out = [self._prefix]
        names = self._names
        for name, value in user_properties:
            head = names.get(name)
            if head is None:
                head = names[name] = b"\x26" + string(name)
            raw = value.encode()
            if len(raw) > 0xFFFF:
                raise ValueError(f"user property {name!r}: at most 65535 bytes, not {len(raw)}")
            out += (head, len(raw).to_bytes(2, "big"), raw)
        body = b"".join(out)
        return varint(len(body)) + body


def connect(
    client_id: str,
    *,
    clean_start: bool,
    session_expiry: int,
    keep_alive: int,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    flags = 0x02 if clean_start else 0x00
    properties = b"\x11" + session_expiry.to_bytes(4, "big") if session_expiry else b""
    payload = string(client_id)
    if username is not None:
        flags |= 0x80
        payload += string(username)
    if password is not None:
        flags |= 0x40
        payload += string(password)  # binary data: the same 2-byte length prefix
    header = string("MQTT") + bytes((5, flags)) + keep_alive.to_bytes(2, "big")
    return packet(CONNECT << 4, header + varint(len(properties)) + properties + payload)


def publish(topic: str, payload: bytes, packet_id: int, properties: bytes, *, dup: bool = False) -> bytes:
    """A QoS 1 PUBLISH; ``properties`` is a block from :func:`publish_properties`."""
    body = string(topic) + packet_id.to_bytes(2, "big") + properties + payload
    return packet((PUBLISH << 4) | 0x02 | (0x08 if dup else 0), body)


def puback(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")  # reason 0 and no properties: omitted


def subscribe(packet_id: int, topic_filter: str, qos: int, identifier: int | None) -> bytes:
    properties = b"" if identifier is None else b"\x0b" + varint(identifier)
    body = packet_id.to_bytes(2, "big") + varint(len(properties)) + properties
    return packet((SUBSCRIBE << 4) | 0x02, body + string(topic_filter) + bytes((qos,)))


def unsubscribe(packet_id: int, filters: list[str]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"\x00" + b"".join(string(f) for f in filters)
    return packet((UNSUBSCRIBE << 4) | 0x02, body)


# -- decoding ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    """An incoming PUBLISH. ``generation`` is the connection it came on: an acknowledgement is only
    sent on that connection (after a reconnect the broker delivers it again)."""

    topic: str
    payload: bytes
    qos: int
    packet_id: int
    dup: bool
    retain: bool
    user_properties: list[tuple[str, str]]
    content_type: str | None
    subscription_ids: list[int]
    generation: int = 0


@dataclass(slots=True)
class Ack:
    """CONNACK, PUBACK, SUBACK or UNSUBACK: the packet id (0 for CONNACK), the reason codes
    (one per filter for SUBACK/UNSUBACK), and the properties."""

    kind: int
    packet_id: int
    reasons: list[int]
    properties: dict[int, Any] = field(default_factory=dict)
    session_present: bool = False


def split(buffer: bytes) -> tuple[list[tuple[int, memoryview]], int]:
    """The complete packets at the start of ``buffer`` (first byte, body) and how many bytes they
    take; an incomplete last packet is left for the next read."""
    packets: list[tuple[int, memoryview]] = []
    view = memoryview(buffer)
    size, at = len(buffer), 0
    while at + 2 <= size:
        length, shift, cursor = 0, 0, at + 1
        while True:
            if cursor >= size:
                return packets, at
            digit = buffer[cursor]
            cursor += 1
            length |= (digit & 0x7F) << shift
            if not digit & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MalformedPacket("remaining length longer than 4 bytes")
        if cursor + length > size:
            break
        packets.append((buffer[at], view[cursor : cursor + length]))
        at = cursor + length
    return packets, at


def _string_at(body: bytes, at: int) -> tuple[str, int]:
    end = at + 2 + ((body[at] << 8) | body[at + 1]) if at + 2 <= len(body) else -1
    if not 0 < end <= len(body):
        raise MalformedPacket("string runs past the end of the packet")
    try:
        return body[at + 2 : end].decode(), end
    except UnicodeDecodeError:
        raise MalformedPacket("string is not valid UTF-8") from None


def _varint_at(body: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(body) or shift > 21:
            raise MalformedPacket("bad variable byte integer")
        digit = body[at]
        at += 1
        value |= (digit & 0x7F) << shift
        if not digit & 0x80:
            return value, at
        shift += 7


def properties_at(body: bytes, at: int) -> tuple[dict[int, Any], list[tuple[str, str]], list[int], int]:
    """The properties block at ``at``: (single-valued properties, user properties, subscription
    identifiers, the offset after the block)."""
    length, at = _varint_at(body, at)
    end = at + length
    if end > len(body):
        raise MalformedPacket("properties run past the end of the packet")
    found: dict[int, Any] = {}
    users: list[tuple[str, str]] = []
    ids: list[int] = []
    try:
        while at < end:
            identifier = body[at]
            at += 1
            if identifier == USER_PROPERTY:  # most of a CloudEvent's properties: first
                name, at = _string_at(body, at)
                text, at = _string_at(body, at)
                users.append((name, text))
                continue
            kind = _PROPERTY_TYPES.get(identifier)
            value: Any
            if kind == _STRING:
                value, at = _string_at(body, at)
            elif kind == _VARINT:
                value, at = _varint_at(body, at)
                if identifier == SUBSCRIPTION_ID:
                    ids.append(value)
                    continue
            elif kind == _BYTE:
                value, at = body[at], at + 1
            elif kind == _INT2:
                value, at = (body[at] << 8) | body[at + 1], at + 2
            elif kind == _INT4:
                value, at = int.from_bytes(body[at : at + 4], "big"), at + 4
            elif kind == _BINARY:
                size = (body[at] << 8) | body[at + 1]
                value, at = body[at + 2 : at + 2 + size], at + 2 + size
            else:
                raise MalformedPacket(f"unknown property 0x{identifier:02x}")
            found[identifier] = value
    except IndexError:
        raise MalformedPacket("a property runs past the end of the packet") from None
    if at != end:
        raise MalformedPacket("a property runs past the end of its block")
    return found, users, ids, end


def decode_publish(first_byte: int, view: memoryview) -> Message:
    qos = (first_byte >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    body = bytes(view)
    topic, at = _string_at(body, 0)
    packet_id = 0
    if qos:
        if at + 2 > len(body):
            raise MalformedPacket("PUBLISH without its packet identifier")
        packet_id = (body[at] << 8) | body[at + 1]
        at += 2
    found, users, ids, at = properties_at(body, at)
    content_type = found.get(CONTENT_TYPE)
    return Message(
        topic, body[at:], qos, packet_id, bool(first_byte & 0x08), bool(first_byte & 0x01),
        users, content_type, ids,
    )  # fmt: skip


def decode_ack(kind: int, view: memoryview) -> Ack:
    """CONNACK, PUBACK, SUBACK or UNSUBACK."""
    body = bytes(view)
    try:
        if kind == CONNACK:
            found, _, _, _ = properties_at(body, 2) if len(body) > 2 else ({}, [], [], 2)
            return Ack(kind, 0, [body[1]], found, session_present=bool(body[0] & 0x01))
        packet_id = (body[0] << 8) | body[1]
        if kind == PUBACK:
            reason = body[2] if len(body) > 2 else 0
            found = properties_at(body, 3)[0] if len(body) > 3 else {}
            return Ack(kind, packet_id, [reason], found)
        found, _, _, at = properties_at(body, 2)
        return Ack(kind, packet_id, list(body[at:]), found)
    except IndexError:
        raise MalformedPacket(f"packet type {kind} too short") from None


def decode_disconnect(view: memoryview) -> tuple[int, str | None]:
    """A broker's DISCONNECT: (reason code, reason string)."""
    body = bytes(view)
    if not body:
        return 0, None
    reason = body[0]
    found = properties_at(body, 1)[0] if len(body) > 1 else {}
    text = found.get(REASON_STRING)
    return reason, text if isinstance(text, str) else None
