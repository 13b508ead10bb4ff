"""``archipel events dead|replay``: look at dead letters and re-drive them.

Dead letters are kept in the store of the service whose handler gave up (and published on
``{root}/$dead/{topic}``). Replaying one puts the original event, same id and attributes, back
into that service's outbox, addressed to the handler that failed: the running process's relay
hands it to that handler within a second (or the next start does), in-process. Nothing goes
through the broker, so no other consumer sees it again and a consumer needs no right to publish
what it consumes.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .._app import App
from .._errors import DefinitionError
from .._loader import AppNotFound, load_app
from .._state import DeadLetterRecord, Store, open_store

events = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Dead letters: list them, re-drive them."
)
console = Console(highlight=False)

AppArg = Annotated[str, typer.Argument(help="module:attribute or path/to/file.py[:attribute]")]
DataDir = Annotated[
    Path | None,
    typer.Option(
        envvar="ARCHIPEL_DATA_DIR", help="the deployment's data folder (default: .archipel/data/DEPLOYMENT)"
    ),
]
Deployment = Annotated[
    str | None, typer.Option(help="the deployment name given to `archipel run` (default: the app's name)")
]
StoreUrl = Annotated[
    str | None, typer.Option(envvar="ARCHIPEL_STORE_URL", help="postgresql://... when state lives there")
]


def _app(reference: str) -> App:
    try:
        app = load_app(reference)
        app.validate()
    except (AppNotFound, DefinitionError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    return app


async def _stores(app: App, data_dir: Path, url: str | None) -> list[Store]:
    folder = data_dir
    stores: list[Store] = []
    for name, spec in app.specs.items():
        if not spec.handlers:
            continue  # only consumers dead-letter
        if url is None and not (folder / f"{name}.sqlite3").exists():
            continue  # never ran here: nothing to list, and nothing to create
        store = open_store(name, data_dir=folder, url=url)
        await store.open()
        stores.append(store)
    return stores


def _folder(app: App, data_dir: Path | None, deployment: str | None) -> Path:
    return data_dir or Path(".archipel", "data", deployment or app.name)


async def _collect(app: App, data_dir: Path, url: str | None, limit: int) -> list[DeadLetterRecord]:
    letters: list[DeadLetterRecord] = []
    for store in await _stores(app, data_dir, url):
        try:
            letters += await store.list_dead(limit)
        finally:
            await store.close()
    return sorted(letters, key=lambda letter: letter.at)


@events.command()
def dead(
    app: AppArg,
    data_dir: DataDir = None,
    deployment: Deployment = None,
    store_url: StoreUrl = None,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
) -> None:
    """List the dead letters of APP: events a handler could not take, and why."""
    the_app = _app(app)
    letters = asyncio.run(_collect(the_app, _folder(the_app, data_dir, deployment), store_url, limit))
    if as_json:
        print(json.dumps([_as_dict(letter) for letter in letters], indent=2))
        return
    if not letters:
        console.print("no dead letters")
        return
    table = Table(title=f"{len(letters)} dead letter(s)")
    for column in ("id", "handler", "topic", "event", "reason"):
        table.add_column(column)
    for letter in letters:
        table.add_row(letter.id, letter.handler, letter.topic, letter.event_id, letter.reason)
    console.print(table)


@events.command()
def replay(
    app: AppArg,
    ids: Annotated[list[str] | None, typer.Argument(help="dead-letter ids (default: all)")] = None,
    data_dir: DataDir = None,
    deployment: Deployment = None,
    store_url: StoreUrl = None,
) -> None:
    """Re-drive dead letters of APP (all, or the ids given): each event is delivered again."""
    the_app = _app(app)
    folder = _folder(the_app, data_dir, deployment)
    replayed, missing = asyncio.run(_replay(the_app, folder, store_url, set(ids or [])))
    if missing:
        console.print(f"[bold red]error:[/] no dead letter with id {', '.join(sorted(missing))}")
        raise typer.Exit(1)
    console.print(f"replayed {replayed} dead letter(s)")


async def _replay(app: App, data_dir: Path, url: str | None, wanted: set[str]) -> tuple[int, set[str]]:
    replayed = 0
    found: set[str] = set()
    for store in await _stores(app, data_dir, url):
        try:
            letters = [d for d in await store.list_dead(10_000) if not wanted or d.id in wanted]
            for letter in letters:
                await store.enqueue(letter.to_outbox())
                await store.remove_dead([letter.id])
                found.add(letter.id)
                replayed += 1
        finally:
            await store.close()
    return replayed, wanted - found


def _as_dict(letter: DeadLetterRecord) -> dict[str, object]:
    return {
        "id": letter.id,
        "handler": letter.handler,
        "topic": letter.topic,
        "event_id": letter.event_id,
        "reason": letter.reason,
        "at": letter.at,
        "payload": letter.payload.decode("utf-8", "replace"),
    }
