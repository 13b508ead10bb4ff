"""Hostile events: whatever arrives on a handler's topic is handled or dead-lettered, never both,
never raised, and the consumer takes the next good event.

Two levels:

- the dispatcher alone, under Hypothesis (``ARCHIPEL_FUZZ_EVENTS`` examples per property,
  default 300, derandomized): payloads that are not JSON, JSON of the wrong shape, payloads over
  the limit; CloudEvents attributes missing, empty, too long, with control characters, of another
  type, a time that is not RFC 3339, a source that may not publish the topic; traceparents of any
  kind. An independent model of the rules (``verdict``) says which events the handler may see;
  every other one must be dead-lettered with a reason, and a good event dispatched after each
  example must reach the handler.
- a running consumer process on a real Mosquitto: raw messages from a plain MQTT client, bad in
  each of those ways the broker lets through, each dead-lettered; then a good event is handled.

What is *accepted* on purpose: a missing ``source`` (unless sources are checked), ``type`` or
``time`` (a plain client may leave them out; the topic says what the event is), and a malformed
``traceparent``, which is ignored: the handling starts a new trace (W3C Trace Context).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from archipel import Event, Service, on
from archipel._chain import Invocation, Next, Site
from archipel._context import current_traceparent
from archipel._events.bus import DEAD_PREFIX, Envelope
from archipel._events.dispatch import MAX_ATTRIBUTE, MAX_DEAD_PAYLOAD, MAX_PAYLOAD, DeadLetter, Dispatcher
from archipel._model import describe
from archipel.testing import Topology, run_app
from tests.apps.shop import Ledger, Money, OrderPlaced, app
from tests.conftest import eventually

EXAMPLES = int(os.environ.get("ARCHIPEL_FUZZ_EVENTS", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIMIT = 2048  # max_payload of the fuzzed dispatcher: "huge" stays cheap to draw
TOPIC = "orders/placed"
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


class Placed(Event, topic=TOPIC):
    order_id: str
    quantity: int


class Sink(Service):
    def __init__(self) -> None:
        self.seen: list[Placed] = []
        self.traces: list[str | None] = []

    @on(Placed)
    async def take(self, event: Placed) -> None:
        self.seen.append(event)
        self.traces.append(current_traceparent())


class Witness:
    """An interceptor that keeps the envelope of each event that reached the handler's chain."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    def wants(self, site: Site) -> bool:
        return site.kind == "event"

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        assert invocation.envelope is not None
        self.envelopes.append(invocation.envelope)
        return await call_next(invocation)


@dataclass
class Rig:
    sink: Sink
    witness: Witness
    dispatch: Callable[[Envelope], Awaitable[None]]
    published: list[Envelope]
    recorded: list[tuple[Envelope, DeadLetter]]


def rig(allowed_sources: Mapping[str, Collection[str]] | None = None, max_payload: int = LIMIT) -> Rig:
    published: list[Envelope] = []
    recorded: list[tuple[Envelope, DeadLetter]] = []

    async def publish(envelope: Envelope) -> None:
        published.append(envelope)

    async def on_dead(envelope: Envelope, letter: DeadLetter) -> None:
        recorded.append((envelope, letter))

    sink, witness = Sink(), Witness()
    dispatcher = Dispatcher(
        publish,
        [witness],
        redelivery_window=0,
        on_dead=on_dead,
        allowed_sources=allowed_sources,
        max_payload=max_payload,
    )
    return Rig(sink, witness, dispatcher.handler(sink, describe(Sink).handlers[0]), published, recorded)


def good(number: int = 0, **attributes: Any) -> Envelope:
    fields: dict[str, Any] = {
        "topic": TOPIC,
        "type": "Placed",
        "source": "/shop/checkout",
        "id": uuid.uuid4().hex,
        "payload": msgspec.json.encode(Placed(f"good-{number}", number)),
        **attributes,
    }
    return Envelope(**fields)


# --- the model: which events the handler may see ---------------------------------------------


def _clean(value: object, required: bool = False) -> bool:
    return (
        isinstance(value, str)
        and (bool(value) or not required)
        and len(value) <= MAX_ATTRIBUTE
        and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)
    )


