"""One remote hop, archipel next to its peers: the same call served and called by each stack.

The call is ``convert(amount: Money{currency, units, nanos}, to: str) -> Money``. Every server
runs in its own process, and so does every caller (one JSON-lines protocol for all of them), so
the CPU and peak RSS of both sides are read the same way:

- archipel: a real ``python -m archipel.worker`` configured by ``worker_environment(WorkerSpec(...))``,
  called through ``HttpTransport.proxy(spec)`` with the default interceptor chain (remote_call.py's);
- raw asgi+aiohttp: the ceiling, a bare ASGI app + msgspec under the same uvicorn settings;
- fastapi+httpx: a hand-written FastAPI endpoint under uvicorn, called with ``httpx.AsyncClient``;
- nameko amqp: Nameko RPC over RabbitMQ (its own virtual environment, benchmarks/peers/nameko);
- moleculer tcp / moleculer mqtt: a Node.js service and caller (benchmarks/peers/moleculer) with
  Moleculer's TCP transporter, then its MQTT transporter on the Mosquitto broker.

Measured: sequential latency (p50, p99 of N calls, one caller), throughput of C closed-loop
callers, CPU seconds per 1,000 calls of server + caller during the throughput run
(/proc/PID/stat for servers, the caller's own CPU), peak RSS. A peer that cannot run gets its
exact error as its row's failure. Results go to a JSON file (``--out``).

    python benchmarks/remote_hop.py [--calls 2000] [--concurrency 16] [--per-caller 500] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import queue
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import remote_call  # noqa: E402  (its servers and clients: the same as the one-hop benchmark)

HOST = "127.0.0.1"
PEERS = HERE / "peers"
MOLECULER = PEERS / "moleculer"
NAMEKO = PEERS / "nameko"
AMQP_URL = os.environ.get("REMOTE_HOP_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
MQTT_URL = os.environ.get("REMOTE_HOP_MQTT", "mqtt://127.0.0.1:1883")
ARCHIPEL, RAW, FASTAPI = "archipel", "raw asgi+aiohttp", "fastapi+httpx"
NAMEKO_ROW, MOLECULER_TCP, MOLECULER_MQTT = "nameko amqp", "moleculer tcp", "moleculer mqtt"
PYTHON_PACKAGES = ["archipel", "uvicorn", "aiohttp", "msgspec", "fastapi", "pydantic", "httpx"]


class PeerFailure(Exception):
    """A peer that cannot run: its message is the row's failure."""


# --- The Python callers (``remote_hop.py --call KIND --url URL``) ---------------------------------


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def python_caller(args: argparse.Namespace) -> None:
    factories = {
        "archipel": remote_call.archipel_client,
        "raw": remote_call.aiohttp_client,
        "fastapi": remote_call.httpx_client,
    }
    client = await factories[args.call](args.url)
    state: dict[str, Any] = {"errors": 0, "first_error": None}

    async def call() -> None:
        try:
            await client.call()
        except Exception as error:  # counted: a failing call is a result, not a crash
            state["errors"] += 1
            if state["first_error"] is None:
                state["first_error"] = repr(error)

    try:
        for _ in range(args.warmup):
            await call()
        state["errors"] = 0
        samples = []
        for _ in range(args.calls):
            started = time.perf_counter_ns()
            await call()
            samples.append((time.perf_counter_ns() - started) / 1e6)
        _emit({"event": "sequential", "samples_ms": samples, **state})
        await asyncio.to_thread(sys.stdin.readline)  # the benchmark reads the server's CPU, then: go
        state["errors"] = 0

        async def caller() -> None:
            for _ in range(args.per_caller):
                await call()

        cpu, started_s = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(args.concurrency)))
        elapsed, cpu_s = time.perf_counter() - started_s, time.process_time() - cpu
        _emit(
            {
                "event": "concurrent",
                "calls": args.concurrency * args.per_caller,
                "elapsed_s": elapsed,
                "cpu_s": cpu_s,
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                **state,
            }
        )
    finally:
        await client.close()


# --- Processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def peak_rss_mb(pid: int) -> float | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError as error:
            if process.poll() is not None:
                raise PeerFailure(f"server exited with {process.returncode}: {tail(log)}") from None
            if time.monotonic() > deadline:
                raise PeerFailure(f"server not listening on {port} after {seconds:.0f} s: {error}") from None
            time.sleep(0.1)


def tail(log: Path, lines: int = 8) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def reachable(url: str) -> None:
    host, port = url.split("://", 1)[1].split("@")[-1].rstrip("/").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return
    except OSError as error:
        raise PeerFailure(f"broker {host}:{port} unreachable: {error}") from None


