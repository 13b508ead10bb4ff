"""What the ``archipel`` commands share: the settings and the app they work on, each checked,
and one way to stop with a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from .._app import App
from .._errors import DefinitionError
from .._loader import AppNotFound, load_app
from .._resilience.policies import Policies
from .settings import ConfigError, Settings, find_settings, load_settings

errors = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 2) -> NoReturn:
    errors.print(f"[bold red]error:[/] {escape(message)}")  # a message may hold [brackets]
    raise typer.Exit(code)


def command_settings(config: Path | None) -> Settings:
    """``config``, else the nearest ``archipel.toml`` or ``pyproject.toml``; exits on a bad one."""
    try:
        return load_settings(config) if config else find_settings()
    except ConfigError as exc:
        fail(str(exc))


def command_app(reference: str | None, settings: Settings) -> tuple[str, App]:
    """The app named by ``reference`` or the settings, checked with its policies; exits if not."""
    reference = reference or settings.app
    if not reference:
        fail("no app given: pass APP (module:attribute or file.py) or set app in archipel.toml")
    try:
        app = load_app(reference)
        app.validate()
        Policies.from_config(settings.policies, app, source=settings.source or "")  # names a bad key
    except (AppNotFound, DefinitionError) as exc:
        fail(str(exc))
    return reference, app
