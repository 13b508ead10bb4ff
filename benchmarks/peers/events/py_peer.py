"""One side (publish or consume) of the "events" benchmark for a Python system, in its own process.

    python benchmarks/peers/events/py_peer.py SYSTEM ROLE --url mqtt://127.0.0.1:1883 --topic T ...

SYSTEM is ``archipel`` (a service's ``emit`` -> another process's ``@on`` handler, each through
``Runtime`` + ``MqttBus``; stateless services: the emit is published at once, the handler has no
inbox), ``archipel-outbox`` (the same with state: the emit commits to the outbox inside a unit of
work and the relay publishes it; the handler runs with its inbox),
``gmqtt`` or ``zmqtt`` (raw clients), ``faststream`` (its MQTT broker).
The protocol with ``benchmarks/events.py`` (the Node peer speaks it too):

- both sides print ``ready`` once connected (the consumer: subscribed);
- the publisher waits for ``go`` on stdin, sends ``--warmup`` messages closed-loop, prints
  ``warmed``, waits for ``go`` again, sends ``-n`` messages (closed loop with at most ``--window``
  unhandled, or open loop at ``--rate`` per second) and prints ``sent {json}``;
- the consumer counts every message, sends its count as a UDP datagram to the publisher's
  ``--feedback`` port every ``--every`` messages, and after the last measured one prints
  ``done {json}``: latency (handled - scheduled, ``time.monotonic()``, one machine) per message;
- both exit when stdin closes, so the parent can read their /proc counters first.

Each message is a JSON object of about 200 bytes: ``seq``, ``t`` (scheduled time), ``w``
(1 during the warm-up) and a few order fields.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ORDER_ID = "o-20261130-000042"
EMAIL = "someone@example.com"
NOTE = "gift wrap: no; deliver to the back door, ring twice, or leave it with the neighbours; thanks"


def payload(seq: int, t: float, warm: int) -> dict[str, Any]:
    return {"seq": seq, "t": t, "w": warm, "order_id": ORDER_ID, "email": EMAIL, "note": NOTE}


def encode(seq: int, t: float, warm: int) -> bytes:
    return json.dumps(payload(seq, t, warm), separators=(",", ":")).encode()


class Counter:
    """The consumer's bookkeeping: counts, latencies of measured messages, feedback datagrams."""

    def __init__(self, n: int, warmup: int, feedback: int, every: int) -> None:
        self.n, self.warmup, self.every = n, warmup, every
        self.count = 0
        self.measured = 0
        self.latencies: list[float] = []
        self.first = self.last = 0.0
        self.seen: set[int] = set()
        self.duplicates = 0
        self.finished = asyncio.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._target = ("127.0.0.1", feedback)

    def hit(self, seq: int, t: float, warm: int) -> None:
        now = time.monotonic()
        key = seq if not warm else -seq - 1
        if key in self.seen:
            self.duplicates += 1
            return
        self.seen.add(key)
        self.count += 1
        if not warm:
            if not self.measured:
                self.first = now
            self.measured += 1
            self.last = now
            self.latencies.append((now - t) * 1000)
        if self.count % self.every == 0 or self.count == self.warmup or self.measured == self.n:
            self._sock.sendto(str(self.count).encode(), self._target)
        if self.measured == self.n and not self.finished.is_set():
            self.finished.set()

    def hit_payload(self, body: bytes) -> None:
        data = json.loads(body)
        self.hit(data["seq"], data["t"], data["w"])

    def report(self) -> dict[str, Any]:
        return {
            "latencies_ms": self.latencies,
            "first": self.first,
            "last": self.last,
            "duplicates": self.duplicates,
        }


class Feedback(asyncio.DatagramProtocol):
    """The publisher's view of how many messages the consumer has handled."""

    def __init__(self) -> None:
        self.handled = 0
        self.changed = asyncio.Event()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.handled = max(self.handled, int(data))
        self.changed.set()

    async def wait_below(self, sent: int, window: int) -> None:
        while sent - self.handled >= window:
            self.changed.clear()
            await self.changed.wait()


async def line() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -- systems: each returns (start, send, stop) for a publisher, (start, stop) for a consumer -------

