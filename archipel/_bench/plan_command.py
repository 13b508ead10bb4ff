"""``archipel plan APP``: measure the app as microservices, suggest which services to group in
one process, and check the suggestion against the measurements.

1. run the app as microservices under the mix at ``--rate`` visits per second and read every
   process's ``/metrics`` and CPU (:mod:`.observe`);
2. group services by the rules of :mod:`.advisor`, print the groups and the placement string
   for ``archipel bench --placement``;
3. unless ``--no-verify``: run the monolith, microservices (and ``configured`` with a
   ``--config`` that has ``[groups]``) and the suggestion side by side at the same rate, as
   ``archipel bench`` does, and print the expected gain beside the measured one.

Writes ``plan-APP-TIME.json`` (the schema of :mod:`.result`, the advice under
``parameters.advice``) and ``.md`` to ``--out``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from .._deploy.loading import command_app, command_settings, fail
from .._deploy.settings import Settings
from . import render, result
from .advisor import Advice, AdviceError, Rules, advise
from .command import (
    AppArgument,
    CallsOption,
    MixOption,
    Plan,
    _locustfile_near,
    console,
    load_mix,
    placements_for,
    run,
)
from .deployment import PlacementError, StartFailed
from .mix import MixError
from .observe import Observation, observe

SUGGESTED = "suggested"
BASELINE = "microservices"


def advice_table(advice: Advice) -> list[str]:
    """The groups with their expected gain per visit, the services kept apart, the placement."""
    lines = [
        f"Suggested groups (measured as microservices at {advice.rate:g} visits/s; "
        f"a hop costs about {advice.hop_cpu_ms:.2f} ms CPU):",
        "",
        "| group | services | hops removed / visit | CPU ms saved / visit | latency ms saved / visit "
        "| group CPU, cores |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for group in advice.groups:
        lines.append(
            f"| {group.name} | {' + '.join(group.services)} | {group.hops_per_visit:.2f} | "
            f"{group.cpu_ms_per_visit:.2f} | {group.latency_ms_per_visit:.2f} | {group.cpu_cores:.2f} |"
        )
    if not advice.groups:
        lines.append("| (none) | every service keeps its own process | 0 | 0 | 0 | |")
    lines.append("")
    for name in advice.alone:
        lines.append(f"- {name} alone: {advice.reasons.get(name, 'no remote call to or from it')}")
    placement = advice.placement(SUGGESTED)
    lines += ["", f"Placement: `--placement {placement}`" if placement else "Placement: microservices", ""]
    return lines


def advice_json(advice: Advice, observation: Observation) -> dict[str, Any]:
    return {
        "placement": advice.placement(SUGGESTED),
        "groups": [{**dataclasses.asdict(g), "name": g.name} for g in advice.groups],
        "alone": {name: advice.reasons.get(name) for name in advice.alone},
        "hop_cpu_ms": round(advice.hop_cpu_ms, 4),
        "total_hop_ms_per_visit": round(advice.total_hop_ms_per_visit, 3),
        "expected_per_visit": {
            "hops_removed": round(advice.hops_per_visit, 3),
            "cpu_ms_saved": round(advice.cpu_ms_per_visit, 3),
            "latency_ms_saved": round(advice.latency_ms_per_visit, 3),
        },
        "observed": {
            "visits": observation.visits,
            "errors": observation.outcome.errors,
            "cpu_s": {k: round(v, 3) for k, v in observation.cpu_s.items()},
            "services": [dataclasses.asdict(s) for s in observation.services],
            "edges": [dataclasses.asdict(e) for e in observation.edges],
        },
    }


def gain_table(the_result: result.Result, advice: Advice, load: str) -> list[str]:
    """Expected gain per visit beside the measured one (each placement vs microservices)."""
    rows = {r.extra.get("placement"): r for r in the_result.rows if r.failure is None}
    base = rows.get(BASELINE)
    if base is None:
        return ["Not verified: the microservices run failed.", ""]

    def saved(other: result.Row | None, what: str) -> str:
        if other is None:
            return ""
        if what == "cpu":
            mine, theirs = base.cpu_s_per_1000, other.cpu_s_per_1000  # CPU s / 1,000 = ms / visit
        elif what == "mean":
            mine, theirs = _mean(the_result, base), _mean(the_result, other)
        else:
            mine, theirs = base.p50_ms, other.p50_ms
        return "" if mine is None or theirs is None else f"{mine - theirs:.2f}"

    suggested, monolith = rows.get(SUGGESTED), rows.get("monolith")
    return [
        f"Gain per visit against microservices at {load} (expected: from the measured costs):",
        "",
        "| per visit | expected | measured: suggested | measured: monolith |",
        "| --- | ---: | ---: | ---: |",
        f"| remote calls removed | {advice.hops_per_visit:.2f} | | |",
        f"| CPU ms saved | {advice.cpu_ms_per_visit:.2f} | {saved(suggested, 'cpu')} | "
        f"{saved(monolith, 'cpu')} |",
        f"| mean latency ms saved | {advice.latency_ms_per_visit:.2f} | {saved(suggested, 'mean')} | "
        f"{saved(monolith, 'mean')} |",
        f"| p50 latency ms saved | | {saved(suggested, 'p50')} | {saved(monolith, 'p50')} |",
        "",
    ]


def _mean(the_result: result.Result, row: result.Row) -> float | None:
    samples = the_result.samples.get(row.name)
    return statistics.fmean(samples) if samples else None


def plan(
    app: AppArgument,
    mix: MixOption = None,
    calls: CallsOption = None,
    config: Annotated[
        Path | None, typer.Option(help="an archipel.toml whose groups are verified too, as 'configured'")
    ] = None,
    rate: Annotated[float, typer.Option(help="open-loop visits per second, measured and verified")] = 25.0,
    duration: Annotated[float, typer.Option(help="seconds of each measured run")] = 10.0,
    warmup: Annotated[float, typer.Option(help="seconds of load before each measured run")] = 2.0,
    cpu_bound: Annotated[float, typer.Option(help="most cores one group may use at --rate")] = 0.5,
    out: Annotated[Path, typer.Option(help="where the JSON and Markdown go")] = Path(".archipel/plan"),
    quick: Annotated[
        bool, typer.Option(help="a smoke run of a few seconds a step: not a measurement")
    ] = False,
    verify: Annotated[
        bool, typer.Option(help="run the suggestion beside microservices and the monolith")
    ] = True,
) -> None:
    """Suggest which of APP's services to run in one process, from a measured run; then verify it."""
    settings: Settings | None = None
    if config is not None:
        if not config.is_file():
            fail(f"--config {config}: no such file")
        settings = command_settings(config)
    reference, the_app = command_app(app, Settings())
    if not (rate > 0 and duration > 0 and warmup >= 0 and cpu_bound > 0):
        fail("--rate, --duration and --cpu-bound must be positive, --warmup at least 0")
    if quick:
        rate, duration, warmup = 10.0, 2.0, 0.5
    try:
        the_mix = load_mix(mix, calls, _locustfile_near(reference))
    except MixError as exc:
        fail(str(exc))
    with tempfile.TemporaryDirectory(prefix="archipel-plan-") as workdir:
        console.print(f"measuring {the_app.name} as microservices at {rate:g} visits/s for {duration:g} s")
        try:
            observation = asyncio.run(
                observe(reference, the_app, the_mix, rate, duration, warmup, Path(workdir))
            )
        except StartFailed as exc:
            fail(f"could not measure the app as microservices: {exc}")
    try:
        advice = advise(observation.services, observation.edges, Rules(rate, cpu_bound))
    except AdviceError as exc:
        fail(f"the measurements cannot be used: {exc}")
    lines = advice_table(advice)
    print("\n".join(lines))
    parameters = {"quick": quick, "cpu_bound": cpu_bound, "advice": advice_json(advice, observation)}
    scenario = f"archipel plan {reference}"
    if verify:
        suggestion = advice.placement(SUGGESTED)
        try:
            chosen = placements_for(the_app, [suggestion] if suggestion else [], settings)
        except PlacementError as exc:
            fail(str(exc))
        bench_plan = Plan(
            scenario, reference, the_app, the_mix, chosen, rates=[rate], users=0,
            duration=duration, warmup=warmup, baseline=BASELINE, parameters=parameters,
        )  # fmt: skip
        console.print(f"verifying: {', '.join(p.name for p in chosen)} at {rate:g} visits/s")
        the_result = asyncio.run(run(bench_plan))
        measured = [*gain_table(the_result, advice, f"{rate:g}/s"), render.markdown(the_result, BASELINE)]
        print("\n".join(measured))
        lines += measured
    else:
        the_result = result.new_result(scenario, {"app": reference, "mix": the_mix.source, **parameters})
    stem = f"plan-{the_app.name}-{the_result.started.replace(':', '')[:15]}"
    json_path = result.write(the_result, out / f"{stem}.json")
    markdown = out / f"{stem}.md"
    markdown.write_text(f"## {scenario}\n\n" + "\n".join(lines) + "\n")
    for path in (json_path, markdown):
        console.print(f"wrote {path}")
