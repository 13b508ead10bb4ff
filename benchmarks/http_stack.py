"""The HTTP stack under one remote hop: the same archipel server and caller on each server and loop.

Every row serves the real ``RpcServer`` of one worker (built as ``python -m archipel.worker``
builds it, signed calls checked) and calls it with the real client (``HttpTransport.proxy`` and the
default interceptor chain, benchmarks/remote_call.py's ``archipel_client``); only the HTTP server
and the event loop of both processes change:

- uvicorn h11+limits: archipel's protocol before this benchmark (``_rpc.limits.limited_h11``);
- uvicorn httptools: uvicorn's own httptools protocol, with none of archipel's limits;
- uvicorn httptools+limits: archipel's port of its limits to httptools (``limited_httptools``);
- granian: the Rust server (ASGI interface, one worker process);
- hypercorn: its asyncio worker;
- aiohttp.web: aiohttp's low-level server with a 30-line ASGI adapter.

each with the asyncio loop and with uvloop (in the server and in the caller). Measured as
benchmarks/remote_hop.py measures (its ``measure``): sequential p50/p99, throughput of C callers,
CPU per 1,000 calls of server (with its child processes) + caller, peak RSS; in interleaved
rounds, each metric's best. A stack that cannot run gets its exact error as its row's failure.
The result file has archipel._bench.result's schema.

    python benchmarks/http_stack.py [--calls 2000] [--concurrency 16] [--per-caller 500] [--rounds 3]
                                    [--only "STACK" | "STACK LOOP" ...] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine, MutableMapping
from pathlib import Path
from typing import Any

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import remote_hop  # noqa: E402  (the processes and the measurement)

from archipel._bench.result import Result, Row, new_result, write  # noqa: E402

HOST = "127.0.0.1"
LOOPS = ("asyncio", "uvloop")
STACKS = (
    "uvicorn h11+limits",
    "uvicorn httptools",
    "uvicorn httptools+limits",
    "granian",
    "hypercorn",
    "aiohttp.web",
)
PACKAGES = ("archipel", "uvicorn", "h11", "httptools", "uvloop", "granian", "hypercorn", "aiohttp", "msgspec")


def run_on(loop: str, main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on a new event loop of this kind."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


# --- The server (``http_stack.py --serve STACK --loop LOOP``, configured like a worker) ----------


def rpc_server() -> Any:
    """The worker's ASGI app, from the ``ARCHIPEL_*`` environment, as ``archipel.worker`` builds it."""
    from archipel._deploy.environment import worker_spec
    from archipel._deploy.worker import build_server
    from archipel._loader import load_app

    spec = worker_spec(os.environ)
    return build_server(load_app(spec.app), spec)


def serve(stack: str, loop: str, port: int) -> None:
    server = rpc_server()
    if stack.startswith("uvicorn"):
        import uvicorn

        from archipel._deploy.worker import uvicorn_config
        from archipel._rpc import limits

        config = uvicorn_config(server, HOST, port)  # the worker's settings; then the stack under test
        config.loop = loop
        if stack == "uvicorn h11+limits":
            config.http = limits.limited_h11(10.0, 16 * 1024)
        elif stack == "uvicorn httptools":
            config.http = "httptools"
        else:
            config.http = limits.limited_httptools(10.0, 16 * 1024)
        uvicorn.Server(config).run()
    elif stack == "granian":
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces, Loops

        os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
        Granian(
            "http_stack:rpc_server",
            address=HOST,
            port=port,
            interface=Interfaces.ASGI,
            http=HTTPModes.http1,
            loop=Loops(loop),
            workers=1,
            factory=True,
            log_enabled=False,
        ).serve()
    elif stack == "hypercorn":
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"{HOST}:{port}"]
        config.accesslog = config.errorlog = None
        run_on(loop, hypercorn_serve(server, config))
    elif stack == "aiohttp.web":
        run_on(loop, aiohttp_serve(server, port))
    else:
        raise SystemExit(f"unknown stack {stack!r}: one of {', '.join(STACKS)}")


Message = MutableMapping[str, Any]


