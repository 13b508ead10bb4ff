"""What one remote call through archipel costs next to the raw ceiling and to FastAPI.

Each server runs in its own process under the same uvicorn settings (archipel._deploy.worker's); the
callers run in this process. The same call, ``convert(amount: Money, to: str) -> Money``:

- archipel: a real ``python -m archipel._deploy.worker`` serving one service; the caller uses
  ``HttpTransport.proxy(spec)`` with the default interceptor chain and policies, the object a
  service gets as its dependency in microservices. Each call carries a signed credential that the
  server checks, as in production.
- archipel, no auth: the same with authentication off (``authenticate=False``, unsigned calls):
  what the credentials cost, side by side.
- raw: a bare ASGI app + msgspec (the ceiling for a JSON-over-HTTP endpoint in Python), called
  by the minimal client: the same pooled aiohttp session, no extra headers.
- fastapi: a hand-written FastAPI endpoint with pydantic models, called with httpx (the peer
  baseline most Python teams would write), and with aiohttp (to separate server from client).

Reported: sequential latency (p50/p99 us), throughput with 16 concurrent callers, and the CPU
each side spends per call during the throughput run; then the ratios archipel / raw.

    python benchmarks/remote_call.py [--calls 3000] [--concurrency 16] [--per-caller 500] [--rounds 3]
"""

# No `from __future__ import annotations`: FastAPI must resolve the annotations of the endpoint
# defined inside fastapi_app(), and it cannot resolve strings naming function-local models.
import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from archipel import App, Service, Struct, rpc

HOST = "127.0.0.1"
SECRET = "the-benchmark-deployment-secret-0123456789"
RATES = {"EUR": 1, "USD": 2}


class Money(Struct):
    currency: str
    units: int
    nanos: int = 0