def verdict(envelope: Envelope, allowed: Mapping[str, Collection[str]] | None, limit: int) -> bool:
    """Whether ``envelope`` may reach the handler, by the rules of the module's doc."""
    if not all(
        _clean(value, required=name == "id")
        for name, value in [
            ("id", envelope.id),
            ("source", envelope.source),
            ("type", envelope.type),
            ("time", envelope.time),
        ]
    ):
        return False
    if envelope.type and envelope.type != "Placed" and not envelope.type.endswith(".Placed"):
        return False
    if envelope.time:
        try:
            if datetime.datetime.fromisoformat(envelope.time).tzinfo is None:
                return False
        except ValueError:
            return False
    if allowed is not None:
        parts = envelope.source.split("/")
        if not (
            len(parts) == 3
            and parts[0] == ""
            and all(re.fullmatch(r"[A-Za-z0-9._-]+", p) for p in parts[1:])
            and parts[2] in allowed.get(envelope.topic, ())
        ):
            return False
    payload = envelope.payload or b""
    if len(payload) > limit:
        return False
    try:
        msgspec.json.decode(payload, type=Placed)
    except msgspec.DecodeError:
        return False
    return True


# --- strategies -------------------------------------------------------------------------------

HOSTILE_TEXT = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.characters(max_codepoint=0x9F), max_size=12),  # control characters
    st.builds(lambda n: "x" * n, st.integers(MAX_ATTRIBUTE - 2, MAX_ATTRIBUTE + 2)),
    st.just(""),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
PLACED = st.builds(
    lambda order_id, quantity: {"order_id": order_id, "quantity": quantity},
    st.text(max_size=20),
    st.integers(-(2**70), 2**70),
)
PAYLOADS = st.one_of(
    PLACED.map(msgspec.json.encode),  # valid
    PLACED.map(lambda p: msgspec.json.encode(p)[:-1]),  # truncated JSON
    st.binary(max_size=64),  # not JSON, perhaps not UTF-8
    JSON.map(lambda v: json.dumps(v).encode()),  # JSON of another shape
    st.dictionaries(st.sampled_from(["order_id", "quantity", "extra"]), JSON, max_size=3).map(
        lambda v: json.dumps(v).encode()
    ),  # the right keys, any values
    st.builds(
        lambda n: msgspec.json.encode({"order_id": "x" * n, "quantity": 1}),
        st.integers(LIMIT - 40, LIMIT + 40),
    ),  # around the limit
    st.integers(1, 60).map(lambda depth: b"[" * depth * 100 + b"]" * depth * 100),  # deep nesting
    st.none(),
)
TIMES = st.one_of(
    st.just(""),
    st.datetimes(timezones=st.just(datetime.UTC)).map(lambda t: t.isoformat()),
    st.datetimes().map(lambda t: t.isoformat()),  # no offset
    st.just("2026-01-31T12:00:00Z"),
    HOSTILE_TEXT,
)
TYPES = st.one_of(st.sampled_from(["", "Placed", "shop.Placed", "OrderShipped", "Placed "]), HOSTILE_TEXT)
SOURCES = st.one_of(
    st.sampled_from(["", "/shop/checkout", "/shop/email", "checkout", "/shop/checkout/x", "/shop/"]),
    HOSTILE_TEXT,
)
TRACEPARENTS = st.one_of(
    st.none(),
    st.just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    st.just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n"),
    HOSTILE_TEXT,
)
IDS = st.one_of(st.uuids().map(lambda u: u.hex), HOSTILE_TEXT)
HOSTILE = {
    "type": TYPES,
    "source": SOURCES,
    "id": IDS,
    "time": TIMES,
    "traceparent": TRACEPARENTS,
    "payload": PAYLOADS,
}
FINE = {
    "type": st.sampled_from(["Placed", "shop.Placed", ""]),
    "source": st.just("/shop/checkout"),
    "id": st.uuids().map(lambda u: u.hex),
    "time": st.sampled_from(["", "2026-01-31T12:00:00Z", "2026-01-31T12:00:00.5+01:00"]),
    "traceparent": st.sampled_from([None, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]),
    "payload": PLACED.map(msgspec.json.encode),
}
# Anything anywhere, or one thing hostile in an otherwise good event.
ENVELOPES = st.one_of(
    st.builds(Envelope, topic=st.just(TOPIC), **HOSTILE),
    st.sampled_from(sorted(HOSTILE)).flatmap(
        lambda bad: st.builds(
            Envelope, topic=st.just(TOPIC), **{k: HOSTILE[k] if k == bad else FINE[k] for k in HOSTILE}
        )
    ),
)


