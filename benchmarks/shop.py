"""The shop (examples/boutique) as a monolith, as microservices, and with its pages, catalog and
currency in one process, under Online Boutique's traffic mix (examples/boutique/locustfile.py).

Runs the harness of ``archipel bench`` (archipel/_bench): open-loop rates, then a closed-loop
saturation run, for each placement; writes JSON, Markdown and plots to --out; prints the table
and the ratios microservices / monolith, with Service Weaver's published figures beside them.

    python benchmarks/shop.py [--rates 25,50,100] [--users 16] [--duration 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from archipel._bench import render
from archipel._bench.command import Plan, new_progress, run, save
from archipel._bench.deployment import MICROSERVICES, MONOLITH, Placement
from archipel._bench.mix import from_locustfile
from archipel._bench.result import Result
from archipel._loader import load_app

ROOT = Path(__file__).resolve().parent.parent
APP = "examples/boutique/boutique/app.py:app"
MIX = ROOT / "examples" / "boutique" / "locustfile.py"
MIXED = Placement(
    "mixed", "microservices", {"edge": ["frontend", "ads", "recommendation", "catalog", "currency"]}
)

# Service Weaver's published figures: Ghemawat et al., "Towards Modern Development of Cloud
# Applications", HotOS '23: Online Boutique at 10,000 queries per second, against the same app as
# gRPC microservices on Kubernetes.
WEAVER_SOURCE = 'Ghemawat et al., "Towards Modern Development of Cloud Applications", HotOS \'23'
KINDS = (
    "microservices (gRPC, Kubernetes)",
    "Service Weaver, split across processes",
    "Service Weaver, one process",
)
WEAVER = {
    "cores: microservices (gRPC, Kubernetes)": 78.0,
    "cores: Service Weaver, split across processes": 28.0,
    "cores: Service Weaver, one process": 9.0,
    "median latency ms: microservices (gRPC, Kubernetes)": 5.47,
    "median latency ms: Service Weaver, split across processes": 2.66,
    "median latency ms: Service Weaver, one process": 0.38,
}


def ratio_lines(result: Result) -> list[str]:
    """microservices / monolith and mixed / monolith at each load: CPU per 1,000 calls, p50, RSS."""
    lines = ["", "Ratios to the monolith at the same load (CPU s / 1,000 calls, p50, peak RSS):", ""]
    for row in result.rows:
        placement = row.extra.get("placement")
        if placement == "monolith" or row.failure is not None:
            continue
        base = render.baseline_of(result, row, "monolith")
        if base is None or base.failure is not None:
            continue
        values = render.ratios(row, base)
        cells = [
            f"{label} {values[key]:.2f}x" if values[key] is not None else f"{label} -"
            for label, key in (("CPU", "CPU s / 1,000"), ("p50", "p50 ms"), ("RSS", "RSS MiB"))
        ]
        lines.append(f"  {row.name:<28} " + "   ".join(cells))
    cores = [WEAVER[f"cores: {k}"] for k in KINDS]
    median = [WEAVER[f"median latency ms: {k}"] for k in KINDS]
    lines += [
        "",
        f"Service Weaver's published figures ({WEAVER_SOURCE}):",
        f"  cores: {cores[0]:.0f} as gRPC microservices, {cores[1]:.0f} with Weaver across processes "
        f"({cores[0] / cores[1]:.1f}x fewer), {cores[2]:.0f} in one process",
        f"  median latency: {median[0]} ms as gRPC microservices, {median[1]} ms across processes "
        f"({median[0] / median[1]:.1f}x lower), {median[2]} ms in one process",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="25,50,100", help="open-loop arrival rates, calls per second")
    parser.add_argument("--users", type=int, default=16, help="closed-loop visitors (0: none)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / ".archipel" / "bench")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of a few seconds, not a measurement"
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    users, duration, warmup = args.users, args.duration, args.warmup
    if args.quick:
        rates, users, duration, warmup = [10.0, 20.0], 4, 1.5, 0.5
    plan = Plan(
        scenario="shop: monolith vs microservices vs mixed (Online Boutique's mix)",
        app_ref=APP,
        app=load_app(APP),
        mix=from_locustfile(MIX),
        placements=[MONOLITH, MICROSERVICES, MIXED],
        rates=rates,
        users=users,
        duration=duration,
        warmup=warmup,
        parameters={"quick": args.quick, "weaver": {"source": WEAVER_SOURCE, **WEAVER}},
    )
    with new_progress() as progress:
        result = asyncio.run(run(plan, progress))
    written = save(result, args.out, f"shop-{result.started.replace(':', '')[:15]}", plan.baseline)
    print(render.markdown(result))
    print("\n".join(ratio_lines(result)))
    print()
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
