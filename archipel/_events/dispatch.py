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

What comes off the wire is checked before anything else, and whatever is wrong with it is
dead-lettered with a reason naming what, never handed to the handler, never raised (a bus that
sees a dispatch raise leaves the message unacknowledged, and the broker would deliver the same
poison again and again):

- the CloudEvents attributes: ``id`` must be a non-empty string, and ``id``, ``source``, ``type``
  and ``time`` at most ``MAX_ATTRIBUTE`` characters without control characters; a ``type`` must
  name the handler's event type (``OrderPlaced``, or a dotted name ending in ``.OrderPlaced``); a
  ``time`` must be an RFC 3339 timestamp. A *missing* ``source``, ``type`` or ``time`` is accepted
  (a plain client may leave them out; the topic says what the event is), unless sources are checked;
- the source, when the dispatcher is given ``allowed_sources`` (by topic, the services that declare
  they emit its event: ``App.emitters()``): ``/{app}/{service}`` with ``service`` among them;
- the payload: at most ``max_payload`` bytes, then valid JSON of the handler's event type;
- ``traceparent`` is advisory: a malformed one is ignored (the handling starts a new trace, as W3C
  Trace Context asks), and is neither passed on nor kept.

A dead letter carries at most ``MAX_DEAD_PAYLOAD`` bytes of the payload (``truncated`` says when it
was cut), and attributes that cannot travel as MQTT user properties or be stored are replaced in
the consumer's record of it (``on_dead``) by a cleaned copy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
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
MAX_PAYLOAD = 1 << 20  # bytes of an event's JSON; the same bound as an RPC body's by default
MAX_ATTRIBUTE = 256  # characters of a CloudEvents attribute (id, source, type, time)
MAX_DEAD_PAYLOAD = 64 << 10  # bytes of the payload a dead letter carries
_ACCEPTED_CACHE = 1024  # (topic, source) pairs remembered as allowed

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SOURCE = re.compile(r"/([A-Za-z0-9._-]+)/([A-Za-z0-9._-]+)")  # fullmatch: /{app}/{service}
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")  # fullmatch; W3C, version 00


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
    truncated: bool = False  # ``payload`` is the first MAX_DEAD_PAYLOAD bytes of a longer one


def is_permanent(exc: BaseException) -> bool:
    """A failure that trying again cannot fix: the event (not the world) is wrong."""
    return isinstance(exc, ArchipelError) and 400 <= exc.status < 500 and exc.status not in (408, 429)


Publish = Callable[[Envelope], Awaitable[None]]
DeadLetterHook = Callable[[Envelope, DeadLetter], Awaitable[None]]


