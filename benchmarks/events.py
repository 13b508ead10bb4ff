"""Publish -> consume of a small event at QoS 1 through one broker, per system and broker.

    python benchmarks/events.py [--quick] [-n 20000] [--latency-n 10000] [--loop uvloop|asyncio]
                                 [--out FILE.json]

The JSON result goes to ``--out`` (default ``benchmarks/results/events.json``).

Systems (publisher and consumer are two processes, `benchmarks/peers/events/`):

- archipel: a service's ``emit`` -> an ``@on`` handler of a service in another process, each
  process a ``Runtime`` with an ``MqttBus`` (dispatcher, ack after the handler); stateless
  services, so the emit is published at once and the handler has no inbox;
- archipel-outbox: the same with stateful services: the emit commits to the outbox in a unit of
  work and the relay publishes it; the handler runs with its inbox (what the guarantees cost);
- gmqtt, zmqtt: the raw clients (gmqtt acks after its handler: ``optimistic_acknowledgement=False``);
- faststream: FastStream's ``MQTTBroker`` publisher -> ``@broker.subscriber`` at QoS 1;
- moleculer: ``broker.emit`` over the MQTT transporter (QoS 1, MQTT 5) -> another node's handler.

Brokers: ``embedded`` (a private Mosquitto configured as ``archipel run`` configures it),
``mosquitto`` (the one on 127.0.0.1:1883), ``rumqttd`` (the pip broker, in this process).

Per system and broker: throughput of a closed-loop publisher keeping at most ``--window`` events
unhandled (the consumer reports its count over UDP), CPU seconds per 1,000 events of both processes
(/proc/PID/stat) and their peak RSS during that run; then latency p50/p99 (handled - scheduled time)
of an open-loop publisher at half the measured throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers" / "events"
MOLECULER = PEERS / "moleculer"
SYSTEMS = ("archipel", "archipel-outbox", "gmqtt", "zmqtt", "faststream", "moleculer")
BROKERS = ("embedded", "mosquitto", "rumqttd")
RAW = ("gmqtt", "zmqtt")
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOP = ["uvloop"]  # every Python peer's event loop (--loop): the workers' own by default


class PeerFailed(Exception):
    pass


@dataclass
class Run:
    throughput: float
    latencies: list[float]
    cpu_publisher: float
    cpu_consumer: float
    rss_publisher_mb: float
    rss_consumer_mb: float
    errors: int
    duplicates: int


@dataclass
class Row:
    name: str
    system: str
    broker: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None
    cpu_s_per_1000: float | None = None
    rss_mb: float | None = None
    errors: int = 0
    failure: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)


# -- processes ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_mb(pid: int) -> float:
    for text in Path(f"/proc/{pid}/status").read_text().splitlines():
        if text.startswith("VmHWM:"):
            return int(text.split()[1]) / 1024
    return 0.0


class Peer:
    """One side, speaking the line protocol of ``peers/events/py_peer.py``."""

    def __init__(self, command: list[str], label: str) -> None:
        self.label = label
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the peer; close() closes it
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for text in self.process.stdout:
            self.lines.put(text.rstrip("\n"))
        self.lines.put(None)

    def expect(self, word: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                text = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise PeerFailed(
                    f"{self.label}: no {word!r} within {timeout:.0f}s{self.stderr_tail()}"
                ) from None
            if text is None:
                self.process.wait(5)
                raise PeerFailed(
                    f"{self.label} exited ({self.process.returncode}) before {word!r}{self.stderr_tail()}"
                )
            if text == word or text.startswith(word + " "):
                return text[len(word) :].strip()

    def stderr_tail(self) -> str:
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines()
        return (": " + " | ".join(lines[-3:])) if lines else ""

    def tell(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def peer_command(system: str, role: str, url: str, broker: str, options: dict[str, float]) -> list[str]:
    flags = [f"--{k}={v:g}" if k != "n" else f"-n={v:g}" for k, v in options.items()]
    topic = f"ev{uuid.uuid4().hex[:10]}"
    if system == "moleculer":
        node = shutil.which("node") or "node"
        return [node, str(MOLECULER / "peer.js"), role, "--url", url, "--topic", topic, *_split(flags)]
    command = [
        sys.executable,
        str(PEERS / "py_peer.py"),
        system,
        role,
        "--url",
        url,
        "--topic",
        topic,
        *flags,
    ]
    if system.startswith("archipel") and broker != "rumqttd":
        command.append("--durable")  # the supervisor's choice: durable sessions except on rumqttd
    command.append(f"--loop={LOOP[0]}")
    return command


def _split(flags: list[str]) -> list[str]:
    out: list[str] = []
    for flag in flags:
        key, _, value = flag.partition("=")
        out += [key, value]
    return out


def run_pair(system: str, broker: str, url: str, n: int, rate: float, args: argparse.Namespace) -> Run:
    feedback = free_port(socket.SOCK_DGRAM)
    options = {"n": n, "warmup": args.warmup, "window": args.window, "rate": rate, "feedback": feedback}
    topic_command = peer_command(system, "consume", url, broker, options)
    topic = topic_command[topic_command.index("--topic") + 1]
    publish_command = peer_command(system, "publish", url, broker, options)
    publish_command[publish_command.index("--topic") + 1] = topic
    consumer = Peer(topic_command, f"{system} consumer")
    publisher: Peer | None = None
    try:
        consumer.expect("ready", args.timeout)
        publisher = Peer(publish_command, f"{system} publisher")
        publisher.expect("ready", args.timeout)
        publisher.tell("go")
        publisher.expect("warmed", args.timeout)
        pids = publisher.process.pid, consumer.process.pid
        before = [cpu_seconds(pid) for pid in pids]
        publisher.tell("go")
        report = json.loads(consumer.expect("done", args.timeout))
        after = [cpu_seconds(pid) for pid in pids]
        rss = [peak_rss_mb(pid) for pid in pids]
        sent = json.loads(publisher.expect("sent", args.timeout))
    finally:
        consumer.close()
        if publisher is not None:
            publisher.close()
    return Run(
        throughput=n / max(report["last"] - sent["start"], 1e-9),
        latencies=report["latencies_ms"],
        cpu_publisher=after[0] - before[0],
        cpu_consumer=after[1] - before[1],
        rss_publisher_mb=rss[0],
        rss_consumer_mb=rss[1],
        errors=int(sent["errors"]),
        duplicates=int(report["duplicates"]),
    )


# -- brokers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def broker_url(name: str) -> Iterator[str]:
    """The URL of broker ``name`` for the duration of the block (raises when it cannot run)."""
    if name == "mosquitto":
        if not _listening(1883):
            raise RuntimeError("no broker listening on 127.0.0.1:1883")
        yield "mqtt://127.0.0.1:1883"
    elif name == "rumqttd":
        from archipel._deploy.broker import RumqttdBroker

        with RumqttdBroker() as rumqttd:
            yield rumqttd.url
    else:
        yield from _embedded()


def _embedded() -> Iterator[str]:
    from archipel.testing.plugin import embedded_mosquitto  # the production settings, as tests use

    with tempfile.TemporaryDirectory(prefix="archipel-bench-broker-") as folder:
        yield from embedded_mosquitto(Path(folder))


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- what is installed ----------------------------------------------------------------------------


def system_unavailable(system: str, npm_timeout: float) -> str | None:
    """Why ``system`` cannot run here (the exact error), or None."""
    if system == "moleculer":
        if shutil.which("node") is None:
            return "node is not installed"
        if not (MOLECULER / "node_modules" / "moleculer").is_dir():
            npm = shutil.which("npm")
            if npm is None:
                return "npm is not installed"
            try:
                result = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund"],
                    cwd=MOLECULER,
                    capture_output=True,
                    text=True,
                    timeout=npm_timeout,
                )
            except subprocess.TimeoutExpired:
                return f"npm ci did not finish within {npm_timeout:.0f}s"
            if result.returncode != 0:
                return f"npm ci failed ({result.returncode}): {result.stderr.strip()[-500:]}"
        return None
    module = {
        "archipel": "archipel._events.mqtt",
        "archipel-outbox": "archipel._events.mqtt",
        "faststream": "faststream.mqtt",
    }.get(system, system)
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    if result.returncode != 0:
        return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"import {module} failed"
    return None


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for package in ("archipel", "zmqtt", "gmqtt", "faststream", "msgspec", "iotcore"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    for package in ("moleculer", "mqtt"):
        manifest = MOLECULER / "node_modules" / package / "package.json"
        if manifest.is_file():
            found[f"npm:{package}"] = json.loads(manifest.read_text())["version"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    from archipel._deploy.mosquitto import find_mosquitto

    binary = find_mosquitto()
    if binary:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            text = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5).stdout
            found["mosquitto"] = text.splitlines()[0].split("version")[-1].strip() if text else "?"
    return found


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count() or 0,
        "model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# -- one row ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def measure(row: Row, url: str, args: argparse.Namespace) -> None:
    try:
        closed = run_pair(row.system, row.broker, url, args.n, 0.0, args)
        row.throughput = round(closed.throughput, 1)
        cpu = closed.cpu_publisher + closed.cpu_consumer
        row.cpu_s_per_1000 = round(cpu / args.n * 1000, 4)
        row.rss_mb = round(max(closed.rss_publisher_mb, closed.rss_consumer_mb), 1)
        row.errors = closed.errors
        rate = closed.throughput / 2
        row.extra.update(
            {
                "cpu_s_per_1000_publisher": round(closed.cpu_publisher / args.n * 1000, 4),
                "cpu_s_per_1000_consumer": round(closed.cpu_consumer / args.n * 1000, 4),
                "rss_mb_publisher": round(closed.rss_publisher_mb, 1),
                "rss_mb_consumer": round(closed.rss_consumer_mb, 1),
                "duplicates": closed.duplicates,
                "latency_rate_per_s": round(rate, 1),
                "closed_loop_p50_ms": round(statistics.median(closed.latencies), 3),
            }
        )
        opened = run_pair(row.system, row.broker, url, args.latency_n, rate, args)
        row.samples = [round(v, 3) for v in opened.latencies]
        row.p50_ms = round(percentile(opened.latencies, 50), 3)
        row.p99_ms = round(percentile(opened.latencies, 99), 3)
        row.errors += opened.errors
        row.extra["duplicates"] += opened.duplicates
        row.extra["open_loop_achieved_per_s"] = round(opened.throughput, 1)
    except (PeerFailed, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        row.failure = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PeerFailed) else str(exc)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def print_table(rows: list[Row], brokers: list[str]) -> None:
    print(
        f"{'system @ broker':<26}{'msg/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU s/1k':>10}{'RSS MB':>8}  errors"
    )
    for row in rows:
        if row.failure:
            print(f"{row.name:<26}  FAILED: {row.failure[:200]}")
            continue
        cells = [
            f"{row.throughput:>10,.0f}" if row.throughput is not None else f"{'-':>10}",
            f"{row.p50_ms:>9.2f}" if row.p50_ms is not None else f"{'-':>9}",
            f"{row.p99_ms:>9.2f}" if row.p99_ms is not None else f"{'-':>9}",
            f"{row.cpu_s_per_1000:>10.3f}" if row.cpu_s_per_1000 is not None else f"{'-':>10}",
            f"{row.rss_mb:>8.0f}" if row.rss_mb is not None else f"{'-':>8}",
        ]
        print(f"{row.name:<26}{''.join(cells)}  {row.errors}")
    print()
    by = {(r.system, r.broker): r for r in rows if not r.failure}
    for broker in brokers:
        archipel = by.get(("archipel", broker))
        raws = [
            by[(s, broker)] for s in RAW if (s, broker) in by and by[(s, broker)].cpu_s_per_1000 is not None
        ]
        fastest = min(raws, key=lambda r: r.cpu_s_per_1000 or 0.0) if raws else None
        faststream = by.get(("faststream", broker))
        cpu = ratio(
            archipel.cpu_s_per_1000 if archipel else None, fastest.cpu_s_per_1000 if fastest else None
        )
        against = fastest.system if fastest else "none"
        tput = ratio(archipel.throughput if archipel else None, faststream.throughput if faststream else None)
        print(f"[{broker}] archipel CPU per message vs fastest raw client ({against}): {cpu} (target <= 2x)")
        print(f"[{broker}] archipel throughput vs faststream: {tput} (target >= 2x)")
        outbox = by.get(("archipel-outbox", broker))
        if outbox and archipel:
            cost = ratio(outbox.cpu_s_per_1000, archipel.cpu_s_per_1000)
            print(f"[{broker}] archipel with outbox and inbox vs without, CPU per message: {cost}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, embedded broker only")
    parser.add_argument("-n", type=int, default=20_000, help="events of the throughput run (default 20000)")
    parser.add_argument(
        "--latency-n", type=int, default=10_000, help="events of the latency run (default 10000)"
    )
    parser.add_argument("--warmup", type=int, default=1000, help="events before each measured run")
    parser.add_argument("--window", type=int, default=100, help="closed loop: most events unhandled at once")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--brokers", default=",".join(BROKERS))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for any one step of a run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "events.json")
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="every Python peer's event loop"
    )
    args = parser.parse_args()
    LOOP[0] = args.loop
    if args.quick:
        args.n, args.latency_n, args.warmup, args.timeout = 300, 200, 50, 20.0
        if "--brokers" not in sys.argv:
            args.brokers = "embedded"
    systems = [s for s in args.systems.split(",") if s]
    brokers = [b for b in args.brokers.split(",") if b]
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")

    npm_timeout = 30.0 if args.quick else 300.0
    unavailable = {system: system_unavailable(system, npm_timeout) for system in systems}
    rows: list[Row] = []
    for broker in brokers:
        try:
            with broker_url(broker) as url:
                for system in systems:
                    row = Row(f"{system} @ {broker}", system, broker)
                    rows.append(row)
                    row.failure = unavailable[system]
                    if row.failure is None:
                        measure(row, url, args)
                    print(f"  {row.name}: {'failed' if row.failure else 'done'}", file=sys.stderr, flush=True)
        except (RuntimeError, OSError, ImportError) as exc:
            for system in systems:
                if not any(r.system == system and r.broker == broker for r in rows):
                    rows.append(
                        Row(f"{system} @ {broker}", system, broker, failure=f"broker {broker}: {exc}")
                    )

    result = {
        "scenario": "events",
        "started": started,
        "machine": machine(),
        "versions": versions(),
        "parameters": {
            "loop": LOOP[0],
            "n": args.n,
            "latency_n": args.latency_n,
            "warmup": args.warmup,
            "window": args.window,
            "qos": 1,
            "payload_bytes": 200,
            "brokers": brokers,
            "quick": args.quick,
            "latency_rate": "half of each system's measured throughput on that broker",
        },
        "rows": [
            {
                "name": r.name,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "throughput": r.throughput,
                "cpu_s_per_1000": r.cpu_s_per_1000,
                "rss_mb": r.rss_mb,
                "startup_s": None,
                "errors": r.errors,
                "failure": r.failure,
                "extra": {"system": r.system, "broker": r.broker, **r.extra},
            }
            for r in rows
        ],
        "samples": {r.name: r.samples for r in rows if r.samples},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"events at QoS 1, {args.n} events closed loop (window {args.window}), latency at half rate")
    print_table(rows, brokers)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