def check(run: Rig, envelope: Envelope, allowed: Mapping[str, Collection[str]] | None) -> None:
    """Dispatch ``envelope``, then a good event; both outcomes as the model says."""
    before, dead_before = len(run.sink.seen), len(run.published)
    asyncio.run(run.dispatch(envelope))  # never raises: that would leave the message unacknowledged
    accepted = verdict(envelope, allowed, LIMIT)
    handled = len(run.sink.seen) - before
    letters = run.published[dead_before:]
    if accepted:
        assert (handled, letters) == (1, []), envelope
        assert run.sink.seen[-1] == msgspec.json.decode(envelope.payload or b"", type=Placed)
    else:
        assert handled == 0, f"the handler took an invalid event: {envelope!r}"
        assert len(letters) == 1, envelope
        [dead] = letters
        letter = msgspec.json.decode(dead.payload or b"", type=DeadLetter)
        assert dead.topic == DEAD_PREFIX + TOPIC and dead.type == "DeadLetter" and letter.reason
        assert letter.handler == "sink.take" and letter.topic == TOPIC
        assert len(letter.payload) <= MAX_DEAD_PAYLOAD
        # What travels as MQTT properties, and what the consumer stores, is clean.
        for value in (dead.id, dead.source, dead.type, dead.time):
            assert _clean(value), dead
        assert dead.traceparent is None or TRACEPARENT.fullmatch(dead.traceparent)
        recorded, _ = run.recorded[-1]
        assert _clean(recorded.id, required=True), recorded
        for value in (recorded.source, recorded.type, recorded.time):
            assert _clean(value), recorded
    for seen in run.witness.envelopes:
        assert verdict(seen, allowed, LIMIT), f"reached the handler: {seen!r}"
        assert seen.traceparent is None or TRACEPARENT.fullmatch(seen.traceparent), seen
    # The consumer keeps going.
    follow = good(len(run.sink.seen))
    asyncio.run(run.dispatch(follow))
    assert run.sink.seen[-1] == Placed(f"good-{len(run.sink.seen) - 1}", len(run.sink.seen) - 1)


@FUZZ
@given(envelope=ENVELOPES)
def test_any_event_is_handled_or_dead_lettered_by_default(envelope: Envelope) -> None:
    check(rig(), envelope, None)


ALLOWED = {TOPIC: {"checkout"}}


@FUZZ
@given(envelope=ENVELOPES)
def test_any_event_is_handled_or_dead_lettered_when_sources_are_checked(envelope: Envelope) -> None:
    check(rig(ALLOWED), envelope, ALLOWED)


@FUZZ
@given(envelopes=st.lists(ENVELOPES, min_size=2, max_size=8))
def test_one_consumer_takes_a_stream_of_bad_and_good_events(envelopes: list[Envelope]) -> None:
    run = rig(ALLOWED)
    for envelope in envelopes:
        check(run, envelope, ALLOWED)


# --- the rules, one by one ----------------------------------------------------------------------