@dataclass
class Peer:
    """How to start one row's server and caller."""

    server: list[str]
    caller: list[str]
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None  # wait until the server listens there before starting the caller
    extra: dict[str, Any] = field(default_factory=dict)


def python_caller_command(kind: str, url: str, args: argparse.Namespace) -> list[str]:
    return [sys.executable, __file__, "--call", kind, "--url", url, *sizes(args)]


def sizes(args: argparse.Namespace) -> list[str]:
    return [
        "--calls", str(args.calls), "--warmup", str(args.warmup),
        "--concurrency", str(args.concurrency), "--per-caller", str(args.per_caller),
    ]  # fmt: skip


def archipel_peer(args: argparse.Namespace) -> Peer:
    from archipel._deploy.environment import WorkerSpec, worker_environment

    port = free_port()
    spec = WorkerSpec(
        app=f"{Path(remote_call.__file__).resolve()}:app",
        name="currency",
        services=["currency"],
        host=HOST,
        port=port,
        authenticate=True,
    )
    env = {**worker_environment(spec), "ARCHIPEL_SECRET": remote_call.SECRET, "ARCHIPEL_LOG_LEVEL": "WARNING"}
    url = f"http://{HOST}:{port}"
    return Peer(
        [sys.executable, "-m", "archipel.worker"],
        python_caller_command("archipel", url, args),
        env=env,
        port=port,
    )


def uvicorn_peer(kind: str, args: argparse.Namespace) -> Peer:
    if kind == "fastapi":
        for module in ("fastapi", "httpx"):
            try:
                __import__(module)
            except ImportError as error:
                raise PeerFailure(f"{error} (pip install -e .[bench])") from None
    port = free_port()
    server = [sys.executable, remote_call.__file__, "--serve", kind, "--port", str(port)]
    return Peer(server, python_caller_command(kind, f"http://{HOST}:{port}", args), port=port)


def run_quietly(command: list[str], cwd: Path, timeout: float) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise PeerFailure(f"{' '.join(command)}: {error}") from None
    if done.returncode:
        output = (done.stdout + done.stderr).strip().splitlines()
        shown = output if len(output) <= 8 else [*output[:4], "...", *output[-4:]]
        raise PeerFailure(f"{' '.join(command)} exited with {done.returncode}: {' | '.join(shown)}")


def nameko_python(timeout: float) -> Path:
    """Nameko has a virtual environment of its own: it pulls in eventlet and a pytest plugin."""
    python = NAMEKO / ".venv" / "bin" / "python"
    marker = NAMEKO / ".venv" / "requirements.installed"
    requirements = (NAMEKO / "requirements.txt").read_text()
    if not (python.exists() and marker.exists() and marker.read_text() == requirements):
        run_quietly([sys.executable, "-m", "venv", "--clear", str(NAMEKO / ".venv")], NAMEKO, 60)
        run_quietly([str(python), "-m", "pip", "install", "-q", "-r", "requirements.txt"], NAMEKO, timeout)
        marker.write_text(requirements)
    return python


def nameko_peer(args: argparse.Namespace) -> Peer:
    reachable(AMQP_URL)
    python = nameko_python(45 if args.quick else 300)  # a smoke run stays short
    server = [str(python), "-m", "nameko", "run", "currency_service", "--broker", AMQP_URL]
    caller = [str(python), "caller.py", "--broker", AMQP_URL, *sizes(args)]
    return Peer(server, caller, cwd=NAMEKO, extra={"max_workers": 10, "serializer": "json"})


def node_modules(timeout: float) -> str:
    node = shutil.which("node")
    if node is None:
        raise PeerFailure("node is not installed (Node.js >= 20 is needed)")
    if not (MOLECULER / "node_modules" / "moleculer").exists():
        npm = shutil.which("npm")
        if npm is None:
            raise PeerFailure("npm is not installed and benchmarks/peers/moleculer/node_modules is missing")
        run_quietly([npm, "ci", "--no-audit", "--no-fund"], MOLECULER, timeout)
    return node


def moleculer_peer(transport: str, args: argparse.Namespace) -> Peer:
    node = node_modules(45 if args.quick else 300)
    if transport == "mqtt":
        reachable(MQTT_URL)
    namespace = f"hop-{uuid.uuid4().hex[:8]}"  # alone on a shared broker
    server_port, caller_port = free_port(), free_port()
    common = ["--transport", transport, "--namespace", namespace, "--mqtt", MQTT_URL]
    server = [node, "service.js", *common, "--port", str(server_port)]
    server += ["--peers", f"{HOST}:{caller_port}/currency-caller"]
    caller = [node, "caller.js", *common, "--port", str(caller_port)]
    caller += ["--peers", f"{HOST}:{server_port}/currency-server", *sizes(args)]
    return Peer(server, caller, cwd=MOLECULER, extra={"serializer": "JSON", "transporter": transport.upper()})


