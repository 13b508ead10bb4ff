"""The ``archipel`` command: run an app as a monolith or as microservices, and look at it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

from ._deploy.plan import MODES, Mode, plan
from ._deploy.settings import ConfigError, Settings, find_settings, load_settings
from ._deploy.supervisor import StartupError, Supervisor
from ._errors import DefinitionError
from ._loader import AppNotFound, load_app
from ._model import Service
from ._rpc.openapi import openapi_document

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

STATE_FILE = "state.json"
StateDir = Annotated[Path, typer.Option(help="Where the running deployment's state is kept.")]


def _fail(message: str, code: int = 2) -> None:
    errors.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config) if config else find_settings()
    except ConfigError as exc:
        _fail(str(exc))
        raise


def _load(reference: str | None, settings: Settings) -> tuple[str, Any]:
    reference = reference or settings.app
    if not reference:
        _fail("no app given: pass APP (module:attribute or file.py) or set app in archipel.toml")
    assert reference is not None
    try:
        app = load_app(reference)
        app.validate()
    except (AppNotFound, DefinitionError) as exc:
        _fail(str(exc))
    return reference, app


@cli.command()
def run(
    app: Annotated[str | None, typer.Argument(help="module:attribute or path/to/file.py[:attribute]")] = None,
    mode: Annotated[str | None, typer.Option(help="monolith or microservices")] = None,
    broker: Annotated[str | None, typer.Option(help="'embedded' or mqtt://host:port")] = None,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option(help="first port; 0 picks free ports")] = None,
    config: Annotated[Path | None, typer.Option(help="archipel.toml or pyproject.toml")] = None,
    state_dir: StateDir = Path(".archipel"),
    quiet: Annotated[bool, typer.Option(help="do not echo the processes' output")] = False,
) -> None:
    """Start every process of APP, wait until each is ready, and stop them all on Ctrl-C/SIGTERM."""
    settings = _settings(config)
    reference, the_app = _load(app, settings)
    chosen_mode = mode or settings.mode
    if chosen_mode not in MODES:
        _fail(f"--mode must be one of {', '.join(MODES)}, not {chosen_mode!r}")
    try:
        plans = plan(the_app, cast(Mode, chosen_mode), settings.groups, settings.replicas)
    except DefinitionError as exc:
        _fail(str(exc))
    supervisor = Supervisor(
        reference,
        the_app,
        plans,
        mode=cast(Mode, chosen_mode),
        broker=broker or settings.broker,
        host=host or settings.host,
        port=settings.port if port is None else port,
        echo=None if quiet else _echo,
    )
    code = asyncio.run(_serve(supervisor, state_dir))
    raise typer.Exit(code)


def _echo(label: str, line: str) -> None:
    print(f"{label:>14} | {line}", flush=True)


async def _serve(supervisor: Supervisor, state_dir: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await supervisor.start()
    except StartupError as exc:
        errors.print(f"[bold red]start-up failed:[/] {exc}")
        return 1
    state = _write_state(state_dir, supervisor.status())
    _print_table(supervisor)
    try:
        await stop.wait()
    finally:
        console.print("stopping...")
        await supervisor.stop()
        _remove_state(state)
    console.print("stopped")
    return 0


def _write_state(state_dir: Path, status: dict[str, object]) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    state = state_dir / STATE_FILE
    state.write_text(json.dumps(status, indent=2))
    return state


def _remove_state(state: Path) -> None:
    state.unlink(missing_ok=True)


def _print_table(supervisor: Supervisor) -> None:
    table = Table(title=f"{supervisor.app.name} as {supervisor.mode}")
    for column in ("service", "process", "pid", "url"):
        table.add_column(column)
    for child in supervisor.children:
        for service in child.services:
            table.add_row(service, child.label, str(child.pid), child.url)
    console.print(table)
    if supervisor.broker_url:
        console.print(f"events: {supervisor.broker_url}")
    for child in supervisor.children:
        for service in child.services:
            if supervisor.app.specs[service].cls.asgi_app is not Service.asgi_app:
                console.print(f"[bold]{service}[/] serves its pages at [bold]{child.url}/[/]")
    console.print("ready (Ctrl-C stops everything)", style="green")


@cli.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    state_dir: StateDir = Path(".archipel"),
) -> None:
    """Show the deployment started by `archipel run` from this folder."""
    state = state_dir / STATE_FILE
    if not state.exists():
        if as_json:
            print(json.dumps({"running": False, "processes": []}))
        else:
            console.print(f"nothing is running (no state in {state_dir})")
        raise typer.Exit(1)
    data = json.loads(state.read_text())
    data["running"] = _alive(data.get("supervisor_pid"))
    for process in data["processes"]:
        process["alive"] = _alive(process.get("pid"))
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(title=f"{data['app']} as {data['mode']}")
    for column in ("process", "services", "pid", "alive", "url"):
        table.add_column(column)
    for process in data["processes"]:
        table.add_row(
            process["name"],
            ", ".join(process["services"]),
            str(process["pid"]),
            str(process["alive"]),
            process["url"],
        )
    console.print(table)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@cli.command()
def check(app: Annotated[str | None, typer.Argument()] = None, config: Path | None = None) -> None:
    """Load APP and check every service definition; list services, RPC methods and events."""
    _, the_app = _load(app, _settings(config))
    table = Table(title=f"app {the_app.name}")
    for column in ("service", "rpc methods", "handles", "depends on"):
        table.add_column(column)
    for spec in the_app.specs.values():
        table.add_row(
            spec.name,
            ", ".join(f"{m}{' (idempotent)' if s.idempotent else ''}" for m, s in spec.methods.items()),
            ", ".join(f"{h.topic} -> {h.name}" for h in spec.handlers),
            ", ".join(d.__service_name__ for d in spec.dependencies.values()),
        )
    console.print(table)
    console.print("ok", style="green")


@cli.command()
def openapi(app: Annotated[str | None, typer.Argument()] = None, config: Path | None = None) -> None:
    """Print the OpenAPI document of every RPC method of APP."""
    _, the_app = _load(app, _settings(config))
    print(json.dumps(openapi_document(the_app.name, the_app.specs.values()), indent=2))


@cli.command()
def broker(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 1883,
) -> None:
    """Run the embedded MQTT 5 broker in the foreground."""
    from ._deploy import broker as _broker

    sys.argv = ["archipel broker", "--host", host, "--port", str(port)]
    _broker.main()


def main() -> None:
    # Like `python -m`, let APP name modules of the current folder.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    cli()