Send = Callable[[int, float, int], Awaitable[None] | None]


async def archipel_side(args: argparse.Namespace, counter: Counter | None) -> tuple[Any, Send | None]:
    from archipel import App
    from archipel._events.mqtt import MqttBus
    from archipel._runtime import Runtime

    sys.path.insert(0, str(Path(__file__).parent))
    from archipel_app import HIT, BenchEvent, Emitter, Ledger, LedgerSink, Sink

    from archipel._state import unit_of_work

    if counter is not None:
        HIT.append(counter.hit)
    stateful = args.system == "archipel-outbox"
    app = App(args.topic, [Ledger, LedgerSink] if stateful else [Emitter, Sink])
    names = ("ledger", "ledgersink") if stateful else ("emitter", "sink")
    local = names[1] if counter is not None else names[0]
    bus = MqttBus(args.url, app.name, f"{app.name}-{local}-{uuid.uuid4().hex[:6]}", durable=args.durable)
    data = Path(tempfile.mkdtemp(prefix="archipel-bench-events-"))
    runtime = Runtime(app, [local], bus, data_dir=data, instance=f"bench-{local}")
    await runtime.start()
    if counter is not None:
        return runtime, None
    emitter = runtime.instances[local]
    store = runtime.stores[local]

    async def send(seq: int, t: float, warm: int) -> None:
        await emitter.emit(BenchEvent(seq, t, warm, ORDER_ID, EMAIL, NOTE))

    async def send_with_state(seq: int, t: float, warm: int) -> None:
        async with unit_of_work(store):  # as a served call of a stateful service does
            await emitter.emit(BenchEvent(seq, t, warm, ORDER_ID, EMAIL, NOTE))

    return runtime, send_with_state if stateful else send


async def gmqtt_side(args: argparse.Namespace, counter: Counter | None) -> tuple[Any, Send | None]:
    import gmqtt

    # Acknowledge after the handler, as the others do (the default PUBACKs before it runs).
    client = gmqtt.Client(f"b-{uuid.uuid4().hex[:8]}", optimistic_acknowledgement=False)
    topic = f"{args.topic}/placed"
    if counter is not None:
        subscribed = asyncio.Event()

        # A coroutine: with optimistic_acknowledgement=False gmqtt sends the PUBACK from its
        # done-callback; a plain function would never be acknowledged.
        async def on_message(_c: object, _t: str, body: bytes, _q: int, _p: object) -> int:
            counter.hit_payload(body)
            return 0

        client.on_message = on_message
        client.on_subscribe = lambda *_: subscribed.set()
        await client.connect(*_host_port(args.url), version=gmqtt.constants.MQTTv50)
        client.subscribe(topic, qos=1)
        await subscribed.wait()
        return _Stop(client.disconnect), None
    await client.connect(*_host_port(args.url), version=gmqtt.constants.MQTTv50)

    async def retry(body: bytes) -> None:
        while True:
            await asyncio.sleep(0.0005)
            try:
                client.publish(topic, body, qos=1)
                return
            except OverflowError:
                continue

    def send(seq: int, t: float, warm: int) -> Awaitable[None] | None:
        body = encode(seq, t, warm)
        try:  # fire-and-forget; raises once the broker's Receive Maximum of ids is in flight
            client.publish(topic, body, qos=1)
        except OverflowError:
            return retry(body)
        return None

    return _Stop(client.disconnect), send


async def zmqtt_side(args: argparse.Namespace, counter: Counter | None) -> tuple[Any, Send | None]:
    import zmqtt

    client = zmqtt.create_client(*_host_port(args.url), version="5.0", client_id=f"b-{uuid.uuid4().hex[:8]}")
    await client.connect()
    topic = f"{args.topic}/placed"
    if counter is not None:
        sub = client.subscribe(topic, qos=zmqtt.QoS.AT_LEAST_ONCE, auto_ack=False, receive_buffer_size=10_000)
        await sub.start()

        async def consume() -> None:
            while True:
                message = await sub.get_message()
                counter.hit_payload(message.payload)
                await message.ack()

        task = asyncio.create_task(consume())

        async def stop() -> None:
            task.cancel()
            await client.disconnect()

        return _Stop(stop), None

    async def send(seq: int, t: float, warm: int) -> None:
        await client.publish(topic, encode(seq, t, warm), qos=zmqtt.QoS.AT_LEAST_ONCE)

    return _Stop(client.disconnect), send


