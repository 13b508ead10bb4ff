"""What keeping peers current costs: the shop's processes, idle, with peer probes every second
(the default) and without probes, side by side.

Each round starts the shop as microservices with the local supervisor, lets it settle, then
reads the CPU time (user + system) of every worker before and after ``--seconds`` of idleness.
Rounds alternate probes on and off; the best round of each is reported, as CPU milliseconds per
second of wall time summed over the processes, and the number of probes made per second.

    python benchmarks/membership.py [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples" / "boutique")]

from archipel._deploy.plan import called_services, plan  # noqa: E402
from archipel._deploy.supervisor import Supervisor  # noqa: E402
from archipel._loader import load_app  # noqa: E402

APP = str(ROOT / "examples" / "boutique" / "boutique" / "app.py") + ":app"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def idle_cpu(interval: float, seconds: float) -> float:
    """CPU milliseconds per second, summed over the shop's workers, while nobody calls them."""
    app = load_app(APP)
    with tempfile.TemporaryDirectory() as data:
        supervisor = Supervisor(
            APP,
            app,
            plan(app, "microservices"),
            mode="microservices",
            data_dir=data,
            probe_interval_peers=interval,
        )
        await supervisor.start(60)
        try:
            await asyncio.sleep(2)  # let start-up work (sessions, first probes) finish
            pids = [child.pid for child in supervisor.children if child.pid]
            before, started = sum(cpu_seconds(p) for p in pids), time.monotonic()
            await asyncio.sleep(seconds)
            used, elapsed = sum(cpu_seconds(p) for p in pids) - before, time.monotonic() - started
        finally:
            await supervisor.stop()
    return 1000 * used / elapsed


def probes_per_second() -> int:
    app = load_app(APP)
    return sum(len(called_services(app, [name])) for name in app.specs)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    on: list[float] = []
    off: list[float] = []
    for _ in range(options.rounds):
        on.append(await idle_cpu(1.0, options.seconds))
        off.append(await idle_cpu(0.0, options.seconds))
    probes = probes_per_second()
    print(f"{'peer probes every 1 s':<28} {min(on):8.1f} ms CPU per s (10 processes, {probes} probes/s)")
    print(f"{'no peer probes':<28} {min(off):8.1f} ms CPU per s")
    cost = min(on) - min(off)
    print(f"probes cost: {cost:.1f} ms CPU per s, {cost / probes:.2f} ms per probe")


if __name__ == "__main__":
    asyncio.run(main())
