"""docs/reference.md never rots: its command reference is what scripts/cli_reference.py prints from
the CLI today, its configuration keys are the settings' fields, its API names are
``archipel.__all__``; and every ``archipel ...`` command the new pages name is a real one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import typer.main

import archipel
from archipel._deploy.settings import Settings
from archipel.cli import cli

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference.md"
START = "<!-- cli-reference:start (scripts/cli_reference.py --write) -->"
END = "<!-- cli-reference:end -->"
PAGES = ["reference.md", "production.md", "obstacles.md"]
INTERNAL_SETTINGS = {"source"}  # where the settings came from, not a key anyone writes


def _section(title: str) -> str:
    return PAGE.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _first_column(section: str) -> set[str]:
    """Every `name` in the first column of the section's table."""
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`([^`]+)`", cell)}


def test_the_command_reference_is_what_the_cli_prints() -> None:
    printed = subprocess.run(
        [sys.executable, "scripts/cli_reference.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    committed = PAGE.read_text().split(START, 1)[1].split(END, 1)[0]
    assert "### `archipel run`" in printed and "| `--mode` |" in printed
    assert committed.strip() == printed.strip(), (
        "docs/reference.md is out of date: run `python scripts/cli_reference.py --write`"
    )


def test_the_configuration_keys_are_the_settings_fields() -> None:
    fields = {field.name for field in msgspec.structs.fields(Settings)} - INTERNAL_SETTINGS
    assert _first_column(_section("Configuration: `archipel.toml`")) == fields


def test_the_public_api_names_are_archipel_all() -> None:
    assert _first_column(_section("Public API: `archipel`")) == set(archipel.__all__)


def _command_paths() -> set[tuple[str, ...]]:
    def walk(command: object, prefix: tuple[str, ...]) -> set[tuple[str, ...]]:
        found = {prefix}
        for name, sub in getattr(command, "commands", {}).items():  # typer's own click groups
            found |= walk(sub, (*prefix, name))
        return found

    return walk(typer.main.get_command(cli), ())


@pytest.mark.parametrize("page", PAGES)
def test_every_command_named_is_a_real_one(page: str) -> None:
    paths = _command_paths()
    text = (ROOT / "docs" / page).read_text()
    named = re.findall(r"`archipel ([a-z][a-z-]*)((?: [a-z][a-z|-]*)?)", text)
    assert named, f"{page} names no archipel command"
    for command, rest in named:
        assert (command,) in paths, f"{page} names `archipel {command}`, which does not exist"
        if len(_command_paths_under(paths, command)) > 1 and rest.strip():
            for sub in rest.strip().split("|"):  # `archipel deploy prometheus|grafana`
                assert (command, sub) in paths, f"{page} names `archipel {command} {sub}`"


def _command_paths_under(paths: set[tuple[str, ...]], command: str) -> set[tuple[str, ...]]:
    return {path for path in paths if path[:1] == (command,)}
