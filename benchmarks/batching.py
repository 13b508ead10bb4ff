"""A page of prices converted over one remote hop: one call after another, gathered, gathered and
coalesced into the batch method (``@rpc(batch=...)``), and the hand-written batch call.

The callee is a real ``python -m archipel._deploy.worker`` serving one service with credentials
on, as in production; the caller, in this process, uses ``HttpTransport.proxy`` with the
default interceptor chain (what a service gets as its remote dependency). Each way converts the
same pages of N prices; the ways take turns, round after round, so the machine's noise falls on
all of them alike. Reported per page: latency p50, CPU of the caller and of the callee, and HTTP
requests the callee served, as a Markdown table.

    python benchmarks/batching.py [--sizes 10,50] [--pages 200] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

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
    served = 0  # HTTP requests of convert and convert_all, read with requests()

    @rpc(idempotent=True)
    async def convert_all(self, amounts: list[Money], to: str) -> list[Money]:
        Currency.served += 1
        return [convert_money(amount, to) for amount in amounts]

    @rpc(idempotent=True, batch="convert_all")
    async def convert(self, amount: Money, to: str) -> Money:
        Currency.served += 1
        return convert_money(amount, to)

    @rpc(idempotent=True)
    async def requests(self) -> int:
        return Currency.served


app = App("batching", [Currency])  # imported again by the worker process

Page = list[Money]
Way = Callable[[Any, Page], Awaitable[list[Money]]]


async def one_after_another(currency: Any, page: Page) -> list[Money]:
    return [await currency.convert(amount, "USD") for amount in page]


async def gathered(currency: Any, page: Page) -> list[Money]:
    return list(await asyncio.gather(*(currency.convert(amount, "USD") for amount in page)))


async def by_hand(currency: Any, page: Page) -> list[Money]:
    answer: list[Money] = await currency.convert_all(page, "USD")
    return answer


# name -> (the way, whether its proxy coalesces)
WAYS: dict[str, tuple[Way, bool]] = {
    "(a) one after another": (one_after_another, True),
    "(b) gathered, no coalescing": (gathered, False),
    "(c) gathered, coalesced": (gathered, True),
    "(d) convert_all by hand": (by_hand, True),
}


def start_worker() -> tuple[subprocess.Popen[bytes], str]:
    from archipel._deploy.environment import WorkerSpec, worker_environment

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    spec = WorkerSpec(
        app=f"{Path(__file__).resolve()}:app",
        name="currency",
        services=["currency"],
        host=HOST,
        port=port,
        authenticate=True,
    )
    env = {
        **os.environ,
        **worker_environment(spec),
        "ARCHIPEL_SECRET": SECRET,
        "ARCHIPEL_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "archipel._deploy.worker"], env=env)
    return process, f"http://{HOST}:{port}"


async def wait_up(url: str, process: subprocess.Popen[bytes]) -> None:
    """Until the worker accepts connections (calls instead would open the circuit breaker)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    deadline = time.monotonic() + 30
    while True:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)  # the worker is still starting
        else:
            writer.close()
            await writer.wait_closed()
            return


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@dataclasses.dataclass
class Tally:
    latencies: list[float] = dataclasses.field(default_factory=list)  # seconds per page
    caller_cpu: float = 0.0
    callee_cpu: float = 0.0
    requests: int = 0
    pages: int = 0

    def row(self, size: int, way: str, base: Tally) -> str:
        p50 = statistics.median(self.latencies) * 1e3
        caller, callee = self.caller_cpu / self.pages * 1e3, self.callee_cpu / self.pages * 1e3
        ratio = p50 / (statistics.median(base.latencies) * 1e3)
        return (
            f"| {size} | {way} | {p50:.2f} | {ratio:.1f}x | {caller:.2f} | {callee:.2f} | "
            f"{self.requests / self.pages:g} |"
        )


async def run(sizes: list[int], pages: int, rounds: int) -> dict[int, dict[str, Tally]]:
    from archipel._interceptors import default_interceptors
    from archipel._model import describe
    from archipel._rpc.client import HttpTransport
    from archipel._security.keyring import OPERATOR, keyring_for
    from archipel._security.tokens import Signer

    process, url = start_worker()
    keyring = keyring_for(app, app.name, OPERATOR, (), [SECRET.encode()], operator=True)
    transport = HttpTransport({"currency": [url]}, signer=Signer(keyring))
    try:
        await wait_up(url, process)
        await transport.start()
        chain = default_interceptors(app, endpoints=transport.endpoints)
        spec = describe(Currency)
        # The same service seen without its batch declaration: the calls go one by one.
        plain = dataclasses.replace(
            spec,
            methods={**spec.methods, "convert": dataclasses.replace(spec.methods["convert"], batch=None)},
        )
        proxies = {
            coalesced: transport.proxy(s, caller=OPERATOR, interceptors=chain)
            for coalesced, s in ((True, spec), (False, plain))
        }
        tallies = {size: {way: Tally() for way in WAYS} for size in sizes}
        for size in sizes:
            page = [Money("EUR", units) for units in range(size)]
            for way, coalesced in WAYS.values():
                for _ in range(20):  # warm up: connections, caches
                    await way(proxies[coalesced], page)
        for _ in range(rounds):
            for size in sizes:
                page = [Money("EUR", units) for units in range(size)]
                for name, (way, coalesced) in WAYS.items():
                    tally, currency = tallies[size][name], proxies[coalesced]
                    served = await currency.requests()
                    callee, caller = cpu_seconds(process.pid), time.process_time()
                    for _ in range(pages):
                        started = time.perf_counter()
                        answer = await way(currency, page)
                        tally.latencies.append(time.perf_counter() - started)
                        assert len(answer) == size
                    tally.caller_cpu += time.process_time() - caller
                    tally.callee_cpu += cpu_seconds(process.pid) - callee
                    tally.requests += await currency.requests() - served
                    tally.pages += pages
        return tallies
    finally:
        await transport.close()
        process.terminate()
        process.wait(timeout=10)


def report(tallies: dict[int, dict[str, Tally]], pages: int, rounds: int) -> None:
    print(
        f"a page of N prices over one remote hop, {rounds} rounds x {pages} pages per way, "
        f"taking turns; {os.cpu_count()} cores\n"
    )
    print(
        "| N | how | p50 per page (ms) | p50 vs (d) | caller CPU per page (ms) | callee CPU per page (ms) "
        "| requests per page |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for size, ways in tallies.items():
        base = ways["(d) convert_all by hand"]
        for name, tally in ways.items():
            print(tally.row(size, name, base))
    for size, ways in tallies.items():
        gathered_p50 = statistics.median(ways["(b) gathered, no coalescing"].latencies)
        coalesced_p50 = statistics.median(ways["(c) gathered, coalesced"].latencies)
        print(f"\nN={size}: coalesced vs gathered p50 {coalesced_p50 / gathered_p50:.2f}x", end="")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,50", help="prices per page, comma-separated")
    parser.add_argument("--pages", type=int, default=200, help="pages per way in each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5 pages, 1 round")
    args = parser.parse_args()
    pages, rounds = (5, 1) if args.quick else (args.pages, args.rounds)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if any(s < 1 for s in sizes) or pages < 1 or rounds < 1:
        parser.error("--sizes, --pages and --rounds must be at least 1")
    report(asyncio.run(run(sizes, pages, rounds)), pages, rounds)


if __name__ == "__main__":
    main()
