"""Where and how a client reaches an MQTT broker: its URL (``mqtt://`` or ``mqtts://`` for TLS),
and the broker's refusals as exceptions naming the broker, the user and the reason.

Never a password: these messages land in logs and on screens, so URLs carry no credentials either.
"""

from __future__ import annotations

from urllib.parse import urlsplit

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
_SCHEMES = {"mqtt": DEFAULT_PORT, "mqtts": DEFAULT_TLS_PORT}


def parse_broker_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` -> ``(host, port)``; the port defaults to 1883, or 8883 for ``mqtts://``.

    Credentials never go in the URL (it is logged and shown): pass them to the bus."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port that is not a number or out of range
        raise ValueError(f"bad broker URL {url!r}: {exc}") from exc
    if parts.username is not None or parts.password is not None:
        # Not the URL itself in the message: it holds a password.
        raise ValueError("bad broker URL: no user or password in it; give them to the bus instead")
    if parts.scheme not in _SCHEMES or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"bad broker URL {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    return parts.hostname, port if port is not None else _SCHEMES[parts.scheme]


def broker_tls(url: str) -> bool:
    """Whether the broker URL asks for TLS (``mqtts://``)."""
    parse_broker_url(url)
    return urlsplit(url).scheme == "mqtts"


# MQTT 5 reason codes of the refusals a client meets (CONNACK, SUBACK, PUBACK), named as in the spec.
REASONS = {
    0x80: "unspecified error", 0x83: "implementation specific error", 0x84: "unsupported protocol version",
    0x85: "client identifier not valid", 0x86: "bad user name or password", 0x87: "not authorized",
    0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned", 0x8C: "bad authentication method",
    0x8F: "topic filter invalid", 0x90: "topic name invalid", 0x97: "quota exceeded",
    0x9E: "shared subscriptions not supported", 0xA1: "subscription identifiers not supported",
}  # fmt: skip


def reason_name(code: int) -> str:
    """``0x87`` -> ``"not authorized (0x87)"``."""
    return f"{REASONS.get(code, 'reason')} (0x{code:02x})"


class BrokerRefused(ConnectionError):
    """The broker refused this client's CONNECT (a wrong login, an anonymous client...)."""

    def __init__(self, url: str, username: str | None, reason_code: int) -> None:
        who = f"the login of user {username!r}" if username else "an anonymous client (no username given)"
        super().__init__(f"MQTT broker {url} refused {who}: {reason_name(reason_code)}")
        self.url, self.username, self.reason_code = url, username, reason_code


class PublishRefused(Exception):
    """The broker refused a QoS 1 PUBLISH (PUBACK with a reason code of 0x80 or more)."""

    def __init__(self, url: str, username: str | None, topic: str, reason_code: int) -> None:
        who = f"user {username!r}" if username else "an anonymous client"
        super().__init__(
            f"MQTT broker {url} refused {who} a publish on {topic!r}: {reason_name(reason_code)}"
        )
        self.url, self.username, self.topic, self.reason_code = url, username, topic, reason_code
