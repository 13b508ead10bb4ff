"""What a failure and an update cost the shop (examples/boutique), as a monolith, as
microservices and mixed, under a steady open-loop load of Online Boutique's mix.

Each trial starts the shop afresh with ``archipel run``, loads it at ``--rate`` calls per second
with every call's timestamps kept, then, a third of the way in, disrupts one process:

- ``kill:SERVICE``: SIGKILL the process serving SERVICE; the supervisor restarts it. When that
  process handles the shop's mail, an order is placed just before the kill (and one while it is
  down, if the storefront still answers), and the trial checks they are mailed after the restart;
- ``term:SERVICE``: SIGTERM it, the way a monolith is updated: it stops, the supervisor starts it
  again on the same port;
- ``rollout:SERVICE``: ``archipel rollout SERVICE``, a new replica started before the old one is
  drained.

In the monolith every service is the one process, so its trials are one kill, one restart and
one rollout. Writes JSON (archipel/_bench/result.py's schema, each trial's timeline in ``extra``),
Markdown and a timeline plot (PNG, SVG) to --out and prints the table.

    python benchmarks/failure.py [--rate 40] [--duration 15] [--shapes monolith,microservices,mixed]
                                 [--trials kill,term,rollout:checkout] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import failure_trace
import msgspec
from failure_events import MAILER, mailed, place_order
from failure_trace import Trace
from shop import APP, MIX, MIXED

from archipel._bench import result
from archipel._bench.deployment import MICROSERVICES, MONOLITH, Deployment, Placement, StartFailed
from archipel._bench.mix import Mix, from_locustfile
from archipel._loader import load_app

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {p.name: p for p in (MONOLITH, MICROSERVICES, MIXED)}
ACTIONS = ("kill", "term", "rollout")
TRIALS = (
    *("kill:frontend", "kill:currency", "kill:recommendation", "kill:checkout", "kill:email"),
    *("term:frontend", "rollout:frontend", "rollout:checkout"),
)


class Refused(ValueError):
    pass


@dataclass(frozen=True)
class Trial:
    action: str
    service: str

    @property
    def name(self) -> str:
        return f"{self.action}:{self.service}"


@dataclass(frozen=True)
class Settings:
    rate: float
    duration: float
    at: float  # seconds into the run the disruption starts
    tail: float  # seconds of load after the process is back
    timeout: float  # of a call
    settle: float  # seconds to wait for an order's mails


def process_of(placement: Placement, service: str) -> str:
    """The process that serves ``service`` in ``placement`` (before it runs: from its config)."""
    if placement.mode == "monolith":
        return "monolith"
    for group, members in placement.groups.items():
        if service in members:
            return group
    return service


def plan(
    shapes: Sequence[Placement], selected: Sequence[str], services: Sequence[str]
) -> list[tuple[Placement, Trial]]:
    """The trials of each shape; ``selected``: ``ACTION`` or ``ACTION:SERVICE``; a trial that would
    disrupt the same process the same way as an earlier one is run once (the monolith's one)."""
    trials = [Trial(*name.split(":")) for name in TRIALS]
    for entry in selected:
        action, _, service = entry.partition(":")
        if action not in ACTIONS:
            raise Refused(f"--trials {entry!r}: the action must be one of {', '.join(ACTIONS)}")
        if service and service not in services:
            raise Refused(
                f"--trials {entry!r}: {service!r} is not a service of the shop ({', '.join(services)})"
            )
        if service and Trial(action, service) not in trials:
            trials.append(Trial(action, service))
    if selected:
        trials = [t for t in trials if t.action in selected or t.name in selected]
    chosen: list[tuple[Placement, Trial]] = []
    for shape in shapes:
        seen: set[tuple[str, str]] = set()
        for trial in trials:
            key = (trial.action, process_of(shape, trial.service))
            if key not in seen:
                seen.add(key)
                chosen.append((shape, trial))
    return chosen


# -- one trial ----------------------------------------------------------------------------------


async def run_trial(
    shape: Placement, trial: Trial, mix: Mix, settings: Settings, workdir: Path
) -> result.Row:
    target = process_of(shape, trial.service)
    name = f"{shape.name}: {trial.action} {target}"
    deployment = Deployment(
        APP, load_app(APP), shape, workdir / f"{shape.name}-{trial.action}-{trial.service}"
    )
    try:
        await deployment.start()
    except StartFailed as exc:
        return result.Row.failed(name, str(exc), shape=shape.name, action=trial.action, process=target)
    try:
        return await _disrupted(deployment, shape, trial, target, name, mix, settings)
    finally:
        await deployment.stop()


async def _disrupted(
    deployment: Deployment,
    shape: Placement,
    trial: Trial,
    target: str,
    name: str,
    mix: Mix,
    settings: Settings,
) -> result.Row:
    edge = deployment.edge_url
    before = _process(deployment.state, target)
    state_file = deployment.dir / "state" / "state.json"
    watch_mail = trial.action == "kill" and MAILER in before["services"]
    trace = Trace(settings.rate)
    trace.begin(settings.duration)
    load = asyncio.create_task(failure_trace.run(trace, edge, mix, timeout=settings.timeout))
    await asyncio.sleep(max(0.0, settings.at - trace.now()))
    orders: list[str | None] = []
    if watch_mail:
        orders.append(await place_order(edge, settings.timeout))  # accepted just before the kill
    t0 = trace.now()
    detail: dict[str, Any] = {}
    keeper = asyncio.create_task(_keep_loading(trace, settings.tail))
    mail: asyncio.Task[dict[str, Any]] | None = None
    try:
        if trial.action == "rollout":
            detail = await _rollout(deployment.dir / "state", trial.service)
        else:
            os.kill(int(before["pid"]), signal.SIGKILL if trial.action == "kill" else signal.SIGTERM)
            if watch_mail and "frontend" not in before["services"]:
                orders.append(await place_order(edge, settings.timeout))  # while the mailer is down
        if watch_mail:  # watched beside the load: when the mails came, not when the run ended
            since = trace.started + t0
            mail = asyncio.create_task(mailed(deployment.dir / "data", orders, since, settings.settle))
        if trial.action != "rollout":
            await _back(state_file, target, int(before["pid"]), 60.0)
    except BaseException:
        load.cancel()
        if mail is not None:
            mail.cancel()
        raise
    finally:
        keeper.cancel()
    back_s = trace.now() - t0
    trace.extend(trace.now() + settings.tail)
    await load
    figures = failure_trace.analyse(trace.calls, t0, back_s)
    extra: dict[str, Any] = {
        "shape": shape.name,
        "action": trial.action,
        "service": trial.service,
        "process": target,
        "rate": settings.rate,
        "t0_s": round(t0, 3),
        "back_s": round(back_s, 3),
        **detail,
        **{k: v for k, v in figures.items() if k not in ("p50_ms", "p99_ms")},
        "timeline": failure_trace.timeline(trace.calls, trace.now()),
    }
    if mail is not None:
        extra["events"] = await mail
    elapsed = max(c.end for c in trace.calls) if trace.calls else 0.0
    ok = sum(c.ok for c in trace.calls)
    return result.Row(
        name,
        p50_ms=figures["p50_ms"],
        p99_ms=figures["p99_ms"],
        throughput=round(ok / elapsed, 2) if elapsed else None,
        startup_s=round(deployment.startup_s, 3) if deployment.startup_s is not None else None,
        errors=figures["failed"],
        extra=extra,
    )


def _process(state: dict[str, Any], name: str) -> dict[str, Any]:
    for process in state.get("processes", []):
        if process["name"] == name:
            return dict(process)
    raise StartFailed(f"no process {name!r} in the deployment")


async def _keep_loading(trace: Trace, tail: float) -> None:
    """While the process is down or rolling out, the load goes on."""
    while True:
        trace.extend(trace.now() + tail)
        await asyncio.sleep(0.1)


async def _back(state_file: Path, name: str, old_pid: int, within: float) -> None:
    """Until the supervisor reports a new ``name`` process ready (its state file is rewritten at
    every change)."""
    async with asyncio.timeout(within):
        while True:
            with contextlib.suppress(OSError, ValueError):
                state = msgspec.json.decode(await asyncio.to_thread(state_file.read_bytes))
                if any(
                    p["name"] == name and p.get("pid") != old_pid and p.get("ready")
                    for p in state.get("processes", [])
                ):
                    return
            await asyncio.sleep(0.02)


async def _rollout(state_dir: Path, service: str) -> dict[str, Any]:
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "archipel", "rollout", service, "--state-dir", str(state_dir)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    if process.returncode != 0:
        raise RuntimeError(
            f"archipel rollout {service} exited with {process.returncode}: {output.decode()[-300:]}"
        )
    return {"rollout_s": round(time.perf_counter() - started, 3)}


# -- the table ----------------------------------------------------------------------------------


def markdown(the_result: result.Result) -> str:
    machine = the_result.machine
    parameters = the_result.parameters
    lines = [
        f"## {the_result.scenario}",
        "",
        f"{the_result.started}, {machine.cpus} CPUs ({machine.model}), Python {machine.python}; "
        f"{parameters['rate']:g} calls/s open loop, disruption at {parameters['at_s']:g} s",
        "",
        "| trial | calls | failed | failed % | unavailable s | steady again s | back s "
        "| failed during the outage, per call | orders mailed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in the_result.rows:
        if row.failure is not None:
            lines.append(f"| {row.name} | failed: {row.failure[:200]} |" + " |" * 7)
            continue
        x = row.extra
        per_call = ", ".join(
            f"{call} {figures['fraction']:.0%}"
            for call, figures in x["per_call"].items()
            if figures["failed"]
        )
        events = x.get("events")
        mails = ""
        if events:
            mails = f"{events['orders_mailed']}/{events['orders_accepted']}"
            if events["mailed_after_s"] is not None:
                mails += f" in {events['mailed_after_s']:.1f} s"
        steady = "never" if x["steady_s"] is None else f"{x['steady_s']:.2f}"
        lines.append(
            f"| {row.name} | {x['calls']} | {x['failed']} | {x['failed_fraction']:.1%} "
            f"| {x['unavailable_s']:.2f} | {steady} | {x['back_s']:.2f} | {per_call or 'none'} | {mails} |"
        )
    lines += [
        "",
        "unavailable: first to last failed call; steady again: from the disruption to the first "
        f"{failure_trace.STEADY_S:g} s, after the first failure, in which every call succeeded; "
        "back: the restarted process ready, or the rollout done; per call: the share of each call "
        "of the mix that failed from "
        "the disruption until the process was back and the last failure over (the others all "
        "succeeded); orders mailed: of the orders accepted around the kill of the mailer, how many "
        "got both mails, and how long after the kill.",
    ]
    return "\n".join(lines) + "\n"


def save(the_result: result.Result, out: Path) -> list[Path]:
    stem = out / f"failure-{the_result.started.replace(':', '')[:15]}"
    json_path = result.write(the_result, stem.with_suffix(".json"))
    table = stem.with_suffix(".md")
    table.write_text(markdown(the_result))
    panels = [(row.name, row.extra) for row in the_result.rows if row.failure is None]
    return [json_path, table, *failure_trace.plot(panels, the_result.scenario, stem)]


async def run(
    pairs: Sequence[tuple[Placement, Trial]], mix: Mix, settings: Settings, parameters: dict[str, Any]
) -> result.Result:
    the_result = result.new_result(
        "a failure and an update, per shape (the shop, Online Boutique's mix)", parameters
    )
    with tempfile.TemporaryDirectory(prefix="archipel-failure-") as workdir:
        for shape, trial in pairs:
            print(
                f"{shape.name}: {trial.action} {process_of(shape, trial.service)} ...",
                file=sys.stderr,
                flush=True,
            )
            try:
                row = await run_trial(shape, trial, mix, settings, Path(workdir))
            except (RuntimeError, TimeoutError) as exc:
                row = result.Row.failed(
                    f"{shape.name}: {trial.action} {process_of(shape, trial.service)}",
                    f"{type(exc).__name__}: {exc}",
                )
            the_result.rows.append(row)
    return the_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=40.0, help="open-loop calls per second")
    parser.add_argument(
        "--duration",
        type=float,
        default=15.0,
        help="seconds of load per trial (more while a process is down)",
    )
    parser.add_argument("--shapes", default="monolith,microservices,mixed", help=f"among {', '.join(SHAPES)}")
    parser.add_argument(
        "--trials",
        default="",
        help="ACTION or ACTION:SERVICE, comma-separated (default: all); actions: " + ", ".join(ACTIONS),
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of a few seconds per trial, not a measurement"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    out = args.out.resolve()
    os.chdir(ROOT)  # the app and the mix are named from the repository's root
    try:
        shapes = [SHAPES[s.strip()] for s in args.shapes.split(",") if s.strip()]
    except KeyError as exc:
        parser.error(f"--shapes: no shape {exc.args[0]!r}; choose among {', '.join(SHAPES)}")
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    duration = 4.0 if args.quick else args.duration
    settings = Settings(
        rate=args.rate,
        duration=duration,
        at=round(max(1.0, duration / 3), 2),
        tail=2.5 if args.quick else 3.0,
        timeout=5.0,
        settle=30.0 if args.quick else 60.0,
    )
    mix = from_locustfile(MIX)
    try:
        pairs = plan(
            shapes, [t.strip() for t in args.trials.split(",") if t.strip()], list(load_app(APP).specs)
        )
    except Refused as exc:
        parser.error(str(exc))
    parameters = {
        "app": APP,
        "mix": mix.source,
        "rate": settings.rate,
        "duration_s": settings.duration,
        "at_s": settings.at,
        "tail_s": settings.tail,
        "call_timeout_s": settings.timeout,
        "quick": args.quick,
        "shapes": {s.name: {"mode": s.mode, "groups": dict(s.groups)} for s in shapes},
        "trials": [f"{shape.name} {trial.name}" for shape, trial in pairs],
    }
    the_result = asyncio.run(run(pairs, mix, settings, parameters))
    written = save(the_result, out)
    print(markdown(the_result))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