async def faststream_side(args: argparse.Namespace, counter: Counter | None) -> tuple[Any, Send | None]:
    from faststream.mqtt import MQTTBroker, QoS

    broker = MQTTBroker(args.url, client_id=f"b-{uuid.uuid4().hex[:8]}", logger=None)
    topic = f"{args.topic}/placed"
    if counter is not None:

        @broker.subscriber(topic, qos=QoS.AT_LEAST_ONCE)
        async def got(body: dict[str, Any]) -> None:
            counter.hit(body["seq"], body["t"], body["w"])

        await broker.start()
        return _Stop(broker.stop), None
    await broker.start()

    async def send(seq: int, t: float, warm: int) -> None:
        await broker.publish(payload(seq, t, warm), topic, qos=QoS.AT_LEAST_ONCE)

    return _Stop(broker.stop), send


# Every publisher sends concurrently, each send a task, at most --window events unhandled: a
# service emits from many calls at once. Add a system here to await each send where it is made.
INLINE: set[str] = set()
SYSTEMS = {
    "archipel": archipel_side,
    "archipel-outbox": archipel_side,
    "gmqtt": gmqtt_side,
    "zmqtt": zmqtt_side,
    "faststream": faststream_side,
}


class _Stop:
    def __init__(self, stop: Callable[[], Awaitable[Any]]) -> None:
        self._stop = stop

    async def stop(self) -> None:
        await self._stop()


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("mqtt://").partition(":")
    return host, int(port or 1883)


# -- the two roles -------------------------------------------------------------------------------


async def consume(args: argparse.Namespace) -> None:
    counter = Counter(args.n, args.warmup, args.feedback, args.every)
    side, _ = await SYSTEMS[args.system](args, counter)
    say("ready")
    await counter.finished.wait()
    say("done " + json.dumps(counter.report()))
    await line()  # the parent read our counters
    await side.stop()


async def publish(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    feedback = Feedback()
    await loop.create_datagram_endpoint(lambda: feedback, local_addr=("127.0.0.1", args.feedback))
    side, send = await SYSTEMS[args.system](args, None)
    assert send is not None
    pending: set[asyncio.Future[Any]] = set()
    errors = 0

    async def track(result: Awaitable[None] | None) -> None:
        if result is None:
            return
        if args.system in INLINE:  # awaited where it is called, as a service awaits its emit
            await result
        else:
            task = asyncio.ensure_future(result)
            pending.add(task)
            task.add_done_callback(pending.discard)

    say("ready")
    await line()
    for seq in range(args.warmup):
        await feedback.wait_below(seq, args.window)
        await track(send(seq, time.monotonic(), 1))
    await feedback.wait_below(args.warmup, 1)
    say("warmed")
    await line()
    start = time.monotonic()
    base = args.warmup
    cap = args.window * 10
    for i in range(args.n):
        if args.rate:
            due = start + i / args.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await feedback.wait_below(base + i, cap)
        else:
            await feedback.wait_below(base + i, args.window)
            due = time.monotonic()
        await track(send(i, due, 0))
    for result in await asyncio.gather(*pending, return_exceptions=True):
        if isinstance(result, BaseException):
            errors += 1
    say("sent " + json.dumps({"start": start, "errors": errors}))
    await line()
    await side.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("role", choices=["publish", "consume"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", required=True, help="a fresh topic root (also the archipel app name)")
    parser.add_argument("-n", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop, per second (0: closed loop)")
    parser.add_argument("--feedback", type=int, required=True, help="the publisher's UDP port")
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--durable", action="store_true", help="archipel: durable MQTT sessions")
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="the event loop (workers run uvloop)"
    )
    args = parser.parse_args()
    main = consume(args) if args.role == "consume" else publish(args)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


if __name__ == "__main__":
    main()