def dispatched(envelope: Envelope, allowed: Mapping[str, Collection[str]] | None = None) -> tuple[Rig, str]:
    """Dispatch ``envelope`` alone: the rig, and the reason of its dead letter ('' if handled)."""
    run = rig(allowed, max_payload=MAX_PAYLOAD)
    asyncio.run(run.dispatch(envelope))
    if not run.published:
        return run, ""
    return run, msgspec.json.decode(run.published[0].payload or b"", type=DeadLetter).reason


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (
            "/shop/email",
            "source '/shop/email' may not publish on topic 'orders/placed' (its events come from checkout)",
        ),
        ("", "source '' may not publish on topic 'orders/placed'"),
        ("checkout", "source 'checkout' may not publish"),
        ("/shop/checkout/extra", "source '/shop/checkout/extra' may not publish"),
    ],
)
def test_a_source_that_does_not_emit_the_topic_is_dead_lettered(source: str, reason: str) -> None:
    run, found = dispatched(good(source=source), ALLOWED)
    assert reason in found and run.sink.seen == []


def test_an_allowed_source_is_handled_and_a_topic_nobody_emits_accepts_none() -> None:
    run, reason = dispatched(good(source="/shop/checkout"), ALLOWED)
    assert reason == "" and len(run.sink.seen) == 1
    run, reason = dispatched(good(source="/shop/checkout"), {"orders/shipped": {"checkout"}})
    assert "its events come from no service" in reason and run.sink.seen == []


def test_without_allowed_sources_any_source_is_accepted_as_before() -> None:
    for source in ("", "/shop/email", "checkout", "/any/thing"):
        run, reason = dispatched(good(source=source))
        assert reason == "" and len(run.sink.seen) == 1, source


def test_a_huge_payload_is_refused_unread_and_its_dead_letter_is_bounded() -> None:
    huge = msgspec.json.encode(Placed("x" * (2 * MAX_PAYLOAD), 1))
    run, reason = dispatched(good(payload=huge))
    assert reason == f"payload of {len(huge)} bytes exceeds the limit of {MAX_PAYLOAD}"
    letter = msgspec.json.decode(run.published[0].payload or b"", type=DeadLetter)
    assert letter.truncated and letter.payload == huge[:MAX_DEAD_PAYLOAD].decode()
    recorded, _ = run.recorded[0]
    assert recorded.payload == huge[:MAX_DEAD_PAYLOAD]  # the consumer keeps no more than that


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"id": ""}, "the event has no id"),
        ({"id": "a\x00b"}, "attribute id: 'a\\x00b' holds control characters"),
        ({"id": "x" * (MAX_ATTRIBUTE + 1)}, f"attribute id: {MAX_ATTRIBUTE + 1} characters, more than"),
        ({"type": "OrderShipped"}, "type 'OrderShipped' is not Placed, the event of topic 'orders/placed'"),
        ({"time": "yesterday"}, "attribute time: 'yesterday' is not an RFC 3339 timestamp"),
        ({"time": "2026-01-31T12:00:00"}, "is not an RFC 3339 timestamp"),  # no offset
        ({"source": "/shop/\x1bcheckout"}, "attribute source:"),
        ({"payload": b'{"order_id": 7, "quantity": 1}'}, "invalid payload: Expected `str`, got `int`"),
        ({"payload": b"\xff\xfe"}, "invalid payload:"),
        ({"payload": None}, "invalid payload:"),
    ],
)
def test_each_bad_attribute_or_payload_is_dead_lettered_with_its_reason(
    attributes: dict[str, Any], reason: str
) -> None:
    run, found = dispatched(good(**attributes))
    assert reason in found and run.sink.seen == []


@pytest.mark.parametrize(
    "attributes",
    [{"type": ""}, {"time": ""}, {"source": ""}, {"type": "shop.Placed"}, {"time": "2026-01-31T12:00:00Z"}],
)
def test_missing_or_dotted_attributes_are_accepted(attributes: dict[str, Any]) -> None:
    run, reason = dispatched(good(**attributes))
    assert reason == "" and len(run.sink.seen) == 1


