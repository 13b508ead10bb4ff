"""Broker choices and URLs, and the pip-installable broker rumqttd (``broker = "rumqttd"``).

``archipel run`` runs one of (see :func:`broker_kind`):

- ``"embedded"`` (the default): a private Mosquitto with sessions on disk (``_deploy.mosquitto``),
  or rumqttd with a warning when the ``mosquitto`` binary is missing;
- ``"rumqttd"``: rumqttd from the ``iotcore`` wheel, nothing to install beyond pip;
- ``mqtt://host:port``: an external broker, started and watched by someone else.

:class:`RumqttdBroker` runs rumqttd (through ``iotcore``) in a child process, never inside a
service's process. ``iotcore``'s default listener speaks MQTT 3.1.1 only, so we hand rumqttd a
TOML config with a ``[v5.1]`` listener. The child exits when our end of its stdin pipe closes, so
a killed parent does not leave a broker behind.

What rumqttd 0.20 (iotcore 0.4.0) keeps, measured by ``tests/test_mqtt_bus.py`` and by hand:

- Everything lives in memory. Stopping or crashing the broker loses every session, subscription
  and queued message; clients reconnect to an empty broker and must subscribe again (``MqttBus``
  does: its client subscribes again whenever the broker kept no session).
- Persistent sessions (``clean_start=False`` plus a session expiry) survive a client disconnect:
  rumqttd keeps the session's subscriptions and its read position in the in-memory commit log,
  so events published while a durable consumer is down, shared subscriptions included, are
  delivered when it comes back. The backlog is bounded by ``max_segment_size * max_segment_count``
  of the router (about 1 GB here) rather than by a message count.
- Unacknowledged QoS 1 messages of a *plain* subscription are redelivered when a persistent
  session reconnects.
- Known bug: when a persistent session disconnects (cleanly or not) while it holds an
  unacknowledged message from a *shared* subscription (``$share/...``), rumqttd's router thread
  panics (``routing.rs:512 "group must exists"``) and the broker stops serving: it still accepts
  TCP connections but closes them. So on rumqttd ``archipel run`` uses clean sessions, and events
  published while a consumer is down are lost (docs/decisions/0003-embedded-broker.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
from types import TracebackType
from typing import Literal

import iotcore

from .._events.mqtt import DEFAULT_PORT, parse_broker_url
from .children import free_port

EMBEDDED = "embedded"
RUMQTTD = "rumqttd"
BrokerKind = Literal["embedded", "rumqttd", "url"]

_CONFIG = """\
id = 0

[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v5.1]
name = "v5-1"
listen = "{host}:{port}"
next_connection_delay_ms = 1

    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
"""


def broker_kind(option: str) -> BrokerKind:
    """What a ``broker`` setting names; raises ValueError for anything else."""
    if option in (EMBEDDED, RUMQTTD):
        return option  # type: ignore[return-value]
    if not option.startswith(("mqtt://", "mqtts://")):
        raise ValueError(
            f"broker must be {EMBEDDED!r}, {RUMQTTD!r}, mqtt://host:port or mqtts://host:port, "
            f"not {option.split('://')[0] + '://...' if '://' in option else repr(option)}"
        )
    parse_broker_url(option)
    return "url"


class RumqttdBroker:
    """rumqttd with an MQTT 5 listener, running in a child process::

    with RumqttdBroker() as broker:
        bus = MqttBus(broker.url, ...)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        # rumqttd would accept port 0 but never tells us which port it got, so pick one first.
        self.port = port or free_port(host)
        self._broker: iotcore.Broker | None = None
        self._config_path: str | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._broker is not None and bool(self._broker.is_running)

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker; return once it accepts connections (RuntimeError/OSError otherwise)."""
        if self.is_running:
            return
        fd, path = tempfile.mkstemp(prefix="archipel-rumqttd-", suffix=".toml")
        with os.fdopen(fd, "w") as config:
            config.write(_CONFIG.format(host=self.host, port=self.port))
        self._config_path = path
        broker = iotcore.Broker(config_path=path)
        try:
            broker.start(timeout=timeout)
        except BaseException:
            self._remove_config()
            raise
        self._broker = broker

    def stop(self) -> None:
        """Stop the broker and release its port. Safe to call twice."""
        broker, self._broker = self._broker, None
        if broker is not None:
            broker.stop()
        self._remove_config()

    def _remove_config(self) -> None:
        path, self._config_path = self._config_path, None
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def __enter__(self) -> RumqttdBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RumqttdBroker {self.url} {'running' if self.is_running else 'stopped'}>"


EmbeddedBroker = RumqttdBroker  # the name it had while rumqttd was the default broker


def main(argv: list[str] | None = None) -> None:
    """``python -m archipel._deploy.broker --host 127.0.0.1 --port 1883``: rumqttd until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m archipel._deploy.broker", description="Run rumqttd, an MQTT 5 broker."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    args = parser.parse_args(argv)

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    broker = RumqttdBroker(args.host, args.port)
    broker.start()
    try:
        print(f"ready {broker.url}", flush=True)
        # The broker child would outlive a SIGKILL of this process only until its stdin closes.
        while not stopping.wait(1.0):
            if not broker.is_running:
                print(f"broker {broker.url} exited", file=sys.stderr, flush=True)
                sys.exit(1)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