# --- One row -----------------------------------------------------------------------------------


def read_lines(stream: Any, into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def next_event(
    lines: queue.Queue[str | None], caller: subprocess.Popen[str], log: Path, wait: float
) -> dict[str, Any]:
    deadline = time.monotonic() + wait
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise PeerFailure(f"no answer from the caller after {wait:.0f} s: {tail(log)}") from None
        if line is None:
            caller.wait(timeout=10)
            raise PeerFailure(f"caller exited with {caller.returncode}: {tail(log)}")
        if not line.startswith('{"event"'):
            continue  # a library's own output
        record: dict[str, Any] = json.loads(line)
        if record["event"] == "failed":
            raise PeerFailure(f"caller: {record['error']}")
        return record


def measure(name: str, make: Callable[[], Peer], args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name, "p50_ms": None, "p99_ms": None, "throughput": None, "cpu_s_per_1000": None,
        "rss_mb": None, "startup_s": None, "errors": 0, "failure": None, "extra": {}, "samples": [],
    }  # fmt: skip
    server: subprocess.Popen[bytes] | None = None
    caller: subprocess.Popen[str] | None = None
    slug = name.replace(" ", "_").replace("+", "_")
    server_log, caller_log = logs / f"{slug}.server.log", logs / f"{slug}.caller.log"
    try:
        peer = make()
        row["extra"].update(peer.extra)
        env = {**os.environ, **peer.env}
        with server_log.open("wb") as out:
            server = subprocess.Popen(
                peer.server, cwd=peer.cwd, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        if peer.port is not None:
            wait_for_port(peer.port, server, server_log)
        with caller_log.open("wb") as err:
            caller = subprocess.Popen(
                peer.caller, cwd=peer.cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=err, text=True,
            )  # fmt: skip
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=read_lines, args=(caller.stdout, lines), daemon=True).start()
        wait = 60 + args.calls * 0.05 + args.concurrency * args.per_caller * 0.05
        sequential = next_event(lines, caller, caller_log, wait)
        if server.poll() is not None:
            raise PeerFailure(f"server exited with {server.returncode}: {tail(server_log)}")
        server_cpu = cpu_seconds(server.pid)
        assert caller.stdin is not None
        caller.stdin.write("go\n")
        caller.stdin.flush()
        concurrent = next_event(lines, caller, caller_log, wait)
        server_cpu = cpu_seconds(server.pid) - server_cpu
        server_rss = peak_rss_mb(server.pid)
        samples = sorted(sequential["samples_ms"])
        calls = concurrent["calls"]
        errors = sequential["errors"] + concurrent["errors"]
        row.update(
            p50_ms=statistics.median(samples) if samples else None,
            p99_ms=samples[max(0, int(len(samples) * 0.99) - 1)] if samples else None,
            throughput=(calls - concurrent["errors"]) / concurrent["elapsed_s"],
            cpu_s_per_1000=(server_cpu + concurrent["cpu_s"]) / calls * 1000,
            rss_mb=(server_rss or 0) + concurrent["rss_mb"],
            errors=errors,
            samples=sequential["samples_ms"],
        )
        row["extra"].update(
            server_cpu_s_per_1000=server_cpu / calls * 1000,
            client_cpu_s_per_1000=concurrent["cpu_s"] / calls * 1000,
            server_rss_mb=server_rss,
            client_rss_mb=concurrent["rss_mb"],
            first_error=sequential["first_error"] or concurrent["first_error"],
        )
    except PeerFailure as failure:
        row["failure"] = str(failure)
    except Exception as error:  # a bug of this script or of a peer: reported, not hidden
        row["failure"] = f"{type(error).__name__}: {error}"
    finally:
        for process in (caller, server):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    return row


# --- The run -----------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    found: dict[str, str] = {"python": platform.python_version()}
    for package in PYTHON_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    packages = NAMEKO / ".venv" / "lib"
    for metadata in sorted(packages.glob("python*/site-packages/*.dist-info/METADATA")):
        name = metadata.parent.name.split("-")[0].lower()
        if name in ("nameko", "eventlet", "kombu", "amqp"):
            found[f"{name} (nameko venv)"] = metadata.parent.name.split("-")[1].removesuffix(".dist")
    for package in ("moleculer", "mqtt"):
        manifest = MOLECULER / "node_modules" / package / "package.json"
        if manifest.exists():
            found[f"{package} (npm)"] = json.loads(manifest.read_text())["version"]
    node = shutil.which("node")
    if node:
        found["node"] = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    return found


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count() or 0,
        "model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    peers: dict[str, Callable[[], Peer]] = {
        ARCHIPEL: lambda: archipel_peer(args),
        RAW: lambda: uvicorn_peer("raw", args),
        FASTAPI: lambda: uvicorn_peer("fastapi", args),
        NAMEKO_ROW: lambda: nameko_peer(args),
        MOLECULER_TCP: lambda: moleculer_peer("tcp", args),
        MOLECULER_MQTT: lambda: moleculer_peer("mqtt", args),
    }
    selected = [name for name in peers if not args.only or name in args.only]
    rows = []
    with tempfile.TemporaryDirectory(prefix="remote-hop-") as logs:
        for name in selected:
            rows.append(measure(name, peers[name], args, Path(logs)))
    samples = {row["name"]: row.pop("samples") for row in rows}
    return {
        "scenario": "remote_hop",
        "started": started,
        "machine": machine(),
        "versions": versions(),
        "parameters": {
            "calls": args.calls,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "per_caller": args.per_caller,
            "quick": args.quick,
            "amqp": AMQP_URL.split("@")[-1],
            "mqtt": MQTT_URL,
        },
        "rows": rows,
        "samples": samples,
    }


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratio_line(result: dict[str, Any], base: str, label: str, target: str) -> str:
    rows = {row["name"]: row for row in result["rows"]}
    ours, theirs = rows.get(ARCHIPEL, {}).get("throughput"), rows.get(base, {}).get("throughput")
    if not ours or not theirs:
        return f"archipel / {base} throughput: n/a ({label}; {target})"
    return f"archipel / {base} throughput: {ours / theirs:.2f}x ({label}; {target})"


