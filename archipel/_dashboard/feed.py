"""The live stream of events: an observer login (read-only, ``_deploy.acl``) sees every event of
the deployment, dead letters included; the last :data:`KEEP` stay in memory for the page."""

from __future__ import annotations

import collections
import itertools
import logging
import os
from typing import TYPE_CHECKING, Any

import msgspec

from .._events.bus import DEAD_PREFIX, Envelope
from .._events.dispatch import DeadLetter
from .._events.mqtt import MqttBus

if TYPE_CHECKING:
    from .._deploy.supervisor import Supervisor

log = logging.getLogger("archipel.dashboard")
KEEP = 200


class EventFeed:
    def __init__(self, supervisor: Supervisor) -> None:
        self.items: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEEP)
        self.dead_letters = 0
        self._sequence = itertools.count(1)
        self._bus: MqttBus | None = None
        self.note = ""
        if supervisor.broker_url is None:
            self.note = "a monolith's events stay in its process: there is no broker to watch"
            return
        self._bus = MqttBus(
            supervisor.broker_url,
            supervisor.deployment,
            client_id=f"{supervisor.deployment}-dashboard-{os.getpid()}",
            durable=False,
            connect_timeout=5.0,
            **supervisor.logins.observer(),
        )
        self._bus.observe(self._record)

    async def start(self) -> None:
        if self._bus is None:
            return
        try:
            await self._bus.start()
        except Exception as exc:  # the dashboard lives on without its feed, and says why
            log.warning("dashboard: cannot watch the events: %s", exc)
            self.note = f"cannot watch the events: {exc}"
            self._bus = None

    async def stop(self) -> None:
        if self._bus is not None:
            await self._bus.stop()

    async def _record(self, envelope: Envelope) -> None:
        body = envelope.body()
        item: dict[str, Any] = {
            "seq": next(self._sequence),
            "topic": envelope.topic,
            "type": envelope.type,
            "id": envelope.id,
            "source": envelope.source,
            "size": len(body),
            "time": envelope.time,
            "traceparent": envelope.traceparent,
            "dead": envelope.topic.startswith(DEAD_PREFIX),
        }
        if item["dead"]:
            self.dead_letters += 1
            try:
                letter = msgspec.json.decode(body, type=DeadLetter)
            except msgspec.DecodeError:
                item["reason"] = "(not a dead letter: its payload does not decode)"
            else:
                item.update(reason=letter.reason, handler=letter.handler, attempts=letter.attempts)
                item.update(event_id=letter.event_id, dead_topic=letter.topic)
        self.items.append(item)

    def since(self, seq: int) -> list[dict[str, Any]]:
        return [item for item in self.items if item["seq"] > seq]
