"""The benchmark scripts the docs show still run (tiny sizes: this checks they work, not speed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("script", "arguments", "expected"),
    [
        ("local_call.py", ["--iterations", "2000", "--repeats", "1"], "ratio archipel / plain"),
        ("outbox.py", ["--events", "50", "--repeats", "1"], "ratio latency / direct"),
        (
            "remote_call.py",
            ["--calls", "50", "--concurrency", "2", "--per-caller", "20", "--rounds", "1"],
            "authentication: throughput",
        ),
        ("membership.py", ["--seconds", "1", "--rounds", "1"], "probes cost"),
        ("remote_hop.py", ["--quick"], "archipel / raw asgi+aiohttp throughput"),
        ("events.py", ["--quick"], "archipel CPU per message vs fastest raw client"),
        ("external_service.py", ["--quick"], "node / python"),
    ],
)
def test_a_benchmark_runs_and_reports(script: str, arguments: list[str], expected: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert expected in result.stdout