async def aiohttp_serve(app: Any, port: int) -> None:
    """An ASGI app on aiohttp's low-level server: one request, one ``scope``; the body is read
    whole (archipel's calls are small), the answer sent once complete."""
    from aiohttp import web

    lifespan: asyncio.Queue[Message] = asyncio.Queue()
    started = asyncio.Event()

    async def lifespan_send(message: Message) -> None:
        if message["type"].startswith("lifespan.startup"):
            started.set()

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    lifespan_task = asyncio.create_task(app(scope, lifespan.get, lifespan_send))
    lifespan.put_nowait({"type": "lifespan.startup"})
    await started.wait()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
            "scheme": "http", "path": request.path, "raw_path": request.raw_path.encode(),
            "query_string": request.query_string.encode(), "root_path": "", "state": {},
            "headers": [(k.lower(), v) for k, v in request.raw_headers],
            "client": request.transport.get_extra_info("peername") if request.transport else None,
            "server": (HOST, port),
        }  # fmt: skip
        answer: dict[str, Any] = {"status": 500, "headers": [], "body": b""}
        received = False

        async def receive() -> Message:
            nonlocal received
            if received:
                return {"type": "http.disconnect"}
            received = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"], answer["headers"] = message["status"], message.get("headers", [])
            else:
                answer["body"] += message.get("body", b"")

        await app(scope, receive, send)
        headers = [(k.decode(), v.decode()) for k, v in answer["headers"]]
        return web.Response(status=answer["status"], body=answer["body"], headers=headers)

    runner = web.ServerRunner(web.Server(handle), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    try:
        await asyncio.Event().wait()  # until terminated
    finally:
        await runner.cleanup()
        lifespan.put_nowait({"type": "lifespan.shutdown"})
        await lifespan_task


# --- One row ------------------------------------------------------------------------------------


def peer(stack: str, loop: str, args: argparse.Namespace) -> remote_hop.Peer:
    worker = remote_hop.archipel_peer(args)  # a worker's environment and port, the archipel caller
    server = [sys.executable, __file__, "--serve", stack, "--loop", loop, "--port", str(worker.port)]
    caller = [*worker.caller, "--loop", loop]
    caller[1] = __file__  # this script's caller: remote_hop's, on the row's loop
    return remote_hop.Peer(server, caller, env=worker.env, port=worker.port, extra={"loop": loop})


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with Path(task, "children").open() as listed:
            found += [int(child) for child in listed.read().split()]
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants: granian serves from a worker process of its own."""
    pids, index = [pid], 0
    while index < len(pids):
        with contextlib.suppress(OSError):  # gone meanwhile
            pids += children(pids[index])
        index += 1
    return pids


def tree_cpu_seconds(pid: int) -> float:
    return sum(remote_hop_cpu_seconds(p) for p in tree(pid))


def tree_peak_rss_mb(pid: int) -> float | None:
    return sum(remote_hop_peak_rss_mb(p) or 0 for p in tree(pid)) or None


remote_hop_cpu_seconds, remote_hop_peak_rss_mb = remote_hop.cpu_seconds, remote_hop.peak_rss_mb


def best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from its rounds: each metric's best (the round least disturbed by other load), the
    samples of the round with the best p50; a failure if any round failed."""
    failed = [r for r in rounds if r["failure"] is not None]
    if failed:
        return failed[0]
    row = min(rounds, key=lambda r: r["p50_ms"])
    row = {**row, "extra": {**row["extra"], "rounds": len(rounds)}}
    for key, pick in (("p99_ms", min), ("throughput", max), ("cpu_s_per_1000", min), ("rss_mb", min)):
        row[key] = pick(r[key] for r in rounds)
    row["errors"] = sum(r["errors"] for r in rounds)
    row["extra"]["throughput_rounds"] = [round(r["throughput"]) for r in rounds]
    row["extra"]["cpu_s_per_1000_rounds"] = [round(r["cpu_s_per_1000"], 4) for r in rounds]
    return row


def run(args: argparse.Namespace) -> Result:
    result = new_result(
        "http_stack",
        {
            "calls": args.calls, "warmup": args.warmup, "concurrency": args.concurrency,
            "per_caller": args.per_caller, "rounds": args.rounds, "quick": args.quick,
        },
        PACKAGES,
    )  # fmt: skip
    # remote_hop.measure reads the server's CPU and RSS through these: count its child processes too.
    remote_hop.cpu_seconds, remote_hop.peak_rss_mb = tree_cpu_seconds, tree_peak_rss_mb
    rows = [(stack, loop) for stack in STACKS for loop in LOOPS]
    selected = [(s, lp) for s, lp in rows if not args.only or s in args.only or f"{s} {lp}" in args.only]
    if not selected:
        raise SystemExit(f"--only matches no row: the rows are {', '.join(f'{s} {lp}' for s, lp in rows)}")
    measured: dict[str, list[dict[str, Any]]] = {f"{s} {lp}": [] for s, lp in selected}
    with tempfile.TemporaryDirectory(prefix="http-stack-") as logs:
        for _ in range(args.rounds):  # interleaved: a burst of other load spreads over every row
            for stack, loop in selected:
                make = lambda s=stack, lp=loop: peer(s, lp, args)  # noqa: E731
                measured[f"{stack} {loop}"].append(
                    remote_hop.measure(f"{stack} {loop}", make, args, Path(logs))
                )
    for name, rounds in measured.items():
        row = best(rounds)
        result.samples[name] = row.pop("samples")
        result.rows.append(msgspec.convert(row, Row))
    return result


# --- The report ---------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(result: Result, base: str = "uvicorn h11+limits asyncio") -> str:
    """The rows as a Markdown table, with throughput and CPU as ratios to ``base``."""
    reference = next((row for row in result.rows if row.name == base and row.failure is None), None)
    lines = [
        "| stack | loop | p50 ms | p99 ms | calls/s | x base | CPU s/1k | x base | RSS MB | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result.rows:
        stack, loop = row.name.rsplit(" ", 1)
        if row.failure is not None:
            lines.append(f"| {stack} | {loop} | failed: {row.failure[:160]} | | | | | | | |")
            continue
        speed = cpu = "-"
        if reference is not None and reference.throughput and row.throughput:
            speed = f"{row.throughput / reference.throughput:.2f}"
        if reference is not None and reference.cpu_s_per_1000 and row.cpu_s_per_1000:
            cpu = f"{row.cpu_s_per_1000 / reference.cpu_s_per_1000:.2f}"
        lines.append(
            f"| {stack} | {loop} | {fmt(row.p50_ms, '.3f')} | {fmt(row.p99_ms, '.3f')} "
            f"| {fmt(row.throughput, ',.0f')} | {speed} | {fmt(row.cpu_s_per_1000, '.3f')} | {cpu} "
            f"| {fmt(row.rss_mb, '.0f')} | {row.errors} |"
        )
    return "\n".join(lines)


def report(result: Result) -> None:
    p = result.parameters
    print(
        f"HTTP stack of one remote hop{' (smoke run: --quick, not a measurement)' if p['quick'] else ''}: "
        f"{p['calls']:,} sequential calls, {p['concurrency']} callers x {p['per_caller']:,} calls; "
        f"best of {p['rounds']} interleaved rounds; {result.machine.cpus} cores; "
        "x base: ratio to uvicorn h11+limits on asyncio\n"
    )
    print(table(result))
    for row in result.rows:
        if row.failure is not None:
            print(f"\n{row.name} failed: {row.failure}")


async def call(args: argparse.Namespace) -> None:
    await remote_hop.python_caller(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls (latency)")
    parser.add_argument("--warmup", type=int, default=None, help="calls before measuring (min(500, calls))")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent closed-loop callers")
    parser.add_argument("--per-caller", type=int, default=500, help="calls by each concurrent caller")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, interleaved; each metric's best")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, checks that it works")
    parser.add_argument("--only", action="append", help="only this stack, or 'stack loop' (repeatable)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "http_stack.json")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--call", choices=["archipel"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.loop, args.port)
        return
    if args.call:
        run_on(args.loop, call(args))
        return
    if args.quick:
        args.calls, args.concurrency, args.per_caller, args.rounds = 30, 2, 15, 1
        args.warmup = 5 if args.warmup is None else args.warmup
    if args.warmup is None:
        args.warmup = min(500, args.calls)
    result = run(args)
    write(result, args.out)
    report(result)
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
