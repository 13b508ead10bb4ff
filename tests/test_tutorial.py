"""docs/tutorial.md, executed: every code block in order, in one temporary folder; and its French
translation docs/tutorial.fr.md, whose code blocks must be byte-identical to the English ones.
Running the French page's blocks would run the same commands again, so for French "executed"
means: the same blocks as the English page, which runs in full.

Conventions of the page, read here:

- A fenced block whose info string has ``title="NAME"`` (```` ```python title="shop.py" ````)
  is written to NAME, replacing what was there.
- A ```` ```bash ```` block is run line by line with bash, from the folder, with this
  interpreter's folder (the project's venv) first on ``PATH``; each line must exit 0.
  - A line ending ``# background`` is a long-running ``archipel run``: it starts in the
    background, and the next line waits (bounded) until ``archipel status --json`` says every
    process is ready.
  - A line ending ``# -> TEXT`` must print TEXT; it is run again until it does, for at most
    ``WAIT`` seconds (what it shows may take a moment: a restart, an event's handler).
- Prose that says "Ctrl-C", the next ``# background`` line and the end of the page stop the
  running ``archipel run`` with SIGINT (the reader's Ctrl-C) and expect exit code 0.
- Other deployments may hold 8000 on this machine: the page's ``8000`` to ``8009`` become ten free
  ports in a row, chosen once, and every ``archipel run`` gets ``--port`` the first of them, as a
  reader's runs all use 8000. They are chosen outside the range the supervisor picks its own
  ports from (brokers, children on ``--port 0``, ``archipel bench``: ``free_port``) and outside
  the kernel's ephemeral range, so that no process started meanwhile, here or by another test on
  the machine, can take one between this choice and the bind.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from archipel._deploy.children import _ephemeral_range

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "tutorial.md"
PAGES = [PAGE, ROOT / "docs" / "tutorial.fr.md"]
WAIT = 60.0  # seconds a `# -> TEXT` line or a start-up may take, on a busy 2-core machine
COMMAND_TIMEOUT = 300.0  # one command: `pytest` over three topologies, `archipel bench --quick`

FENCE = re.compile(r"^```(\S*)([^\n]*)\n(.*?)^```\s*$", re.M | re.S)
TITLE = re.compile(r'title="([^"]+)"')
MARKER = re.compile(r"\s+#\s+(background|-> (.+))$")


@dataclass(frozen=True)
class Block:
    language: str
    title: str | None
    body: str
    prose: str  # the page's text between the previous block and this one


def blocks(page: str) -> list[Block]:
    found, end = [], 0
    for match in FENCE.finditer(page):
        title = TITLE.search(match[2])
        found.append(Block(match[1], title[1] if title else None, match[3], page[end : match.start()]))
        end = match.end()
    return found


def headings(page: str) -> list[str]:
    """Each heading's level and number (``## 4.``), outside code blocks."""
    prose = FENCE.sub("", page)
    return [re.sub(r"^(#+ (?:\d+\.)?).*", r"\1", line) for line in prose.splitlines() if line.startswith("#")]


