"""``archipel rollout`` and ``archipel scale``: change a running local cluster without stopping it.

Both talk to the supervisor of ``archipel run`` through its control socket (``_deploy.control``)
and print its progress as it happens."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from .control import ControlError, request

CONTROL_SOCKET = "control.sock"
console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)
StateDir = Annotated[Path, typer.Option(help="Where the running deployment keeps its state.")]


def rollout(
    service: Annotated[str, typer.Argument(help="a service (its process is rolled out) or a process")],
    state_dir: StateDir = Path(".archipel"),
) -> None:
    """Replace SERVICE's replicas one at a time with the code on disk now: start a new one, wait
    until it is ready, then drain an old one (out of rotation, finish its calls and events, exit)."""
    result = _send(state_dir, {"command": "rollout", "service": service})
    console.print(f"[green]done:[/] {result['replaced']} replica(s) of {result['process']} replaced")


def scale(
    target: Annotated[str, typer.Argument(metavar="SERVICE=N", help="e.g. checkout=3")],
    state_dir: StateDir = Path(".archipel"),
) -> None:
    """Add or remove replicas of SERVICE's process until it has N; removed ones drain first."""
    service, equals, count = target.partition("=")
    if not equals or not service or not count.strip().isdigit():
        errors.print(f"[bold red]error:[/] {escape(repr(target))} is not SERVICE=N (e.g. checkout=3)")
        raise typer.Exit(2)
    result = _send(state_dir, {"command": "scale", "service": service.strip(), "replicas": int(count)})
    console.print(f"[green]done:[/] {result['process']} has {result['replicas']} replica(s)")


def _progress(text: str) -> None:
    console.print(escape(text))


def _send(state_dir: Path, message: dict[str, Any]) -> Any:
    try:
        return asyncio.run(request(state_dir / CONTROL_SOCKET, message, _progress))
    except ControlError as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
