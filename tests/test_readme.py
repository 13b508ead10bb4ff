"""The README's example and commands, run as written (only the port is made free)."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
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
