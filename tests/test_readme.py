"""The README's example and commands, run as written (only the port is made free)."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from archipel.testing import Topology, run_app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_example_is_twenty_lines_of_code() -> None:
    code = re.search(r"```python\n(.*?)```", README, re.S)
    assert code is not None
    lines = [line for line in code.group(1).splitlines() if line.strip()]
    assert len(lines) <= 26, len(lines)  # 20 lines of code, give or take the blank-free imports


async def test_readme_example_runs_in_every_topology(tmp_path: Path, archipel_topology: Topology) -> None:
    code = re.search(r"```python\n(.*?)```", README, re.S)
    assert code is not None
    module = tmp_path / "readme_shop.py"
    module.write_text(code.group(1))
    curl = next(line for line in README.splitlines() if line.startswith("curl "))
    async with run_app(f"{module}:app", archipel_topology) as running:
        command = shlex.split(curl.replace("http://127.0.0.1:8000", running.url_of("checkout")))
        result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=10)
        assert json.loads(result.stdout) == {"currency": "USD", "units": 10}
        event = await running.events.wait_for(running.app.event_types()["orders/placed"], timeout=10)
        assert event.order_id == "o1"  # type: ignore[attr-defined]


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


async def test_readme_state_example_commits_state_and_events_together(
    tmp_path: Path, archipel_topology: Topology
) -> None:
    section = _section("State and events that survive a crash")
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    module = tmp_path / "readme_orders.py"
    module.write_text(code.group(1))
    async with run_app(f"{module}:app", archipel_topology, data_dir=tmp_path / "data") as running:
        orders_cls = running.app.specs["orders"].cls
        mailer_cls = running.app.specs["mailer"].cls
        await running.client(orders_cls).place("o1", 3)  # type: ignore[attr-defined]
        mailer = running.client(mailer_cls)
        async with asyncio.timeout(15):
            while await mailer.times_sent("o1") != 1:  # type: ignore[attr-defined]
                await asyncio.sleep(0.05)  # polling state in another process


def test_readme_events_commands_run(tmp_path: Path) -> None:
    section = _section("State and events that survive a crash")
    module = tmp_path / "app.py"
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    module.write_text(code.group(1))
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    for line in block.group(1).splitlines():
        command = shlex.split(line.split("#")[0])
        assert command[:2] == ["archipel", "events"]
        result = subprocess.run(
            [sys.executable, "-m", "archipel", *command[1:], "--data-dir", str(tmp_path / "data")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
