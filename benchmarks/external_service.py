"""The shop's shipping served by its Python worker and by its Node.js process, side by side.

Both are started as ``archipel run`` starts them (``examples/boutique/archipel.toml``'s
``[external.shipping]`` for Node.js): the environment of an archipel worker, the deployment's
keyring, a private Mosquitto configured as ``archipel run`` configures it. One at a time, in
interleaved rounds (the order alternates), each metric keeping its best round:

- start-up: from the process's spawn to its first ``/readyz`` 200;
- RPC: ``get_quote`` called by archipel's own client as checkout calls it (``HttpTransport.proxy``,
  the default interceptor chain, a signed credential checked by the server): sequential p50 and
  p99, then ``--concurrency`` callers in flight: throughput and the server's CPU per call
  (``/proc/PID/stat``);
- events: ``OrderPlaced`` published at QoS 1 by an archipel ``MqttBus`` (checkout's side), the
  ``OrderShipped`` it yields received by another (email's side): throughput with at most
  ``--window`` orders unanswered, the server's CPU per event, then the end-to-end latency of
  orders sent one at a time (published -> OrderShipped handled);
- memory: the server's resident set after the warm-up, and its peak (``VmHWM``) at the end.

    python benchmarks/external_service.py [--quick] [--rounds 3] [--calls 2000] [--events 3000]

Needs node (>= 20), ``npm ci`` in ``examples/boutique/shipping-node`` and mosquitto.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[1]
BOUTIQUE = ROOT / "examples" / "boutique"
NODE_PACKAGE = BOUTIQUE / "shipping-node"
sys.path.insert(0, str(BOUTIQUE))

from boutique.app import app  # noqa: E402
from boutique.shipping import Shipping  # noqa: E402
from boutique.types import Address, CartItem, Money, OrderItem, OrderPlaced, OrderShipped  # noqa: E402

from archipel._bench.result import this_machine  # noqa: E402
from archipel._deploy.children import free_port  # noqa: E402
from archipel._deploy.environment import WorkerSpec, worker_environment  # noqa: E402
from archipel._events.bus import Envelope  # noqa: E402
from archipel._events.mqtt import MqttBus  # noqa: E402
from archipel._interceptors import default_interceptors  # noqa: E402
from archipel._rpc.client import HttpTransport  # noqa: E402
from archipel._security.keyring import KEYRING_VAR, keyring_for  # noqa: E402
from archipel._security.tokens import Signer  # noqa: E402
from archipel.testing.plugin import embedded_mosquitto  # noqa: E402

SECRET = b"the-benchmark-deployment-secret-0123456789"
PARIS = Address("1 Rue de la Paix", "Paris", "", "France", "75002")
ITEMS = [CartItem("OLJCESPC7Z", 2), CartItem("66VCHSJNUP", 1)]
USD = Money("USD", 10, 0)
ORDER_ITEMS = [OrderItem("OLJCESPC7Z", "Sunglasses", 2, USD), OrderItem("66VCHSJNUP", "Tank top", 1, USD)]
KINDS = ("python", "node")


@dataclass
class Result:
    startup_ms: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    calls_per_s: float = 0.0
    cpu_per_call_us: float = 0.0
    client_cpu_per_call_us: float = 0.0
    events_per_s: float = 0.0
    cpu_per_event_us: float = 0.0
    client_cpu_per_event_us: float = 0.0
    event_p50_us: float = 0.0
    event_p99_us: float = 0.0
    rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    extra: dict[str, list[float]] = field(default_factory=dict)


# (attribute, label, lower is better, format)
ROWS: list[tuple[str, str, bool, str]] = [
    ("startup_ms", "start-up to /readyz 200 (ms)", True, "{:,.0f}"),
    ("p50_us", "get_quote p50 latency (us)", True, "{:,.0f}"),
    ("p99_us", "get_quote p99 latency (us)", True, "{:,.0f}"),
    ("calls_per_s", "get_quote throughput, {c} in flight (calls/s)", False, "{:,.0f}"),
    ("cpu_per_call_us", "server CPU per call (us)", True, "{:,.0f}"),
    ("client_cpu_per_call_us", "caller CPU per call (us, checkout's proxy)", True, "{:,.0f}"),
    ("events_per_s", "OrderPlaced -> OrderShipped throughput (events/s)", False, "{:,.0f}"),
    ("cpu_per_event_us", "server CPU per event (us)", True, "{:,.0f}"),
    ("client_cpu_per_event_us", "publisher + subscriber CPU per event (us)", True, "{:,.0f}"),
    ("event_p50_us", "OrderPlaced -> OrderShipped p50 latency (us)", True, "{:,.0f}"),
    ("event_p99_us", "OrderPlaced -> OrderShipped p99 latency (us)", True, "{:,.0f}"),
    ("rss_mb", "resident memory after warm-up (MB)", True, "{:,.1f}"),
    ("peak_rss_mb", "peak resident memory (MB)", True, "{:,.1f}"),
]


# --- the server processes ------------------------------------------------------------------------


def command_of(kind: str) -> list[str]:
    if kind == "python":
        return [sys.executable, "-m", "archipel.worker"]
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not installed")
    if not (NODE_PACKAGE / "node_modules" / "mqtt").is_dir():
        raise SystemExit(f"{NODE_PACKAGE}/node_modules is missing: run `npm ci` there (scripts/setup.sh)")
    return [node, str(NODE_PACKAGE / "src" / "main.js")]


def environment(deployment: str, port: int, broker: str, data_dir: Path) -> dict[str, str]:
    """What the supervisor gives a shipping process, written by the same function."""
    spec = WorkerSpec(
        app="boutique.app:app",
        name="shipping",
        services=["shipping"],
        host="127.0.0.1",
        port=port,
        broker=broker,
        broker_login=False,  # the embedded broker without logins: anonymous on 127.0.0.1
        deployment=deployment,
        version="v-bench",
        drain=2.0,
        supervisor_pid=os.getpid(),
    )
    keyring = keyring_for(app, deployment, "shipping", ["shipping"], [SECRET])
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIPEL_")}
    env.update(worker_environment(spec), PYTHONPATH=str(BOUTIQUE), ARCHIPEL_DATA_DIR=str(data_dir))
    env[KEYRING_VAR] = msgspec.json.encode(keyring).decode()
    return env


def node_version() -> str:
    node = shutil.which("node")
    if node is None:
        return "?"
    done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10, check=False)
    return done.stdout.strip() or "?"


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def memory_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def server(
    kind: str, deployment: str, broker: str, folder: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, float]]:
    """The process serving shipping, until the block ends: (process, url, ms to /readyz 200)."""
    port = free_port()
    data = folder / f"{deployment}-data"
    data.mkdir()
    log_path = folder / f"{deployment}.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        # stdin stays open: a Python worker that follows its supervisor stops at its EOF.
        process = subprocess.Popen(
            command_of(kind),
            env=environment(deployment, port, broker, data),
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        startup_ms = wait_ready(url, process, log_path, started)
        yield process, url, startup_ms
    finally:
        if process.stdin is not None:
            process.stdin.close()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, started: float) -> float:
    import http.client

    host, port = url.removeprefix("http://").rsplit(":", 1)
    deadline = started + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection(host, int(port), timeout=1)
            try:
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    return (time.perf_counter() - started) * 1000
            finally:
                connection.close()
        if time.perf_counter() > deadline:
            raise RuntimeError(f"not ready within 60 s:\n{log.read_text(errors='replace')}")
        time.sleep(0.01)  # polling /readyz, as the supervisor does (finer grained)


# --- RPC ---------------------------------------------------------------------------------------


async def measure_rpc(result: Result, url: str, deployment: str, pid: int, args: argparse.Namespace) -> None:
    keyring = keyring_for(app, deployment, "checkout", ["checkout"], [SECRET])
    transport = HttpTransport({"shipping": [url]}, signer=Signer(keyring))
    await transport.start()
    try:
        chain = default_interceptors(app, endpoints=transport.endpoints)
        shipping: Shipping = transport.proxy(app.specs["shipping"], caller="checkout", interceptors=chain)
        expected = await shipping.get_quote(PARIS, ITEMS)
        assert expected == Money("USD", 6, 490_000_000), expected
        for _ in range(args.warmup):
            await shipping.get_quote(PARIS, ITEMS)
        latencies: list[int] = []
        for _ in range(args.calls):
            begin = time.perf_counter_ns()
            await shipping.get_quote(PARIS, ITEMS)
            latencies.append(time.perf_counter_ns() - begin)
        latencies.sort()
        result.p50_us = statistics.median(latencies) / 1000
        result.p99_us = percentile(latencies, 99) / 1000

        async def caller() -> None:
            for _ in range(args.per_caller):
                await shipping.get_quote(PARIS, ITEMS)

        cpu, own = cpu_seconds(pid), time.process_time()
        begin_s = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - begin_s
        total = args.concurrency * args.per_caller
        result.calls_per_s = total / elapsed
        result.cpu_per_call_us = (cpu_seconds(pid) - cpu) / total * 1e6
        result.client_cpu_per_call_us = (time.process_time() - own) / total * 1e6
    finally:
        await transport.close()


def percentile(ordered: list[int], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# --- events ------------------------------------------------------------------------------------


def order(order_id: str) -> Envelope:
    event = OrderPlaced(order_id, "user-1", "buyer@example.com", ORDER_ITEMS, USD, USD, PARIS, "tx-1")
    return Envelope(topic="orders/placed", type="OrderPlaced", source="/boutique/checkout", event=event)


async def measure_events(
    result: Result, broker: str, deployment: str, pid: int, args: argparse.Namespace
) -> None:
    decoder = msgspec.json.Decoder(OrderShipped)
    arrived: dict[str, int] = {}  # order id -> perf_counter_ns when its OrderShipped was handled
    waiters: dict[str, asyncio.Future[None]] = {}
    window = asyncio.Semaphore(args.window)

    async def shipped(envelope: Envelope) -> None:
        order_id = decoder.decode(envelope.payload or b"").order_id
        if order_id in arrived:
            return  # a redelivery (at least once): counted once
        arrived[order_id] = time.perf_counter_ns()
        waiter = waiters.pop(order_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    suffix = uuid.uuid4().hex[:6]
    consumer = MqttBus(broker, deployment, f"{deployment}-email-{suffix}", durable=False)
    consumer.subscribe("email", "orders/shipped", shipped)
    checkout = MqttBus(broker, deployment, f"{deployment}-checkout-{suffix}", durable=False)
    await consumer.start()
    await checkout.start()
    loop = asyncio.get_running_loop()

    async def one(order_id: str, timeout: float) -> bool:
        waiters[order_id] = loop.create_future()
        await checkout.publish(order(order_id))
        try:
            await asyncio.wait_for(waiters[order_id], timeout)
        except TimeoutError:
            waiters.pop(order_id, None)
            return False
        return True

    try:
        # Until the server's subscription is in place: an order published before is lost.
        deadline = time.monotonic() + 30
        while not await one(uuid.uuid4().hex[:16], 0.5):
            if time.monotonic() > deadline:
                raise RuntimeError("no OrderShipped within 30 s")
        for _ in range(args.event_warmup):
            await one(uuid.uuid4().hex[:16], 10)

        # Throughput: at most `window` orders unanswered.
        ids = [uuid.uuid4().hex[:16] for _ in range(args.events)]

        async def send(order_id: str) -> None:
            await window.acquire()
            waiter = waiters[order_id] = loop.create_future()
            waiter.add_done_callback(lambda _: window.release())
            await checkout.publish(order(order_id))

        cpu, own = cpu_seconds(pid), time.process_time()
        begin = time.perf_counter_ns()
        for order_id in ids:
            await send(order_id)
        await asyncio.wait_for(asyncio.gather(*(waiters[i] for i in ids if i in waiters)), 60)
        end = max(arrived[i] for i in ids)
        result.events_per_s = len(ids) / ((end - begin) / 1e9)
        result.cpu_per_event_us = (cpu_seconds(pid) - cpu) / len(ids) * 1e6
        result.client_cpu_per_event_us = (time.process_time() - own) / len(ids) * 1e6

        # End-to-end latency, one order at a time.
        latencies: list[int] = []
        for _ in range(args.latency_events):
            order_id = uuid.uuid4().hex[:16]
            begin = time.perf_counter_ns()
            if not await one(order_id, 10):
                raise RuntimeError(f"no OrderShipped for {order_id} within 10 s")
            latencies.append(arrived[order_id] - begin)
        latencies.sort()
        result.event_p50_us = statistics.median(latencies) / 1000
        result.event_p99_us = percentile(latencies, 99) / 1000
    finally:
        await checkout.stop()
        await consumer.stop()


# --- one round, the rounds -------------------------------------------------------------------------


async def measure(kind: str, broker: str, folder: Path, args: argparse.Namespace) -> Result:
    deployment = f"bench{kind}{uuid.uuid4().hex[:6]}"
    result = Result()
    with server(kind, deployment, broker, folder) as (process, url, startup_ms):
        result.startup_ms = startup_ms
        await measure_rpc(result, url, deployment, process.pid, args)
        result.rss_mb = memory_mb(process.pid, "VmRSS")
        await measure_events(result, broker, deployment, process.pid, args)
        result.peak_rss_mb = memory_mb(process.pid, "VmHWM")
    return result


def best(results: list[Result]) -> Result:
    """Best of the rounds, metric by metric: the least disturbed by other load on the machine;
    every round's values in ``extra``."""
    chosen = Result()
    for attribute, _, lower, _ in ROWS:
        values = [getattr(r, attribute) for r in results]
        setattr(chosen, attribute, min(values) if lower else max(values))
        chosen.extra[attribute] = [round(v, 1) for v in values]
    return chosen


