"""The ``archipel`` command: run an app as a monolith or as microservices, and look at it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ._bench.command import bench
from ._bench.plan_command import plan
from ._deploy.auth_commands import broker_files
from ._deploy.cluster_commands import CONTROL_SOCKET, rollout, scale
from ._deploy.deploy_commands import deploy
from ._deploy.loading import command_app, command_settings, fail
from ._deploy.log_commands import logs
from ._deploy.operator import broker_login, call, token
from ._deploy.plan import MODES, settings_plan
from ._deploy.statefile import is_stopped, pid_alive, read_state
from ._deploy.supervisor import Companion, StartupError, Supervisor
from ._errors import DefinitionError
from ._events.commands import events
from ._model import Service
from ._rpc.openapi import openapi_document
from ._security.tls import TlsFiles
from ._telemetry.logs import (
    FORMAT_VAR,
    BadLogSetting,
    LogSettings,
    configure_logging,
    log_settings,
    parse_format,
)

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
cli.add_typer(events, name="events")
cli.add_typer(broker_files)  # archipel broker-auth, archipel keyring
cli.add_typer(deploy, name="deploy")  # archipel deploy docker|compose|kubernetes|secrets
cli.command()(call)
cli.command()(token)
cli.command("broker-login")(broker_login)
cli.command()(rollout)
cli.command()(scale)
cli.command()(bench)
cli.command()(plan)
console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

STATE_FILE = "state.json"
StateDir = Annotated[Path, typer.Option(help="Where the running deployment keeps its state.")]


_fail = fail
_settings = command_settings
_load = command_app


@cli.command()
def run(
    app: Annotated[str | None, typer.Argument(help="module:attribute or path/to/file.py[:attribute]")] = None,
    mode: Annotated[str | None, typer.Option(help="monolith or microservices")] = None,
    broker: Annotated[
        str | None, typer.Option(help="'embedded' (private Mosquitto), 'rumqttd' or mqtt://host:port")
    ] = None,
    deployment: Annotated[
        str | None, typer.Option(help="topic root and client-id prefix; default: the app's name")
    ] = None,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option(help="first port; 0 picks free ports")] = None,
    broker_port: Annotated[int, typer.Option(help="the embedded broker's port; 0 picks a free one")] = 0,
    data_dir: Annotated[
        Path | None, typer.Option(help="the deployment's data; default STATE_DIR/data/DEPLOYMENT")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="archipel.toml or pyproject.toml")] = None,
    log_format: Annotated[
        str | None, typer.Option(help="text or json, for every process (default: ARCHIPEL_LOG_FORMAT)")
    ] = None,
    state_dir: StateDir = Path(".archipel"),
    quiet: Annotated[bool, typer.Option(help="do not echo the processes' output")] = False,
    dashboard: Annotated[bool, typer.Option(help="serve the live dashboard on 127.0.0.1")] = True,
    dashboard_port: Annotated[int, typer.Option(help="the dashboard's port; 0 picks a free one")] = 0,
    dashboard_controls: Annotated[
        bool, typer.Option(help="let the dashboard stop, pause and resume processes")
    ] = False,
) -> None:
    """Start every process of APP, wait until each is ready, and stop them all on Ctrl-C,
    SIGTERM or SIGHUP."""
    settings = _settings(config)
    reference, the_app = _load(app, settings)
    chosen_mode = mode or settings.mode
    if chosen_mode not in MODES:
        _fail(f"--mode must be one of {', '.join(MODES)}, not {chosen_mode!r}")
    logging_settings = _log_settings(log_format)  # before the supervisor copies the environment
    try:
        the_plan = settings_plan(
            reference,
            the_app,
            settings,
            mode=chosen_mode,
            broker=broker,
            deployment=deployment,
            port=port,
        )
        supervisor = Supervisor.from_plan(
            the_plan,
            host=host or settings.host,
            echo=None if quiet else _echo,
            data_dir=data_dir or settings.data_dir or state_dir / "data" / the_plan.deployment,
            broker_port=broker_port,
            state_file=state_dir / STATE_FILE,
            control_socket=state_dir / CONTROL_SOCKET,
            env=TlsFiles(settings.tls.cert, settings.tls.key, settings.tls.ca).env(),
            companion=_dashboard(dashboard_port, dashboard_controls) if dashboard else None,
        )
    except (DefinitionError, ValueError) as exc:
        _fail(str(exc))
    configure_logging(logging_settings, process="supervisor")
    code = asyncio.run(_serve(supervisor))
    raise typer.Exit(code)


def _echo(label: str, line: str) -> None:
    print(f"{label:>14} | {line}", flush=True)


def _log_settings(log_format: str | None) -> LogSettings:
    """``ARCHIPEL_LOG_*``, with --log-format first; every process inherits the format."""
    try:
        chosen = log_settings(os.environ)
        if log_format is not None:
            chosen = LogSettings(format=parse_format(log_format), level=chosen.level, quiet=chosen.quiet)
    except BadLogSetting as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(f"--log-format {log_format!r}: {exc}")
    os.environ[FORMAT_VAR] = chosen.format
    return chosen


def _dashboard(port: int, controls: bool) -> Callable[[Supervisor], Companion]:
    """The live dashboard on 127.0.0.1 (imported only when served: it brings its web server)."""

    def make(supervisor: Supervisor) -> Companion:
        from ._dashboard import Dashboard

        return Dashboard(supervisor, port=port, controls=controls)

    return make


async def _serve(supervisor: Supervisor) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(supervisor.start())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal during start-up: start() stops what it started
        starting.cancel()
    try:
        await starting
    except StartupError as exc:
        errors.print(f"[bold red]start-up failed:[/] {exc}")
        return 1
    except asyncio.CancelledError:
        console.print("stopped during start-up")
        return 1
    _print_table(supervisor)
    try:
        await stopped
    finally:
        console.print("stopping...")
        await supervisor.stop()
    console.print("stopped")
    return 0


def _print_table(supervisor: Supervisor) -> None:
    table = Table(title=f"{supervisor.deployment} ({supervisor.app.name}) as {supervisor.mode}")
    for column in ("service", "process", "pid", "url"):
        table.add_column(column)
    for child in supervisor.children:
        for service in child.services:
            table.add_row(service, child.label, str(child.pid), child.url)
    console.print(table)
    if supervisor.broker_url:
        kind = "external" if supervisor.broker_kind == "url" else supervisor.broker_kind
        where = f", data in {supervisor.broker_dir}" if supervisor.broker_kind == "mosquitto" else ""
        console.print(f"events: {supervisor.broker_url} ({kind}{where})")
        if not supervisor.durable:
            console.print("clean MQTT sessions: events published while a consumer is down are lost")
    for child in supervisor.children:
        for service in child.services:
            if supervisor.app.specs[service].cls.asgi_app is not Service.asgi_app:
                console.print(f"[bold]{service}[/] serves its pages at [bold]{child.url}/[/]")
    if supervisor.mode == "microservices":
        console.print(
            f"internal methods need a credential (secret from {supervisor.secret_source}): "
            "`archipel token SERVICE` for curl, `archipel call SERVICE.METHOD '{...}'`"
        )
    if supervisor.dashboard is not None:
        console.print(f"dashboard: [bold]{supervisor.dashboard.url}[/]")
    console.print("ready (Ctrl-C stops everything)", style="green")


@cli.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    state_dir: StateDir = Path(".archipel"),
) -> None:
    """Show the deployment started by `archipel run` from this folder; exit code 1 if none runs."""
    data = read_state(state_dir / STATE_FILE)
    if data is None or not pid_alive(data.get("supervisor_pid"), data.get("supervisor_started")):
        if as_json:
            print(json.dumps({"running": False, "processes": []}))
        else:
            console.print(f"not running (no live `archipel run` keeps its state in {state_dir})")
        raise typer.Exit(1)
    now = time.time()
    data["running"] = True
    data["supervisor_stopped"] = is_stopped(data["supervisor_pid"])
    for process in data["processes"]:
        process["alive"] = pid_alive(process.get("pid"))
        since = process.get("since")
        process["uptime"] = round(now - since, 1) if isinstance(since, float | int) else None
    if as_json:
        print(json.dumps(data, indent=2))
        return
    _print_status(data)


cli.command()(logs)  # archipel logs SERVICE: beside status, what its processes wrote


def _print_status(data: dict[str, Any]) -> None:
    table = Table(title=f"{data['deployment']} ({data['app']}) as {data['mode']}")
    for column in ("replica", "pid", "health", "up", "restarts", "exit", "version", "address"):
        table.add_column(column, no_wrap=column in ("replica", "health", "version", "address"))
    for process in data["processes"]:
        uptime, last_exit = process["uptime"], process["last_exit_code"]
        label = process["name"] if not process["replica"] else f"{process['name']}#{process['replica']}"
        services = process["services"]
        if services != [process["name"]]:  # a group: what it hosts, in a word when it is many
            label += f" ({', '.join(services)})" if len(services) <= 2 else f" ({len(services)} services)"
        health = process.get("health") or ("ready" if process.get("ready") else "starting")
        table.add_row(
            label,
            str(process["pid"]) if process["alive"] else "-",
            health if process["alive"] else "down",
            "-" if uptime is None else f"{uptime:.0f}s",
            str(process["restarts"]),
            "-" if last_exit is None else str(last_exit),
            (process.get("version") or "-")[:7],
            process["url"].split("://", 1)[-1],
        )
    looked_at = data.get("external_health") or {}
    for service, urls in (data.get("external") or {}).items():  # started elsewhere: only looked at
        states = ", ".join(looked_at.get(url, "unknown") for url in urls)
        table.add_row(f"{service} (external)", "-", states, "-", "-", "-", "-", ", ".join(urls))
    console.print(table)
    if data.get("dashboard"):
        console.print(f"dashboard: {data['dashboard']}")
    if data["supervisor_stopped"]:
        console.print(
            f"[bold yellow]the supervisor (pid {data['supervisor_pid']}) is stopped:[/] nothing is "
            "restarted or updated here until it continues (SIGCONT, or `fg`)"
        )
    security = data.get("security") or {}
    if security:
        calls = (
            "authenticated"
            if security.get("authenticated_calls")
            else "NOT authenticated (authenticate = false)"
        )
        opened = ", open: " + ", ".join(security["open_endpoints"]) if security.get("open_endpoints") else ""
        logins = security.get("broker_logins")
        broker = (
            "" if logins is None else f"; broker logins {'on' if logins else 'off (rumqttd checks none)'}"
        )
        console.print(f"internal calls {calls}{broker}; TLS {'on' if security.get('tls') else 'off'}{opened}")
    if data.get("broker"):
        pid = f", pid {data['broker_pid']}" if data.get("broker_pid") else ""
        error = f"; last error: {data['broker_error']}" if data.get("broker_error") else ""
        console.print(
            f"broker {data['broker']} ({data['broker_kind']}{pid}): {data['broker_health']}, "
            f"{data['broker_restarts']} restart(s){error}"
        )


@cli.command()
def check(app: Annotated[str | None, typer.Argument()] = None, config: Path | None = None) -> None:
    """Load APP and check every service definition; list services, RPC methods and events."""
    _, the_app = _load(app, _settings(config))
    table = Table(title=f"app {the_app.name}")
    for column in ("service", "rpc methods", "handles", "emits", "depends on"):
        table.add_column(column)
    for spec in the_app.specs.values():
        marks = {
            m: [w for w, on in (("public", s.public), ("idempotent", s.idempotent)) if on]
            for m, s in spec.methods.items()
        }
        table.add_row(
            spec.name,
            ", ".join(f"{m} ({', '.join(w)})" if w else m for m, w in marks.items()),
            ", ".join(f"{h.topic} -> {h.name}" for h in spec.handlers),
            ", ".join(e.__topic__ for e in spec.emits),
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
def asyncapi(
    app: Annotated[str | None, typer.Argument(help="module:attribute or path/to/file.py[:attribute]")] = None,
    out: Annotated[Path | None, typer.Option(help="write the document here instead of to stdout")] = None,
    deployment: Annotated[str | None, typer.Option(help="the topic root; default: the app's name")] = None,
    config: Path | None = None,
) -> None:
    """Print the AsyncAPI 3.0.0 document of every event of APP: topics, payloads, who sends and
    who receives. The broker is the configured one when it is an mqtt:// URL."""
    from ._events.asyncapi import asyncapi_document

    settings = _settings(config)
    _, the_app = _load(app, settings)
    url = settings.broker if settings.broker.startswith(("mqtt://", "mqtts://")) else None
    try:
        document = asyncapi_document(the_app, root=deployment or settings.deployment, broker=url)
    except ValueError as exc:
        _fail(str(exc))
    text = json.dumps(document, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text)
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror or exc}")
    errors.print(f"wrote {out}")


@cli.command()
def broker(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 1883,
    data_dir: Annotated[Path, typer.Option(help="where Mosquitto keeps its database")] = Path(
        ".archipel/broker"
    ),
    rumqttd: Annotated[bool, typer.Option(help="run rumqttd (nothing kept on disk) instead")] = False,
) -> None:
    """Run the embedded MQTT 5 broker in the foreground: Mosquitto configured as `archipel run` does."""
    from ._deploy import broker as _broker
    from ._deploy.mosquitto import find_mosquitto, mosquitto_command, write_config

    binary = None if rumqttd else find_mosquitto()
    if binary is None:
        if not rumqttd:
            errors.print("[bold yellow]warning:[/] mosquitto is not installed: running rumqttd instead")
        _broker.main(["--host", host, "--port", str(port)])
        return
    folder = data_dir.absolute()
    config = write_config(folder, host, port)
    console.print(f"mosquitto on mqtt://{host}:{port}, data in {folder} (Ctrl-C stops it)")
    os.chdir(folder)  # the config's persistence_location is relative to it
    os.execv(binary, mosquitto_command(binary, config))


def main() -> None:
    # Like `python -m`, let APP name modules of the current folder.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    cli()