def port_band(count: int) -> range:
    """Where ``count`` consecutive ports may start, in a band that neither
    ``archipel._deploy.children.free_port`` (from 10000, or 1024 on a low ephemeral range, up to
    the ephemeral range) nor the kernel (the ephemeral range) hands out: above the ephemeral
    range, else below 10000 (where other programs' fixed ports, 8000 or 5432, are more likely)."""
    low, high = _ephemeral_range()
    picked_from = 10000 if low > 12000 else 1024  # as free_port
    for band in (range(high + 1, 65536 - count), range(1024, picked_from - count)):
        if len(band) >= 100:
            return band
    raise AssertionError(f"no room for the tutorial's ports beside {picked_from}..{high}")


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free now, in ``port_band`` (checked, not held:
    nothing else on the machine picks ports there)."""
    band = port_band(count)
    for _ in range(200):
        base = random.choice(band)
        holders: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                holder = socket.socket()
                holders.append(holder)
                holder.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for holder in holders:
                holder.close()
        return base
    raise AssertionError(f"no {count} free ports in a row in {band}")


class Reader:
    """A reader at a terminal in ``folder``: runs the page's commands, one background run at most."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.base_port = free_ports(10)  # the page's 8000 to 8009, for the whole page
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        self.env.pop("ARCHIPEL_SECRET", None)  # the deployment makes and keeps its own, as a reader's
        self.background: subprocess.Popen[str] | None = None
        self.output: IO[str] | None = None

    def ports(self, line: str) -> str:
        return re.sub(r"\b800(\d)\b", lambda m: str(self.base_port + int(m[1])), line)

    def run(self, line: str) -> None:
        marker = MARKER.search(line)
        if marker and marker[1] == "background":
            self.start(line)
        elif marker:
            self.until_prints(self.ports(line), marker[2])
        else:
            self.once(self.ports(line))

    def once(self, command: str) -> str:
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{command!r} exited {result.returncode}:\n{output}"
        return output

    def until_prints(self, command: str, expected: str) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            output = self.once(command)
            if expected in output:
                return
            assert time.monotonic() < deadline, f"{command!r} never printed {expected!r}; last:\n{output}"
            time.sleep(0.2)  # polling a condition: a restart, an event's handler

    def start(self, command: str) -> None:
        self.stop()
        command = self.ports(command)
        if command.startswith("archipel run") and "--port" not in command:
            command = command.replace("archipel run", f"archipel run --port {self.base_port}", 1)
        # Its output goes to a file: a pipe nobody reads would fill and block it.
        self.output = (self.folder / "run.out").open("w")
        self.background = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=self.folder,
            env=self.env,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + WAIT
        status = ["archipel", "status", "--json"]
        while subprocess.run(status, cwd=self.folder, env=self.env, capture_output=True).returncode != 0:
            assert self.background.poll() is None, f"{command!r} stopped:\n{self.printed()}"
            assert time.monotonic() < deadline, f"{command!r} was not ready within {WAIT} s"
            time.sleep(0.2)  # the state file appears once every process is ready

    def stop(self) -> None:
        """The reader's Ctrl-C."""
        running, self.background = self.background, None
        if running is None:
            return
        running.send_signal(signal.SIGINT)
        try:
            running.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            running.kill()
            running.wait()
            raise AssertionError(f"archipel run did not stop on Ctrl-C:\n{self.printed()}") from None
        assert running.returncode == 0, f"archipel run exited {running.returncode}:\n{self.printed()}"

    def printed(self) -> str:
        if self.output is not None:
            self.output.flush()
        return (self.folder / "run.out").read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_page_uses_its_conventions_only(page: Path) -> None:
    """Every block is a file to write or commands to run: nothing on the page goes untested."""
    found = blocks(page.read_text())
    assert found, f"no code block in {page}"
    for block in found:
        assert block.title is not None or block.language == "bash", f"neither written nor run:\n{block}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_block_of_the_tutorial_runs_in_order(page: Path, tmp_path: Path) -> None:
    if page != PAGE:
        # The translation's blocks, byte for byte, in order: what runs below for the English page.
        english = [(b.language, b.title, b.body) for b in blocks(PAGE.read_text())]
        assert [(b.language, b.title, b.body) for b in blocks(page.read_text())] == english
        assert headings(page.read_text()) == headings(PAGE.read_text()), "not the same headings"
        return
    reader = Reader(tmp_path)
    try:
        for block in blocks(PAGE.read_text()):
            if "Ctrl-C" in block.prose:
                reader.stop()
            if block.title is not None:
                (tmp_path / block.title).write_text(block.body)
                continue
            for line in block.body.splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    reader.run(line)
        reader.stop()
    finally:
        if reader.background is not None and reader.background.poll() is None:
            reader.background.kill()
            reader.background.wait()
    # What the page says these commands wrote.
    assert (tmp_path / "deploy" / "compose" / "microservices" / "compose.yaml").is_file()
    assert (tmp_path / "deploy" / "kubernetes" / "microservices" / "kustomization.yaml").is_file()
    [result] = (tmp_path / ".archipel" / "bench").glob("*.json")
    rows = json.loads(result.read_text())["rows"]
    assert {r["name"].split()[0] for r in rows} == {"monolith", "microservices"}
    assert [(r["name"], r["failure"], r["errors"]) for r in rows if r["failure"] or r["errors"]] == []


def test_the_tutorial_code_is_typed_and_lint_clean(tmp_path: Path) -> None:
    """What the page asks a reader to write passes `ruff` at its defaults and `mypy --strict`,
    checked as the files stand before one is replaced and at the end."""

    def check() -> None:
        sources = sorted(str(p) for p in tmp_path.glob("*.py"))
        for command in (
            ["ruff", "check", "--isolated", "--select", "E,F,I,UP,B", "--line-length", "110", *sources],
            ["ruff", "format", "--isolated", "--line-length", "110", "--check", *sources],
            ["mypy", "--strict", "--python-executable", sys.executable, *sources],
        ):
            tool = [sys.executable, "-m", *command]
            result = subprocess.run(
                tool, cwd=tmp_path, env={**os.environ, "MYPYPATH": str(ROOT)}, capture_output=True, text=True
            )
            assert result.returncode == 0, f"{' '.join(command[:2])}:\n{result.stdout}{result.stderr}"

    for block in blocks(PAGE.read_text()):
        if block.title is None or not block.title.endswith(".py"):
            continue
        if (tmp_path / block.title).exists():
            check()
        (tmp_path / block.title).write_text(block.body)
    check()
