"""Event dispatch: one envelope to one handler, the same on every bus.

- A payload that does not decode or validate, or a handler that raises a *permanent* error (a
  declared ``ArchipelError`` with a 4xx status: the event itself is wrong), goes to
  ``{root}/$dead/{topic}`` at once, with the reason.
- Any other failure is *transient* (a dependency unavailable or restarting, a deadline, a lost
  connection, a bug fixed by the next deploy): the handler is tried again with jittered
  exponential back-off for ``redelivery_window`` seconds, long enough to cover a supervisor's
  restart of the dependency, while the message stays unacknowledged. Only then is it
  dead-lettered.
- A dead letter is published until the bus accepts it. ``dispatch`` returns only when the event
  may be acknowledged; if it is cancelled (the process stops) the bus must not acknowledge, and
  the broker delivers the event again after the restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from .. import _context
from .._backoff import backoff_delay
from .._chain import Interceptor, Invocation, Next, Site, compose
from .._errors import ArchipelError
from .._model import HandlerSpec, Service
from .._telemetry.metrics import EVENTS_HANDLED
from .bus import DEAD_PREFIX, Envelope

log = logging.getLogger("archipel.events")

REDELIVERY_WINDOW = 60.0
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0


class DeadLetter(msgspec.Struct, kw_only=True):
    """Payload published on ``{root}/$dead/{topic}`` for an event no handler could take."""

    reason: str
    topic: str
    handler: str
    event_id: str
    payload: str
    attempts: int = 1
    event_type: str = ""
    source: str = ""
    time: str = ""


def is_permanent(exc: BaseException) -> bool:
    """A failure that trying again cannot fix: the event (not the world) is wrong."""
    return isinstance(exc, ArchipelError) and 400 <= exc.status < 500 and exc.status not in (408, 429)


Publish = Callable[[Envelope], Awaitable[None]]
DeadLetterHook = Callable[[Envelope, DeadLetter], Awaitable[None]]


class Dispatcher:
    """Builds the per-handler dispatch function the runtime subscribes to the bus."""

    def __init__(
        self,
        publish: Publish,
        interceptors: list[Interceptor],
        *,
        redelivery_window: float = REDELIVERY_WINDOW,
        first_backoff: float = FIRST_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        on_dead: DeadLetterHook | None = None,
    ) -> None:
        if redelivery_window < 0 or first_backoff <= 0 or max_backoff <= 0:
            raise ValueError("redelivery_window must be >= 0 and back-offs > 0")
        self._publish = publish
        self._interceptors = interceptors
        self.redelivery_window = redelivery_window
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._on_dead = on_dead

    def handler(self, instance: Service, spec: HandlerSpec) -> Callable[[Envelope], Awaitable[None]]:
        method = getattr(instance, spec.name)
        decoder = msgspec.json.Decoder(spec.event_type)
        where = f"{spec.service}.{spec.name}"
        site = Site("event", spec.service, spec.name, topic=spec.topic)
        chain = compose(site, self._interceptors, _terminal(method))
        handled = EVENTS_HANDLED.labels(spec.service, spec.name, "ok")
        retried = EVENTS_HANDLED.labels(spec.service, spec.name, "retried")
        dead = EVENTS_HANDLED.labels(spec.service, spec.name, "dead")

        async def dispatch(envelope: Envelope) -> None:
            _context.set_traceparent(envelope.traceparent)
            try:
                event = (
                    envelope.event if envelope.event is not None else decoder.decode(envelope.payload or b"")
                )
            except msgspec.DecodeError as exc:
                log.warning("%s: invalid %s event %s: %s", where, envelope.topic, envelope.id, exc)
                dead.inc()
                await self._dead_letter(envelope, where, f"invalid payload: {exc}", 0)
                return
            give_up_at = time.monotonic() + self.redelivery_window
            attempt = 0
            while True:
                attempt += 1
                try:
                    await chain(Invocation(site, {"event": event}, envelope=envelope))
                    handled.inc()
                    return
                except Exception as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    if is_permanent(exc):
                        log.warning("%s refused event %s: %s", where, envelope.id, reason)
                    elif time.monotonic() < give_up_at:
                        delay = self._backoff(attempt, give_up_at)
                        log.warning(
                            "%s failed on event %s (attempt %d, again in %.2fs): %s",
                            where,
                            envelope.id,
                            attempt,
                            delay,
                            reason,
                        )
                        retried.inc()
                        await asyncio.sleep(delay)
                        continue
                    else:
                        log.error(
                            "%s gave up on event %s after %d attempts: %s",
                            where,
                            envelope.id,
                            attempt,
                            reason,
                        )
                        reason = f"gave up after {attempt} attempts in {self.redelivery_window:g}s: {reason}"
                    dead.inc()
                    await self._dead_letter(envelope, where, reason, attempt)
                    return

        return dispatch

    def _backoff(self, attempt: int, give_up_at: float) -> float:
        delay = backoff_delay(attempt, self._first_backoff, self._max_backoff)
        return max(0.0, min(delay, give_up_at - time.monotonic()))

    async def _dead_letter(self, envelope: Envelope, handler: str, reason: str, attempts: int) -> None:
        original = envelope.payload if envelope.payload is not None else msgspec.json.encode(envelope.event)
        letter = DeadLetter(
            reason=reason,
            topic=envelope.topic,
            handler=handler,
            event_id=envelope.id,
            payload=original.decode("utf-8", "replace"),
            attempts=attempts,
            event_type=envelope.type,
            source=envelope.source,
            time=envelope.time,
        )
        dead = Envelope(
            topic=DEAD_PREFIX + envelope.topic,
            type="DeadLetter",
            source=f"{envelope.source.rsplit('/', 1)[0]}/{handler.split('.')[0]}",
            traceparent=envelope.traceparent,
            payload=msgspec.json.encode(letter),
        )
        if self._on_dead is not None:
            await self._on_dead(envelope, letter)
        attempt = 0
        while True:  # not acknowledged until the dead letter is out; a stop cancels this wait
            attempt += 1
            try:
                await self._publish(dead)
                return
            except Exception as exc:
                delay = backoff_delay(attempt, self._first_backoff, self._max_backoff)
                log.error("dead letter for %s not published (%s); again in %.1fs", envelope.id, exc, delay)
                await asyncio.sleep(delay)


def _terminal(method: Callable[[Any], Awaitable[None]]) -> Next:
    async def call(invocation: Invocation) -> None:
        await method(invocation.arguments["event"])

    return call
