"""Print the reference of the ``archipel`` command as Markdown, read from the CLI itself.

``python scripts/cli_reference.py`` prints it; ``--write`` puts it into docs/reference.md between
its markers. tests/test_reference_doc.py regenerates it and fails when the page differs, so the
page never describes a command, option or default that no longer exists.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer.main

from archipel.cli import cli

PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
START = "<!-- cli-reference:start (scripts/cli_reference.py --write) -->"
END = "<!-- cli-reference:end -->"


def _cell(text: str) -> str:
    """Text fit for one table cell: one line, no pipe or angle bracket read as Markdown or HTML."""
    flat = " ".join(text.split())
    return flat.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _summary(help_text: str | None) -> str:
    """A command's help up to its first blank line (what `--help` shows first)."""
    return _cell((help_text or "").strip().split("\n\n", 1)[0])


def _names(param: Any) -> str:
    if param.param_type_name == "argument":
        return f"`{param.name.upper()}`"
    names = [f"`{opt}`" for opt in param.opts]
    names += [f"`{opt}`" for opt in param.secondary_opts]
    return " / ".join(names)


def _default(param: Any) -> str:
    if param.param_type_name == "argument" and param.required:
        return "required"
    if param.required:
        return "required"
    default = param.default
    if default is None or default == () or default == []:
        return ""
    if isinstance(default, bool) and param.secondary_opts:
        return f"`{param.opts[0] if default else param.secondary_opts[0]}`"
    if isinstance(default, bool):  # a lone flag: off unless given
        return "on" if default else "off"
    return f"`{_cell(str(default))}`"


def _command(path: list[str], command: Any) -> list[str]:
    lines = [f"### `{' '.join(path)}`", "", _summary(command.help), ""]
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if params:
        lines += ["| argument or option | default | what it is |", "| --- | --- | --- |"]
        lines += [f"| {_names(p)} | {_default(p)} | {_cell(p.help or '')} |" for p in params]
        lines.append("")
    subcommands = getattr(command, "commands", {})  # a group (typer's own click types)
    for name in sorted(subcommands):
        lines += _command([*path, name], subcommands[name])
    return lines


def reference() -> str:
    """The CLI's reference: every command and subcommand, its help, arguments and options."""
    root = typer.main.get_command(cli)
    lines: list[str] = []
    for name in sorted(root.commands):  # type: ignore[attr-defined]
        lines += _command(["archipel", name], root.commands[name])  # type: ignore[attr-defined]
    return "\n".join(lines).rstrip() + "\n"


def page_with(reference_text: str, page: str) -> str:
    """``page`` with the text between its markers replaced by ``reference_text``."""
    if START not in page or END not in page:
        raise SystemExit(f"{PAGE} lacks its markers {START!r} and {END!r}")
    before, rest = page.split(START, 1)
    after = rest.split(END, 1)[1]
    return f"{before}{START}\n\n{reference_text}\n{END}{after}"


def main(argv: list[str]) -> None:
    text = reference()
    if argv == ["--write"]:
        PAGE.write_text(page_with(text, PAGE.read_text()))
    elif argv:
        raise SystemExit(f"unknown arguments {argv}: give none to print, or --write")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
