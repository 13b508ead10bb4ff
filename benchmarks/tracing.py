"""What tracing costs: RPC throughput and events per second with tracing on (every span into the
in-memory ring, nothing exported) and off (``OTEL_SDK_DISABLED=true``), side by side in one run.

- RPC: remote_hop.py's archipel row (a real ``python -m archipel.worker`` serving
  ``currency.convert``, a caller process with the default interceptor chain, 16 concurrent
  closed-loop callers); with tracing on, the caller has its CLIENT spans and the worker its
  SERVER spans, as between two workers;
- events: events.py's archipel pair (a service's ``emit`` in one process, an ``@on`` handler in
  another, through Mosquitto on 127.0.0.1:1883 or a private one); on: a PRODUCER and a CONSUMER
  span per event.

Off and on alternate for ``--rounds`` rounds, each round in the other order; the table shows
each one's median.

- RPC, paired: the runs above are separate processes, minutes apart, so their CPU per call moves
  with the machine's state (by 10% and more on a shared machine) as much as with tracing. The
  paired measure keeps both workers (off and on) running and one caller process with a client
  for each, and alternates blocks of ``--per-block`` calls (16 concurrent) between them,
  ``--blocks`` times: each block's CPU per call, the worker's (its main thread, from
  ``/proc/PID/schedstat``) and the caller's (``time.thread_time``), and the medians of the blocks.

    python benchmarks/tracing.py [--rounds 2] [--per-caller 500] [-n 20000] [--blocks 12]
                                 [--per-block 1600] [--only rpc|events|paired] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import events  # noqa: E402  (its archipel publisher and consumer, and their measurement)
import remote_call  # noqa: E402
import remote_hop  # noqa: E402  (its worker, caller and measurement)

OFF, ON = "off", "on"


# --- The caller process (``tracing.py --call MODE --url URL``) ----------------------------------


async def traced_client(url: str, env: dict[str, str] | None = None) -> remote_call.Client:
    """remote_call's archipel client with the span interceptors a worker adds (none when off);
    tracing as ``env`` (default: this process's environment) asks."""
    from archipel._interceptors import default_interceptors
    from archipel._rpc.client import HttpTransport
    from archipel._security.keyring import OPERATOR, keyring_for
    from archipel._security.tokens import Signer
    from archipel._telemetry.tracing import tracing_from_env, with_spans

    app = remote_call.app
    keyring = keyring_for(app, app.name, OPERATOR, (), [remote_call.SECRET.encode()], operator=True)
    transport = HttpTransport({"currency": [url]}, signer=Signer(keyring))
    await transport.start()
    env = dict(os.environ) if env is None else env
    tracing = tracing_from_env(env, deployment=app.name, process="caller", instance="caller-0")
    chain = with_spans(default_interceptors(app, endpoints=transport.endpoints), tracing, "mqtt")
    currency: Any = transport.proxy(app.specs["currency"], caller=OPERATOR, interceptors=chain)

    async def call() -> Any:
        return await currency.convert(remote_call.AMOUNT, "USD")

    return remote_call.Client(call, transport.close)


def caller(args: argparse.Namespace) -> None:
    # remote_hop's caller loop (sequential, then concurrent on "go"), with this client.
    remote_call.archipel_client = traced_client  # type: ignore[assignment]
    args.call = "archipel"
    asyncio.run(remote_hop.python_caller(args))


def worker_cpu_ns(pid: int) -> int:
    """CPU time of ``pid``'s main thread (the event loop's), in ns."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


async def paired_caller(args: argparse.Namespace) -> None:
    """Blocks of calls alternating between the off and the on worker; one JSON line of results."""
    urls, pids = (
        dict(zip((OFF, ON), args.paired[:2], strict=True)),
        dict(zip((OFF, ON), args.paired[2:], strict=True)),
    )
    envs = {OFF: {"OTEL_SDK_DISABLED": "true"}, ON: {}}  # on: the ring only, as the other measures
    clients = {mode: await traced_client(urls[mode], envs[mode]) for mode in (OFF, ON)}
    per = max(1, args.per_block // args.concurrency)

    async def block(mode: str) -> None:
        async def one() -> None:
            for _ in range(per):
                await clients[mode].call()

        await asyncio.gather(*(one() for _ in range(args.concurrency)))

    blocks: dict[str, dict[str, list[float]]] = {mode: {"worker": [], "caller": []} for mode in (OFF, ON)}
    try:
        for mode in (OFF, ON):
            await block(mode)  # warm-up
        for index in range(args.blocks):
            for mode in order(index):
                worker, caller = worker_cpu_ns(int(pids[mode])), time.thread_time_ns()
                await block(mode)
                calls = per * args.concurrency
                blocks[mode]["worker"].append((worker_cpu_ns(int(pids[mode])) - worker) / calls / 1e6)
                blocks[mode]["caller"].append((time.thread_time_ns() - caller) / calls / 1e6)
    finally:
        for client in clients.values():
            await client.close()
    print(json.dumps(blocks), flush=True)


def paired_rows(args: argparse.Namespace, logs: Path) -> dict[str, list[dict[str, Any]]]:
    """Both workers up at once, the paired caller between them: each mode's blocks as rows."""
    workers: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    try:
        for mode in (OFF, ON):
            peer = remote_hop.archipel_peer(args)
            env = {**os.environ, **peer.env}
            env.pop("OTEL_SDK_DISABLED", None)
            if mode == OFF:
                env["OTEL_SDK_DISABLED"] = "true"
            log = logs / f"paired_{mode}.server.log"
            with log.open("wb") as out:
                workers[mode] = subprocess.Popen(peer.server, env=env, stdout=out, stderr=subprocess.STDOUT)
            remote_hop.wait_for_port(peer.port or 0, workers[mode], log)
            urls[mode] = f"http://{remote_hop.HOST}:{peer.port}"
        command = [
            sys.executable, __file__, "--paired", urls[OFF], urls[ON], str(workers[OFF].pid),
            str(workers[ON].pid), "--blocks", str(args.blocks), "--per-block", str(args.per_block),
            "--concurrency", str(args.concurrency),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return {mode: [{"failure": f"paired caller: {done.stderr[-2000:]}"}] for mode in (OFF, ON)}
        blocks = json.loads(done.stdout.strip().splitlines()[-1])
    except remote_hop.PeerFailure as failure:
        return {mode: [{"failure": str(failure)}] for mode in (OFF, ON)}
    finally:
        for process in workers.values():
            process.terminate()
            process.wait(timeout=10)
    return {
        mode: [
            {"worker_cpu_ms": worker, "caller_cpu_ms": caller}
            for worker, caller in zip(blocks[mode]["worker"], blocks[mode]["caller"], strict=True)
        ]
        for mode in (OFF, ON)
    }


# --- The run -----------------------------------------------------------------------------------


def rpc_row(mode: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    def make() -> remote_hop.Peer:
        peer = remote_hop.archipel_peer(args)
        url = f"http://{remote_hop.HOST}:{peer.port}"
        peer.caller = [sys.executable, __file__, "--call", mode, "--url", url, *remote_hop.sizes(args)]
        if mode == OFF:
            peer.env["OTEL_SDK_DISABLED"] = "true"  # the worker and the caller (measure passes env to both)
        return peer

    return remote_hop.measure(f"rpc {mode}", make, args, logs)


def events_row(mode: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    saved = os.environ.get("OTEL_SDK_DISABLED")
    os.environ["OTEL_SDK_DISABLED"] = "true" if mode == OFF else "false"  # the peers inherit it
    try:
        run = events.run_pair("archipel", "mosquitto", url, args.n, 0.0, args)
    except events.PeerFailed as failure:
        return {"failure": str(failure)}
    finally:
        if saved is None:
            os.environ.pop("OTEL_SDK_DISABLED", None)
        else:
            os.environ["OTEL_SDK_DISABLED"] = saved
    return {
        "throughput": run.throughput,
        "cpu_s_per_1000": (run.cpu_publisher + run.cpu_consumer) / args.n * 1000,
        "publisher_cpu_s_per_1000": run.cpu_publisher / args.n * 1000,
        "consumer_cpu_s_per_1000": run.cpu_consumer / args.n * 1000,
        "p50_ms": statistics.median(run.latencies) if run.latencies else None,
        "errors": run.errors,
    }


def order(round: int) -> tuple[str, str]:
    """Off first, then on first: what runs second (a warmer machine, a busier broker) is not always one."""
    return (OFF, ON) if round % 2 == 0 else (ON, OFF)


def median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    # A key of remote_hop's per-process split ("server_cpu_s_per_1000", ...) is under "extra".
    rows = [{**row.get("extra", {}), **row} for row in rows]
    values = [row[key] for row in rows if row.get(key) is not None and not row.get("failure")]
    return statistics.median(values) if values else None


def table(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    lines = ["| measure | tracing off | tracing on | on / off |", "| --- | ---: | ---: | ---: |"]
    measures = [
        ("rpc", "throughput", "RPC calls/s, 16 callers", "{:,.0f}"),
        ("rpc", "cpu_s_per_1000", "RPC CPU ms per call (worker + caller)", "{:.3f}"),
        ("rpc", "server_cpu_s_per_1000", "of which the worker (SERVER spans)", "{:.3f}"),
        ("rpc", "client_cpu_s_per_1000", "of which the caller (CLIENT spans)", "{:.3f}"),
        ("rpc", "p50_ms", "RPC p50 ms, one caller", "{:.3f}"),
        ("paired", "worker_cpu_ms", "paired RPC CPU ms per call, the worker", "{:.4f}"),
        ("paired", "caller_cpu_ms", "paired RPC CPU ms per call, the caller", "{:.4f}"),
        ("events", "throughput", "events/s, closed loop", "{:,.0f}"),
        ("events", "cpu_s_per_1000", "event CPU ms per event (both processes)", "{:.3f}"),
        ("events", "publisher_cpu_s_per_1000", "of which the publisher (PRODUCER spans)", "{:.3f}"),
        ("events", "consumer_cpu_s_per_1000", "of which the consumer (CONSUMER spans)", "{:.3f}"),
    ]
    for part, key, label, shape in measures:
        off, on = median_of(results[part][OFF], key), median_of(results[part][ON], key)
        if off is None and on is None:
            continue
        ratio = f"{on / off:.3f}" if off and on is not None else "n/a"
        lines.append(f"| {label} | {_shown(off, shape)} | {_shown(on, shape)} | {ratio} |")
    failures = [row.get("failure") for part in results.values() for rows in part.values() for row in rows]
    lines += [f"\nfailed: {failure}" for failure in failures if failure]
    return "\n".join(lines)


def _shown(value: float | None, shape: str) -> str:
    return "n/a" if value is None else shape.format(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs of each measurement")
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls (latency)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent closed-loop callers")
    parser.add_argument("--per-caller", type=int, default=500, help="calls by each concurrent caller")
    parser.add_argument("-n", type=int, default=20_000, help="events of each closed-loop run")
    parser.add_argument("--only", choices=["rpc", "events", "paired"], help="measure only this part")
    parser.add_argument("--blocks", type=int, default=12, help="paired RPC: blocks of each mode")
    parser.add_argument("--per-block", type=int, default=1600, help="paired RPC: calls in a block")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, one round")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "tracing.json")
    parser.add_argument("--call", choices=[OFF, ON], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--paired", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.call:
        caller(args)
        return
    if args.paired:
        asyncio.run(paired_caller(args))
        return
    if args.quick:
        args.rounds, args.calls, args.per_caller, args.n = 1, 50, 20, 500
        args.blocks, args.per_block = 2, 64
    if args.warmup is None:
        args.warmup = min(500, args.calls)
    args.window, args.timeout = 100, 120.0  # events.run_pair's closed loop
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        "rpc": {OFF: [], ON: []},
        "events": {OFF: [], ON: []},
        "paired": {OFF: [], ON: []},
    }
    with tempfile.TemporaryDirectory(prefix="archipel-tracing-bench-") as folder:
        for round in range(args.rounds if args.only in (None, "rpc") else 0):
            for mode in order(round):
                results["rpc"][mode].append(rpc_row(mode, args, Path(folder)))
        if args.only in (None, "paired"):
            results["paired"] = paired_rows(args, Path(folder))
        if args.only in (None, "events"):
            broker = "mosquitto" if events._listening(1883) else "embedded"
            with events.broker_url(broker) as url:
                for round in range(args.rounds):
                    for mode in order(round):
                        results["events"][mode].append(events_row(mode, url, args))
    for part in results.values():
        for rows in part.values():
            for row in rows:
                row.pop("samples", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