class Dispatcher:
    """Builds the per-handler dispatch function the runtime subscribes to the bus.

    ``allowed_sources``: by topic, the names of the services whose events are accepted (what
    ``App.emitters()`` gives); an event from any other source, or on a topic absent from it, is
    dead-lettered. None (the default) accepts any source. ``max_payload``: the largest payload, in
    bytes, that is decoded; a larger one is dead-lettered unread.
    """

    def __init__(
        self,
        publish: Publish,
        interceptors: list[Interceptor],
        *,
        redelivery_window: float = REDELIVERY_WINDOW,
        first_backoff: float = FIRST_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        on_dead: DeadLetterHook | None = None,
        allowed_sources: Mapping[str, Collection[str]] | None = None,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        if redelivery_window < 0 or first_backoff <= 0 or max_backoff <= 0:
            raise ValueError("redelivery_window must be >= 0 and back-offs > 0")
        if max_payload < 1:
            raise ValueError(f"max_payload must be at least 1 byte, got {max_payload}")
        self._publish = publish
        self._interceptors = interceptors
        self.redelivery_window = redelivery_window
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._on_dead = on_dead
        self._allowed = (
            None
            if allowed_sources is None
            else {topic: frozenset(services) for topic, services in allowed_sources.items()}
        )
        self.max_payload = max_payload
        self._accepted: set[tuple[str, str]] = set()  # (topic, source) pairs already checked

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
            envelope = _without_bad_traceparent(envelope)
            _context.set_traceparent(envelope.traceparent)
            refusal = self._refusal(envelope, spec)
            event: Any = envelope.event
            if refusal is None and event is None:
                try:
                    event = decoder.decode(envelope.payload or b"")
                except Exception as exc:  # DecodeError, and whatever else a hostile input may raise
                    refusal = f"invalid payload: {_clip(str(exc), 1000)}"
            if refusal is not None:
                log.warning(
                    "%s: refused %s event %s: %s", where, envelope.topic, _clip(envelope.id, 80), refusal
                )
                dead.inc()
                await self._dead_letter(envelope, where, refusal, 0)
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

    def _refusal(self, envelope: Envelope, spec: HandlerSpec) -> str | None:
        """Why the event must not reach the handler of ``spec``, or None."""
        if not envelope.id:
            return "the event has no id"
        attributes = (envelope.id, envelope.source, envelope.type, envelope.time)
        # One scan of the four in the common case (all strings, short, clean); names the culprit otherwise.
        if not _plain(attributes):
            for name, value in zip(("id", "source", "type", "time"), attributes, strict=True):
                problem = _attribute_problem(value)
                if problem is not None:
                    return f"attribute {name}: {problem}"
        if envelope.type:
            expected = spec.event_type.__name__
            if envelope.type != expected and not envelope.type.endswith("." + expected):
                return f"type {envelope.type!r} is not {expected}, the event of topic {envelope.topic!r}"
        if envelope.time and not _rfc3339(envelope.time):
            return f"attribute time: {envelope.time!r} is not an RFC 3339 timestamp"
        if self._allowed is not None and (envelope.topic, envelope.source) not in self._accepted:
            allowed = self._allowed.get(envelope.topic, frozenset())
            match = _SOURCE.fullmatch(envelope.source)
            if match is None or match.group(2) not in allowed:
                emitters = ", ".join(sorted(allowed)) or "no service"
                return (
                    f"source {envelope.source!r} may not publish on topic {envelope.topic!r} "
                    f"(its events come from {emitters})"
                )
            if len(self._accepted) < _ACCEPTED_CACHE:  # a few (topic, source) pairs in practice
                self._accepted.add((envelope.topic, envelope.source))
        size = len(envelope.payload) if envelope.event is None and envelope.payload is not None else 0
        if size > self.max_payload:
            return f"payload of {size} bytes exceeds the limit of {self.max_payload}"
        return None

    def _backoff(self, attempt: int, give_up_at: float) -> float:
        delay = backoff_delay(attempt, self._first_backoff, self._max_backoff)
        return max(0.0, min(delay, give_up_at - time.monotonic()))

    async def _dead_letter(self, envelope: Envelope, handler: str, reason: str, attempts: int) -> None:
        original = envelope.body()
        truncated = len(original) > MAX_DEAD_PAYLOAD
        kept = original[:MAX_DEAD_PAYLOAD] if truncated else original
        letter = DeadLetter(
            reason=reason,
            topic=envelope.topic,
            handler=handler,
            event_id=_clip(envelope.id, 4 * MAX_ATTRIBUTE),
            payload=kept.decode("utf-8", "replace"),
            attempts=attempts,
            event_type=_clip(envelope.type, 4 * MAX_ATTRIBUTE),
            source=_clip(envelope.source, 4 * MAX_ATTRIBUTE),
            time=_clip(envelope.time, 4 * MAX_ATTRIBUTE),
            truncated=truncated,
        )
        app = _SOURCE.fullmatch(envelope.source)
        dead = Envelope(
            topic=DEAD_PREFIX + envelope.topic,
            type="DeadLetter",
            source=f"{'/' + app.group(1) if app else ''}/{handler.split('.')[0]}",
            traceparent=envelope.traceparent,
            payload=msgspec.json.encode(letter),
        )
        if self._on_dead is not None:
            # What the consumer keeps: attributes it can store, at most MAX_DEAD_PAYLOAD of a payload
            # that was refused for its size.
            await self._on_dead(_cleaned(envelope, original if not truncated else kept), letter)
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


def _plain(values: tuple[object, ...]) -> bool:
    """All strings of at most MAX_ATTRIBUTE characters, without control characters."""
    if not all(type(value) is str and len(value) <= MAX_ATTRIBUTE for value in values):
        return False
    return _CONTROL.search("".join(values)) is None  # type: ignore[arg-type]


def _attribute_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if len(value) > MAX_ATTRIBUTE:
        return f"{len(value)} characters, more than {MAX_ATTRIBUTE}"
    if _CONTROL.search(value):
        return f"{_clip(value, 80)!r} holds control characters"
    return None


def _rfc3339(value: str) -> bool:
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return False
    return parsed.tzinfo is not None  # a date and a time with an offset (RFC 3339 requires one)


def _without_bad_traceparent(envelope: Envelope) -> Envelope:
    """``envelope`` without its traceparent when that is not a valid W3C one (ignored, not kept)."""
    value = envelope.traceparent
    if value is None or (isinstance(value, str) and _TRACEPARENT.fullmatch(value)):
        return envelope
    return dataclasses.replace(envelope, traceparent=None)


def _cleaned(envelope: Envelope, payload: bytes) -> Envelope:
    """A copy whose attributes any store and any MQTT client take: control characters replaced,
    at most MAX_ATTRIBUTE characters."""

    def clean(value: str) -> str:
        return _CONTROL.sub("\ufffd", value)[:MAX_ATTRIBUTE] if isinstance(value, str) else ""

    return dataclasses.replace(
        envelope,
        id=clean(envelope.id) or "-",
        type=clean(envelope.type),
        source=clean(envelope.source),
        time=clean(envelope.time),
        payload=payload,
    )


def _clip(value: object, limit: int) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _terminal(method: Callable[[Any], Awaitable[None]]) -> Next:
    async def call(invocation: Invocation) -> None:
        await method(invocation.arguments["event"])

    return call
