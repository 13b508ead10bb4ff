"""Every command's --help renders: help texts go through rich markup, where a stray ``[/X]`` is
a closing tag and crashes the help of that command (``archipel deploy docker --help`` did)."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from archipel.cli import cli


def _paths(command: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, sub in getattr(command, "commands", {}).items():  # a group (typer's own click types)
        found += _paths(sub, (*prefix, name))
    return found


COMMANDS = _paths(typer.main.get_command(cli))


def test_the_cli_has_its_commands() -> None:
    assert {("run",), ("status",), ("deploy",), ("logs",), ("plan",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "archipel")
def test_help_renders(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, f"archipel {' '.join(path)} --help: {result.output}{result.exception!r}"
    assert "Usage" in result.output
