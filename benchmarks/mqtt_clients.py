"""CPU cost per message of Python MQTT clients, publishing and consuming in one process.

    python benchmarks/mqtt_clients.py [--url mqtt://127.0.0.1:1883] [-n 2000]

Each run publishes N messages to a fresh topic and consumes them in the same process; we report
``time.process_time()`` (all threads of this process, not the broker) divided by N. QoS 1
publishes are awaited one by one where the client lets us (zmqtt, aiomqtt); paho and gmqtt
publish without waiting. zmqtt at QoS 1 acks manually after the (empty) handler, as MqttBus does.
The last row is the whole MqttBus path: envelope, CloudEvents user properties, shared subscription.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable

import aiomqtt
import gmqtt
import paho.mqtt.client as paho
import zmqtt
from paho.mqtt.enums import CallbackAPIVersion

from archipel._deploy.broker import parse_broker_url
from archipel._events.bus import Envelope
from archipel._events.mqtt import MqttBus

GMQTT_WINDOW = 10
PAYLOAD = b'{"order_id":"o-12345","email":"someone@example.com","total":{"currency":"EUR","units":42}}'


def _topic() -> str:
    return f"bench/{uuid.uuid4().hex}"


async def bench_zmqtt(host: str, port: int, qos: int, n: int) -> float:
    client = zmqtt.create_client(host, port, version="5.0", client_id=f"b-{uuid.uuid4().hex[:8]}")
    topic = _topic()
    async with client, client.subscribe(topic, qos=zmqtt.QoS(qos), auto_ack=qos == 0) as sub:

        async def consume() -> None:
            for _ in range(n):
                message = await sub.get_message()
                await message.ack()

        reader = asyncio.create_task(consume())
        start = time.process_time()
        for _ in range(n):
            await client.publish(topic, PAYLOAD, qos=zmqtt.QoS(qos))
        await reader
        return time.process_time() - start


async def bench_gmqtt(host: str, port: int, qos: int, n: int) -> float:
    subscribed = asyncio.Event()
    count, target = 0, 0
    reached = asyncio.Event()

    def on_message(_client: object, _topic: str, _payload: bytes, _qos: int, _props: object) -> int:
        nonlocal count
        count += 1
        if count >= target:
            reached.set()
        return 0

    client = gmqtt.Client(f"b-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    await client.connect(host, port, version=gmqtt.constants.MQTTv50)
    topic = _topic()
    client.subscribe(topic, qos=qos)
    await subscribed.wait()
    start = time.process_time()
    # gmqtt publishes fire-and-forget and raises OverflowError once the broker's Receive Maximum of
    # packet ids is in flight, so publish in windows and wait for the messages to come back.
    for sent in range(0, n, GMQTT_WINDOW):
        burst = min(GMQTT_WINDOW, n - sent)
        target = sent + burst
        reached.clear()
        for _ in range(burst):
            client.publish(topic, PAYLOAD, qos=qos)
        if count < target:
            await asyncio.wait_for(reached.wait(), 60)
    elapsed = time.process_time() - start
    await client.disconnect()
    return elapsed


async def bench_paho(host: str, port: int, qos: int, n: int) -> float:
    done = threading.Event()
    subscribed = threading.Event()
    count = 0

    def on_message(_c: object, _u: object, _msg: object) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"b-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5
    )
    client.max_queued_messages_set(0)
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(host, port)
    client.loop_start()
    topic = _topic()
    client.subscribe(topic, qos=qos)
    subscribed.wait(10)
    start = time.process_time()
    for _ in range(n):
        client.publish(topic, PAYLOAD, qos=qos)
    await asyncio.to_thread(done.wait, 60)
    elapsed = time.process_time() - start
    client.loop_stop()
    client.disconnect()
    return elapsed


async def bench_aiomqtt(host: str, port: int, qos: int, n: int) -> float:
    topic = _topic()
    async with aiomqtt.Client(
        host, port, identifier=f"b-{uuid.uuid4().hex[:8]}", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(topic, qos=qos)

        async def consume() -> None:
            seen = 0
            async for _ in client.messages:
                seen += 1
                if seen == n:
                    return

        reader = asyncio.create_task(consume())
        start = time.process_time()
        for _ in range(n):
            await client.publish(topic, PAYLOAD, qos=qos)
        await reader
        return time.process_time() - start


async def bench_mqttbus(host: str, port: int, qos: int, n: int) -> float:
    app = f"bench{uuid.uuid4().hex[:8]}"
    done = asyncio.Event()
    count = 0

    async def handler(_envelope: Envelope) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    bus = MqttBus(f"mqtt://{host}:{port}", app, f"{app}-1", durable=False)
    bus.subscribe("email", "orders/placed", handler)
    await bus.start()
    try:
        start = time.process_time()
        for _ in range(n):
            await bus.publish(Envelope("orders/placed", "shop.OrderPlaced", "checkout", payload=PAYLOAD))
        await asyncio.wait_for(done.wait(), 60)
        return time.process_time() - start
    finally:
        await bus.stop()


Bench = Callable[[str, int, int, int], Awaitable[float]]
CLIENTS: dict[str, Bench] = {
    "zmqtt": bench_zmqtt,
    "gmqtt": bench_gmqtt,
    "paho-mqtt": bench_paho,
    "aiomqtt": bench_aiomqtt,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="mqtt://127.0.0.1:1883")
    parser.add_argument("-n", type=int, default=2000, help="messages per run (default 2000)")
    args = parser.parse_args()
    host, port = parse_broker_url(args.url)

    results: dict[str, dict[int, float]] = {}
    for name, bench in CLIENTS.items():
        for qos in (0, 1):
            asyncio.run(bench(host, port, qos, 200))  # warm up imports, connections, caches
            cpu = asyncio.run(bench(host, port, qos, args.n))
            results.setdefault(name, {})[qos] = cpu / args.n * 1e6
    cpu = asyncio.run(bench_mqttbus(host, port, 1, args.n))
    results["archipel MqttBus"] = {1: cpu / args.n * 1e6}

    base = results["zmqtt"]
    print(f"CPU µs per message (publish + consume in one process), N={args.n}, broker {args.url}")
    print(f"{'client':<18}{'QoS 0':>10}{'QoS 1':>10}{'vs zmqtt 0':>12}{'vs zmqtt 1':>12}")
    for name, row in results.items():
        cells = [f"{row[q]:>10.1f}" if q in row else f"{'-':>10}" for q in (0, 1)]
        ratios = [f"{row[q] / base[q]:>11.2f}x" if q in row else f"{'-':>12}" for q in (0, 1)]
        print(f"{name:<18}{''.join(cells)}{''.join(ratios)}")


if __name__ == "__main__":
    main()