def convert_money(amount: Money, to: str) -> Money:
    return Money(to, amount.units * RATES[to] // RATES[amount.currency], amount.nanos)


class Currency(Service):
    @rpc(idempotent=True)
    async def convert(self, amount: Money, to: str) -> Money:
        return convert_money(amount, to)


app = App("bench", [Currency])  # imported again by the archipel worker process

# --- Servers (each started as `python remote_call.py --serve KIND --port N`) --------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class ConvertArgs(Struct, forbid_unknown_fields=True):
    amount: Money
    to: str


_args_decoder = msgspec.json.Decoder(ConvertArgs)
_encoder = msgspec.json.Encoder()
_JSON = [(b"content-type", b"application/json")]


async def raw_app(
    scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    """The ceiling: read the body, decode it with msgspec, call the function, encode the result."""
    if scope["type"] != "http":
        return  # lifespan: nothing to start
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    args = _args_decoder.decode(body)
    result = _encoder.encode(convert_money(args.amount, args.to))
    await send({"type": "http.response.start", "status": 200, "headers": _JSON})
    await send({"type": "http.response.body", "body": result})


def fastapi_app() -> Any:
    """What a team would hand-write with FastAPI: pydantic models in, pydantic model out."""
    from fastapi import FastAPI
    from pydantic import BaseModel

    class MoneyModel(BaseModel):
        currency: str
        units: int
        nanos: int = 0

    class ConvertIn(BaseModel):
        amount: MoneyModel
        to: str

    api = FastAPI()

    @api.post("/currency/convert")
    async def convert(body: ConvertIn) -> MoneyModel:
        units = body.amount.units * RATES[body.to] // RATES[body.amount.currency]
        return MoneyModel(currency=body.to, units=units, nanos=body.amount.nanos)

    return api


def serve(kind: str, port: int) -> None:
    import uvicorn

    from archipel._deploy.worker import uvicorn_config

    target = raw_app if kind == "raw" else fastapi_app()
    # archipel's own uvicorn settings, so only the app differs between the servers.
    uvicorn.Server(uvicorn_config(target, HOST, port)).run()  # type: ignore[arg-type]


def start_server(kind: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    env = dict(os.environ)
    if kind in ("archipel", "archipel-open"):
        from archipel._deploy.environment import WorkerSpec, worker_environment

        spec = WorkerSpec(
            app=f"{Path(__file__).resolve()}:app",
            name="currency",
            services=["currency"],
            host="127.0.0.1",
            port=port,
            authenticate=kind == "archipel",
        )
        env.update(worker_environment(spec))
        env["ARCHIPEL_SECRET"] = SECRET
        env["ARCHIPEL_LOG_LEVEL"] = "WARNING"
        command = [sys.executable, "-m", "archipel._deploy.worker"]
    else:
        command = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
    process = subprocess.Popen(command, env=env)
    return process, f"http://{HOST}:{port}"


# --- Clients: each returns an async ``call()`` doing one convert ---------------------------------

AMOUNT = Money("EUR", 1234, 5)
Call = Callable[[], Awaitable[Any]]


@dataclass
class Client:
    call: Call
    close: Callable[[], Awaitable[None]]


def _session() -> aiohttp.ClientSession:
    # The same pool settings as archipel._rpc.client.HttpTransport.
    connector = aiohttp.TCPConnector(limit=100, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, skip_auto_headers=["User-Agent"])


async def archipel_client(url: str, *, signed: bool = True) -> Client:
    from archipel._interceptors import default_interceptors
    from archipel._rpc.client import HttpTransport
    from archipel._security.keyring import OPERATOR, keyring_for
    from archipel._security.tokens import Signer

    # The operator's keys: the one caller allowed to call a service nobody depends on.
    keyring = keyring_for(app, app.name, OPERATOR, (), [SECRET.encode()], operator=True)
    transport = HttpTransport({"currency": [url]}, signer=Signer(keyring) if signed else None)
    await transport.start()
    # As a worker wires a dependency: the default chain (metrics, deadline, retry, bulkhead,
    # breaker) with the default policies.
    chain = default_interceptors(app, endpoints=transport.endpoints)
    currency: Currency = transport.proxy(app.specs["currency"], caller=OPERATOR, interceptors=chain)

    async def call() -> Money:
        return await currency.convert(AMOUNT, "USD")

    return Client(call, transport.close)


async def archipel_unsigned_client(url: str) -> Client:
    return await archipel_client(url, signed=False)


async def aiohttp_client(url: str) -> Client:
    """The minimal client: POST the encoded arguments, decode the result."""
    session = _session()
    endpoint = url + "/currency/convert"
    body = msgspec.json.encode({"amount": AMOUNT, "to": "USD"})
    headers = {"content-type": "application/json"}
    decoder = msgspec.json.Decoder(Money)

    async def call() -> Money:
        async with session.post(endpoint, data=body, headers=headers) as response:
            payload = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {payload[:200]!r}")
        return decoder.decode(payload)

    return Client(call, session.close)


async def httpx_client(url: str) -> Client:
    """What a FastAPI team would write: httpx, json=, response.json()."""
    import httpx

    client = httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=100))
    body = {
        "amount": {"currency": AMOUNT.currency, "units": AMOUNT.units, "nanos": AMOUNT.nanos},
        "to": "USD",
    }

    async def call() -> Any:
        response = await client.post("/currency/convert", json=body)
        response.raise_for_status()
        return response.json()

    return Client(call, client.aclose)


# --- Measurement -----------------------------------------------------------------------------


@dataclass
class Result:
    p50_us: float
    p99_us: float
    calls_per_s: float
    server_cpu_us: float  # server process CPU per call during the throughput run
    client_cpu_us: float  # this process's CPU per call during the throughput run


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _wait_up(url: str, process: subprocess.Popen[bytes]) -> None:
    """Until the server accepts connections (uvicorn listens once its app has started). Probing
    with calls instead would open archipel's circuit breaker on the refused connections."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    deadline = time.monotonic() + 30
    while True:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)  # the server is still starting
        else:
            writer.close()
            await writer.wait_closed()
            return


async def measure(
    kind: str,
    client_factory: Callable[[str], Awaitable[Client]],
    calls: int,
    concurrency: int,
    per_caller: int,
) -> Result:
    process, url = start_server(kind)
    client = await client_factory(url)
    try:
        await _wait_up(url, process)
        for _ in range(min(500, calls)):  # warm up: connections, caches
            await client.call()
        latencies: list[int] = []
        for _ in range(calls):
            started = time.perf_counter_ns()
            await client.call()
            latencies.append(time.perf_counter_ns() - started)
        latencies.sort()

        async def caller() -> None:
            for _ in range(per_caller):
                await client.call()

        server_cpu, client_cpu = _cpu_seconds(process.pid), time.process_time()
        started_s = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started_s
        total = concurrency * per_caller
        return Result(
            p50_us=statistics.median(latencies) / 1000,
            p99_us=latencies[int(len(latencies) * 0.99) - 1] / 1000,
            calls_per_s=total / elapsed,
            server_cpu_us=(_cpu_seconds(process.pid) - server_cpu) / total * 1e6,
            client_cpu_us=(time.process_time() - client_cpu) / total * 1e6,
        )
    finally:
        await client.close()
        process.terminate()
        process.wait(timeout=10)


def best(results: list[Result]) -> Result:
    """Best of the rounds, metric by metric: the least disturbed by other load on the machine."""
    return Result(
        p50_us=min(r.p50_us for r in results),
        p99_us=min(r.p99_us for r in results),
        calls_per_s=max(r.calls_per_s for r in results),
        server_cpu_us=min(r.server_cpu_us for r in results),
        client_cpu_us=min(r.client_cpu_us for r in results),
    )


async def run(args: argparse.Namespace) -> dict[str, Result]:
    variants: dict[str, tuple[str, Callable[[str], Awaitable[Client]]]] = {
        "archipel": ("archipel", archipel_client),
        "archipel, no auth": ("archipel-open", archipel_unsigned_client),
        "raw asgi+aiohttp": ("raw", aiohttp_client),
    }
    try:
        import fastapi  # noqa: F401
        import httpx  # noqa: F401
    except ImportError:
        print("fastapi or httpx is not installed: skipping the FastAPI columns", file=sys.stderr)
    else:
        variants["fastapi+httpx"] = ("fastapi", httpx_client)
        variants["fastapi+aiohttp"] = ("fastapi", aiohttp_client)
    rounds: dict[str, list[Result]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (kind, factory) in variants.items():  # interleaved rounds spread the noise
            rounds[name].append(await measure(kind, factory, args.calls, args.concurrency, args.per_caller))
    return {name: best(results) for name, results in rounds.items()}


def ratio(value: float, base: float) -> float:
    # A tiny run can read 0 µs of CPU (the kernel counts it in 10 ms ticks): no ratio then.
    return value / base if base else float("nan")


def report(results: dict[str, Result], args: argparse.Namespace) -> None:
    print(
        f"remote call, best of {args.rounds} rounds: {args.calls:,} sequential calls, "
        f"{args.concurrency} callers x {args.per_caller:,} concurrent calls; {os.cpu_count()} cores"
    )
    names = list(results)
    rows: list[tuple[str, str, Callable[[Result], float]]] = [
        ("p50 latency (us)", ".0f", lambda r: r.p50_us),
        ("p99 latency (us)", ".0f", lambda r: r.p99_us),
        (f"throughput, {args.concurrency} callers (calls/s)", ",.0f", lambda r: r.calls_per_s),
        ("server CPU per call (us)", ".0f", lambda r: r.server_cpu_us),
        ("client CPU per call (us)", ".0f", lambda r: r.client_cpu_us),
    ]
    width = max(len(n) for n in names) + 2
    print(f"{'':<36}" + "".join(f"{n:>{width}}" for n in names))
    for label, spec, get in rows:
        print(f"{label:<36}" + "".join(f"{format(get(results[n]), spec):>{width}}" for n in names))
    raw = results["raw asgi+aiohttp"]
    print("\nratios to raw asgi+aiohttp (latency and CPU: lower is better; throughput: higher is better)")
    print(f"{'':<36}" + "".join(f"{n:>{width}}" for n in names))
    for label, _, get in rows:
        print(f"{label:<36}" + "".join(f"{ratio(get(results[n]), get(raw)):>{width - 1}.2f}x" for n in names))
    signed, unsigned = results["archipel"], results["archipel, no auth"]
    print(
        f"\nauthentication: throughput {ratio(signed.calls_per_s, unsigned.calls_per_s):.2f}x without, "
        f"server CPU per call {ratio(signed.server_cpu_us, unsigned.server_cpu_us):.2f}x"
    )
    if args.json:
        print(json.dumps({n: vars(r) for n, r in results.items()}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="sequential calls (latency)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent callers (throughput)")
    parser.add_argument("--per-caller", type=int, default=500, help="calls by each concurrent caller")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument("--serve", choices=["raw", "fastapi"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    report(asyncio.run(run(args)), args)


if __name__ == "__main__":
    main()
