"""The load-test command of docs/boutique.md, run as written against a running shop (port filled in)."""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
from pathlib import Path

from boutique.app import app

from archipel.testing import run_app

ROOT = Path(__file__).resolve().parents[2]


def documented_command() -> str:
    docs = (ROOT / "docs" / "boutique.md").read_text()
    return next(line for line in docs.splitlines() if line.startswith("locust -f "))


async def test_documented_locust_command_runs_bounded_without_failures() -> None:
    command = documented_command()
    assert "--headless" in command and " -t " in command  # bounded, no web UI
    async with run_app(app, "monolith") as running:
        argv = shlex.split(command.replace("http://127.0.0.1:PORT", running.url_of("frontend")))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *argv,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 90)
    text = output.decode()
    assert process.returncode == 0, text[-3000:]
    # Locust prints its table every few seconds; the last one is the final count.
    totals = re.findall(r"Aggregated\s+(\d+)\s+(\d+)\(", text)  # requests, failures(%)
    assert totals, text[-3000:]
    requests, failures = (int(n) for n in totals[-1])
    assert requests > 20 and failures == 0, text[-3000:]
