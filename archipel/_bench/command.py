"""``archipel bench APP``: the same request mix against the app in each placement.

For each placement (monolith, microservices, and any ``--placement``): start the app with
``archipel run`` on free ports, load its edge at each open-loop rate, then with ``--users``
visitors back to back (closed loop, the saturation throughput), read the CPU and peak memory of
every process of the deployment, stop it. Writes ``bench-APP-TIME.json`` (the schema in
:mod:`.result`), ``.md`` and the plots (``.png``, ``.svg``) to ``--out``.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from .._app import App
from .._deploy.loading import command_app, command_settings, fail
from .._deploy.settings import Settings
from . import procs, render, result
from .deployment import (
    MICROSERVICES,
    MONOLITH,
    Deployment,
    Placement,
    PlacementError,
    StartFailed,
    parse_placement,
)
from .load import Outcome, closed_loop, open_loop, percentile
from .mix import Mix, MixError, from_calls_file, from_locustfile

console = Console(highlight=False, stderr=True)
DEFAULT_OUT = Path(".archipel/bench")


@dataclass
class Plan:
    """What one scenario run does."""

    scenario: str
    app_ref: str
    app: App
    mix: Mix
    placements: Sequence[Placement]
    rates: Sequence[float] = (25.0, 50.0, 100.0)
    users: int = 16
    duration: float = 10.0
    warmup: float = 2.0
    timeout: float = 10.0
    baseline: str = "monolith"
    parameters: dict[str, Any] = field(default_factory=dict)


def _row(name: str, outcome: Outcome, cpu_s: float, rss: dict[str, float], **extra: Any) -> result.Row:
    done = len(outcome.latencies_ms)
    return result.Row(
        name,
        p50_ms=_round(percentile(outcome.latencies_ms, 0.50)),
        p99_ms=_round(percentile(outcome.latencies_ms, 0.99)),
        throughput=_round(outcome.throughput),
        cpu_s_per_1000=_round(cpu_s / done * 1000, 4) if done else None,
        rss_mb=procs.total(rss.values()) if rss else None,
        errors=outcome.errors,
        extra={
            **extra,
            "calls": outcome.calls,
            "completed": done,
            "http_requests": outcome.requests,
            "cpu_s": round(cpu_s, 3),
            "rss_mb_per_process": rss,
            "late_starts": outcome.late_starts,
            "error_kinds": dict(outcome.error_kinds.most_common(5)),
        },
    )


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


async def run(plan: Plan, progress: Progress | None = None) -> result.Result:
    """Every placement in turn; a placement that cannot start gets rows with ``failure``."""
    parameters = {
        "app": plan.app_ref,
        "mix": plan.mix.source,
        "calls": plan.mix.describe(),
        "placements": {p.name: {"mode": p.mode, "groups": dict(p.groups)} for p in plan.placements},
        "rates": list(plan.rates),
        "users": plan.users,
        "duration_s": plan.duration,
        "warmup_s": plan.warmup,
        "baseline": plan.baseline,
        "latency": "per call of the mix, from its scheduled start (open loop) or its start (closed)",
        **plan.parameters,
    }
    the_result = result.new_result(plan.scenario, parameters)
    loads: list[tuple[str, float | None]] = [(f"{rate:g}/s", rate) for rate in plan.rates]
    if plan.users > 0:
        loads.append((f"{plan.users} users", None))
    with tempfile.TemporaryDirectory(prefix="archipel-bench-") as workdir:
        for placement in plan.placements:
            await _placement(plan, placement, loads, Path(workdir), the_result, progress)
    return the_result


async def _placement(
    plan: Plan,
    placement: Placement,
    loads: list[tuple[str, float | None]],
    workdir: Path,
    the_result: result.Result,
    progress: Progress | None,
) -> None:
    task: TaskID | None = None
    if progress is not None:
        task = progress.add_task(f"{placement.name}: starting", total=len(loads))
    deployment = Deployment(plan.app_ref, plan.app, placement, workdir)

    def failed(failure: str) -> None:
        for load, _rate in loads:
            the_result.rows.append(
                result.Row.failed(f"{placement.name} {load}", failure, placement=placement.name, load=load)
            )

    try:
        await deployment.start()
    except StartFailed as exc:
        failed(str(exc))
        return
    try:
        url, pids = deployment.edge_url, deployment.pids
        supervisor = deployment.supervisor_pid
        if plan.warmup > 0:
            _describe(progress, task, f"{placement.name}: warm-up")
            await open_loop(url, plan.mix, min(plan.rates or (10.0,)), plan.warmup, timeout=plan.timeout)
        for index, (load, rate) in enumerate(loads):
            _describe(progress, task, f"{placement.name}: {load}")
            before = procs.cpu_of(pids)
            supervisor_before = procs.cpu_seconds(supervisor) if supervisor else None
            if rate is not None:
                outcome = await open_loop(url, plan.mix, rate, plan.duration, timeout=plan.timeout)
            else:
                outcome = await closed_loop(url, plan.mix, plan.users, plan.duration, timeout=plan.timeout)
            after = procs.cpu_of(pids)
            supervisor_after = procs.cpu_seconds(supervisor) if supervisor else None
            name = f"{placement.name} {load}"
            row = _row(
                name,
                outcome,
                procs.cpu_used(before, after),
                procs.rss_of(pids),
                placement=placement.name,
                load=load,
                kind="open" if rate is not None else "closed",
                offered_rate=rate,
                users=plan.users if rate is None else None,
                processes=len(pids),
                edge=url,
                supervisor_cpu_s=(
                    round(supervisor_after - supervisor_before, 3)
                    if supervisor_before is not None and supervisor_after is not None
                    else None
                ),
            )
            row.startup_s = _round(deployment.startup_s)
            the_result.rows.append(row)
            the_result.samples[name] = [round(v, 3) for v in outcome.latencies_ms]
            if progress is not None and task is not None:
                progress.update(task, completed=index + 1)
    except StartFailed as exc:
        failed(str(exc))
    finally:
        _describe(progress, task, f"{placement.name}: stopping")
        await deployment.stop()
        _describe(progress, task, f"{placement.name}: done")


def _describe(progress: Progress | None, task: TaskID | None, text: str) -> None:
    if progress is not None and task is not None:
        progress.update(task, description=text)


def new_progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<32}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console,
    )  # fmt: skip


def save(the_result: result.Result, out: Path, stem: str, baseline: str) -> list[Path]:
    """The JSON file, then the Markdown table and the plots beside it."""
    json_path = result.write(the_result, out / f"{stem}.json")
    return [json_path, *render.render(the_result, json_path, baseline)]


def load_mix(mix: Path | None, calls: Path | None, default: Path | None) -> Mix:
    if mix is not None and calls is not None:
        raise MixError("give --mix or --calls, not both")
    if calls is not None:
        return from_calls_file(calls)
    chosen = mix or default
    if chosen is None:
        raise MixError("no request mix: give --mix locustfile.py or --calls calls.toml")
    return from_locustfile(chosen)


def placements_for(app: App, extra: Sequence[str], settings: Settings | None) -> list[Placement]:
    chosen = [MONOLITH, MICROSERVICES]
    if settings is not None and settings.groups:
        chosen.append(Placement("configured", "microservices", settings.groups))
    for text in extra:
        placement = parse_placement(text, app)
        if placement.name in {p.name for p in chosen}:
            raise PlacementError(f"--placement {placement.name}: that name is already used")
        chosen.append(placement)
    return chosen


# The arguments ``archipel bench`` and ``archipel plan`` share.
AppArgument = Annotated[str, typer.Argument(help="module:attribute or path/to/file.py[:attribute]")]
MixOption = Annotated[
    Path | None,
    typer.Option(help="a Locust file: its @task methods are the mix (default: near the app)"),
]
CallsOption = Annotated[Path | None, typer.Option(help="a TOML or JSON file listing the calls, instead")]


def bench(
    app: AppArgument,
    mix: MixOption = None,
    calls: CallsOption = None,
    placement: Annotated[
        list[str] | None, typer.Option(help="NAME=svc+svc,svc+svc: a mixed placement, repeatable")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="an archipel.toml whose groups are one more placement, 'configured'")
    ] = None,
    rates: Annotated[str, typer.Option(help="open-loop arrival rates, calls per second")] = "25,50,100",
    users: Annotated[int, typer.Option(help="closed-loop visitors (0: no closed-loop run)")] = 16,
    duration: Annotated[float, typer.Option(help="seconds of each run")] = 10.0,
    warmup: Annotated[float, typer.Option(help="seconds of load before the first run")] = 2.0,
    out: Annotated[Path, typer.Option(help="where the JSON, Markdown and plots go")] = Path(
        ".archipel/bench"
    ),
    quick: Annotated[bool, typer.Option(help="a smoke run of a few seconds: not a measurement")] = False,
) -> None:
    """Compare APP as a monolith, as microservices and in other placements under the same mix."""
    settings: Settings | None = None
    if config is not None:
        if not config.is_file():
            fail(f"--config {config}: no such file")
        settings = command_settings(config)  # exits naming what is wrong in it
    reference, the_app = command_app(app, Settings())
    try:
        rate_values = [float(r) for r in rates.split(",") if r.strip()]
    except ValueError:
        fail(f"--rates {rates!r}: expected numbers separated by commas")
    if any(r <= 0 for r in rate_values) or users < 0 or duration <= 0:
        fail("rates and --duration must be positive, --users at least 0")
    if quick:
        rate_values, users, duration, warmup = [10.0, 20.0], 4, 1.5, 0.5
    try:
        the_mix = load_mix(mix, calls, _locustfile_near(reference))
        chosen = placements_for(the_app, placement or [], settings)
    except (MixError, PlacementError) as exc:
        fail(str(exc))
    plan = Plan(
        scenario=f"archipel bench {reference}",
        app_ref=reference,
        app=the_app,
        mix=the_mix,
        placements=chosen,
        rates=rate_values,
        users=users,
        duration=duration,
        warmup=warmup,
        parameters={"quick": quick},
    )
    with new_progress() as progress:
        the_result = asyncio.run(run(plan, progress))
    stem = f"bench-{the_app.name}-{the_result.started.replace(':', '')[:15]}"
    written = save(the_result, out, stem, plan.baseline)
    print(render.markdown(the_result, plan.baseline))
    for path in written:
        console.print(f"wrote {path}")


def _locustfile_near(reference: str) -> Path | None:
    """A ``locustfile.py`` in the app file's folder or one of its two parents."""
    file = reference.split(":", 1)[0]
    if not file.endswith(".py"):
        return None
    folder = Path(file).resolve().parent
    for candidate in (folder, *list(folder.parents)[:2]):
        if (candidate / "locustfile.py").is_file():
            return candidate / "locustfile.py"
    return None
