"""What a monolith-mode call costs next to a plain ``await obj.method(x)``.

In a monolith the runtime injects the dependency's instance itself, so the call should cost
the same as a plain method call (target: at most 1.5x). Both loops run inside an ``async``
method, the way service code calls its dependencies.

    python benchmarks/local_call.py [--iterations 200000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from archipel import App, Service, rpc
from archipel._events.bus import LocalBus
from archipel._runtime import Runtime

# --- The same two-class shape, once as archipel services and once as plain classes -------------


class Adder(Service):
    @rpc
    async def add_one(self, x: int) -> int:
        return x + 1


class Caller(Service):
    adder: Adder  # injected by the runtime: the Adder instance in a monolith

    @rpc
    async def run(self, iterations: int) -> int:
        """Time ``iterations`` calls to the dependency; returns nanoseconds."""
        adder = self.adder
        started = time.perf_counter_ns()
        for i in range(iterations):
            await adder.add_one(i)
        return time.perf_counter_ns() - started


class PlainAdder:
    async def add_one(self, x: int) -> int:
        return x + 1


class PlainCaller:
    def __init__(self, adder: PlainAdder) -> None:
        self.adder = adder

    async def run(self, iterations: int) -> int:
        adder = self.adder
        started = time.perf_counter_ns()
        for i in range(iterations):
            await adder.add_one(i)
        return time.perf_counter_ns() - started


app = App("bench", [Caller, Adder])


async def measure(iterations: int, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` ns per call: (archipel monolith, plain class)."""
    runtime = Runtime(app, ["caller", "adder"], LocalBus())
    await runtime.start()
    try:
        caller = runtime.instances["caller"]
        assert isinstance(caller, Caller) and isinstance(caller.adder, Adder)  # a direct reference
        plain = PlainCaller(PlainAdder())
        archipel_ns: list[int] = []
        plain_ns: list[int] = []
        for _ in range(repeats):  # interleaved, so both see the same machine noise
            archipel_ns.append(await caller.run(iterations))
            plain_ns.append(await plain.run(iterations))
    finally:
        await runtime.stop()
    return min(archipel_ns) / iterations, min(plain_ns) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    archipel_ns, plain_ns = asyncio.run(measure(args.iterations, args.repeats))
    ratio = archipel_ns / plain_ns
    print(f"local call, best of {args.repeats} x {args.iterations:,} calls")
    print(f"{'':<32}{'ns/call':>10}")
    print(f"{'plain await obj.method(x)':<32}{plain_ns:>10.1f}")
    print(f"{'archipel monolith dependency':<32}{archipel_ns:>10.1f}")
    print(f"ratio archipel / plain: {ratio:.2f}x (target <= 1.5x) {'ok' if ratio <= 1.5 else 'OVER'}")


if __name__ == "__main__":
    main()