@pytest.mark.parametrize(
    "traceparent", ["garbage", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n", "x" * 5000]
)
def test_a_bad_traceparent_is_ignored_and_a_new_trace_begins(traceparent: str) -> None:
    run, reason = dispatched(good(traceparent=traceparent))
    assert reason == "" and len(run.sink.seen) == 1
    [trace] = run.sink.traces
    assert trace is not None and TRACEPARENT.fullmatch(trace)
    assert run.witness.envelopes[0].traceparent is None  # not passed on


def test_a_good_traceparent_is_kept() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    run, _ = dispatched(good(traceparent=parent))
    assert run.sink.traces == [parent] and run.witness.envelopes[0].traceparent == parent


# --- end to end: raw messages to a running consumer ---------------------------------------------


@dataclass(frozen=True)
class RawBroker:
    url: str
    username: str | None = None
    password: str | None = None


def raw_broker(url: str) -> RawBroker:
    """Where, and as whom, this test publishes its raw messages: the one place to change when the
    broker requires a login (today: a private anonymous Mosquitto, the plugin's)."""
    return RawBroker(url)


def publisher(broker: RawBroker) -> paho.Client:
    host, port = broker.url.removeprefix("mqtt://").split(":")
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5
    )
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    client.connect(host, int(port))
    client.loop_start()
    return client


def publish(client: paho.Client, topic: str, payload: bytes, attributes: Mapping[str, str] | None) -> None:
    properties = Properties(PacketTypes.PUBLISH)
    if attributes:
        properties.UserProperty = list(attributes.items())
    info = client.publish(topic, payload, qos=1, properties=properties if attributes else None)
    info.wait_for_publish(10)
    assert info.is_published()


def attributes(**changes: str) -> dict[str, str]:
    base = {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": "/testshop/checkout",
        "type": "OrderPlaced",
        "time": datetime.datetime.now(datetime.UTC).isoformat(),
    }
    return {key: value for key, value in {**base, **changes}.items() if value is not None}


def placed(order_id: str, units: int = 5) -> bytes:
    return msgspec.json.encode(
        OrderPlaced(order_id=order_id, email="raw@example.com", total=Money("EUR", units))
    )


@pytest.mark.timeout(60)
async def test_a_running_consumer_dead_letters_raw_bad_messages_and_keeps_going(
    archipel_mosquitto_url: str,
) -> None:
    broker = raw_broker(archipel_mosquitto_url)
    topic = f"{app.name}/{TOPIC}"
    bad: list[tuple[str, bytes, dict[str, str] | None, str]] = [
        ("not json", b"{not json", attributes(), "invalid payload"),
        ("wrong types", b'{"order_id": 7, "email": [], "total": "x"}', attributes(), "invalid payload"),
        # No source at all: refused before its payload is even looked at (sources are checked).
        ("no properties at all", b"\xff\x00garbage", None, "source '' may not publish"),
        ("huge", placed("h" * (MAX_PAYLOAD + 10)), attributes(), "exceeds the limit"),
        ("overlong id", placed("long-id"), attributes(id="i" * (MAX_ATTRIBUTE + 1)), "attribute id"),
        ("another type", placed("typed"), attributes(type="OrderShipped"), "is not OrderPlaced"),
        ("bad time", placed("timed"), attributes(time="last tuesday"), "RFC 3339"),
    ]
    async with run_app(app, Topology("microservices", broker.url)) as running:
        client = publisher(broker)
        try:
            for _, payload, props, _ in bad:
                publish(client, topic, payload, props)
            # A malformed traceparent is ignored: the event is handled, in a new trace.
            publish(client, topic, placed("traced", 3), attributes(traceparent="not-a-traceparent"))
            for what, payload, _, reason in bad:
                text = payload[:MAX_DEAD_PAYLOAD].decode("utf-8", "replace")
                for handler in ("email.confirm", "ledger.record"):
                    letter = await running.events.wait_for_dead_letter(
                        TOPIC, lambda d, h=handler, t=text: d.handler == h and d.payload == t, timeout=20
                    )
                    assert reason in letter.reason, (what, letter.reason)
            ledger = running.client(Ledger)
            assert await eventually(lambda: ledger.total_of("traced"), timeout=20) == 3
            publish(client, topic, placed("after-the-storm", 7), attributes())
            assert await eventually(lambda: ledger.total_of("after-the-storm"), timeout=20) == 7
            for order_id in ("long-id", "typed", "timed"):  # valid payloads, refused for their attributes
                assert await ledger.total_of(order_id) is None
        finally:
            client.loop_stop()
            client.disconnect()