def report(result: dict[str, Any]) -> None:
    p = result["parameters"]
    print(
        f"remote hop{' (smoke run: --quick, not a measurement)' if p['quick'] else ''}: "
        f"{p['calls']:,} sequential calls, {p['concurrency']} callers x {p['per_caller']:,} calls; "
        f"{result['machine']['cpus']} cores"
    )
    header = f"{'':<18}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>10}{'CPU s/1k':>10}{'srv':>7}{'cli':>7}"
    print(header + f"{'RSS MB':>9}{'errors':>8}")
    failures = []
    for row in result["rows"]:
        extra = row["extra"]
        print(
            f"{row['name']:<18}{fmt(row['p50_ms'], '.3f'):>9}{fmt(row['p99_ms'], '.3f'):>9}"
            f"{fmt(row['throughput'], ',.0f'):>10}{fmt(row['cpu_s_per_1000'], '.3f'):>10}"
            f"{fmt(extra.get('server_cpu_s_per_1000'), '.3f'):>7}"
            f"{fmt(extra.get('client_cpu_s_per_1000'), '.3f'):>7}"
            f"{fmt(row['rss_mb'], '.0f'):>9}{row['errors']:>8}"
        )
        if row["failure"]:
            failures.append(f"  {row['name']}: {row['failure']}")
    if failures:
        print("failed:")
        print("\n".join(failures))
    print("ratios (concurrent throughput):")
    print("  " + ratio_line(result, RAW, "the ceiling", "target >= 0.8x"))
    print("  " + ratio_line(result, FASTAPI, "the hand-written peer", "target >= 3x"))
    print("  " + ratio_line(result, MOLECULER_TCP, "Node.js peer", "no target"))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls (latency)")
    parser.add_argument("--warmup", type=int, default=None, help="calls before measuring (min(500, calls))")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent closed-loop callers")
    parser.add_argument("--per-caller", type=int, default=500, help="calls by each concurrent caller")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, checks that it works")
    parser.add_argument("--only", action="append", help="run only this row (repeatable)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "remote_hop.json")
    parser.add_argument("--call", choices=["archipel", "raw", "fastapi"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.call:
        import uvloop  # every Python caller on the loop the workers run

        uvloop.run(python_caller(args))
        return
    if args.quick:
        args.calls, args.concurrency, args.per_caller = 30, 2, 15
        args.warmup = 5 if args.warmup is None else args.warmup
    if args.warmup is None:
        args.warmup = min(500, args.calls)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    report(result)
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