async def run(args: argparse.Namespace) -> dict[str, Result]:
    rounds: dict[str, list[Result]] = {kind: [] for kind in KINDS}
    with (
        tempfile.TemporaryDirectory(prefix="external-service-") as tmp,
        contextlib.contextmanager(embedded_mosquitto)(Path(tmp) / "broker") as broker,
    ):
        folder = Path(tmp)
        for number in range(args.rounds):
            order_of = KINDS if number % 2 == 0 else KINDS[::-1]
            for kind in order_of:
                result = await measure(kind, broker, folder, args)
                rounds[kind].append(result)
                print(
                    f"round {number + 1}/{args.rounds} {kind}: {result.calls_per_s:,.0f} calls/s, "
                    f"{result.events_per_s:,.0f} events/s",
                    file=sys.stderr,
                )
    return {kind: best(results) for kind, results in rounds.items()}


def report(results: dict[str, Result], args: argparse.Namespace) -> None:
    python, node = results["python"], results["node"]
    width = 52
    print(f"{'':{width}} {'python':>10} {'node':>10} {'node/python':>12}")
    for attribute, label, _, fmt in ROWS:
        a, b = getattr(python, attribute), getattr(node, attribute)
        ratio = f"{b / a:.2f}x" if a else "-"
        name = label.format(c=args.concurrency)
        print(f"{name:{width}} {fmt.format(a):>10} {fmt.format(b):>10} {ratio:>12}")
    print()
    print(f"node / python CPU per call: {node.cpu_per_call_us / python.cpu_per_call_us:.2f}x")
    print(f"node / python CPU per event: {node.cpu_per_event_us / python.cpu_per_event_us:.2f}x")
    print(f"node / python throughput (calls/s): {node.calls_per_s / python.calls_per_s:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: one round, tiny sizes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=300, help="RPC calls before measuring")
    parser.add_argument("--calls", type=int, default=2000, help="sequential get_quote calls")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--per-caller", type=int, default=300)
    parser.add_argument("--event-warmup", type=int, default=100)
    parser.add_argument("--events", type=int, default=3000, help="OrderPlaced for the throughput run")
    parser.add_argument("--window", type=int, default=100, help="orders unanswered at most")
    parser.add_argument("--latency-events", type=int, default=500, help="orders sent one at a time")
    parser.add_argument("--json", type=Path, help="also write the results and the machine there")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.warmup, args.calls, args.per_caller = 1, 300, 300, 50
        args.event_warmup, args.events, args.latency_events = 100, 500, 100
    results = asyncio.run(run(args))
    machine = this_machine()
    print(
        f"machine: {machine.cpus} CPUs, {machine.model}, Python {machine.python}, "
        f"Node.js {node_version()}, {machine.platform}"
    )
    report(results, args)
    if args.json is not None:
        parameters = {k: v for k, v in vars(args).items() if k != "json"}
        document = {
            "scenario": "external_service",
            "machine": msgspec.to_builtins(machine),
            "node": node_version(),
            "parameters": parameters,
            "results": {kind: asdict(r) for kind, r in results.items()},
        }
        args.json.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
