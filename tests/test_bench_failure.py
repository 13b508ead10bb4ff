"""benchmarks/failure.py: a killed process and an update, per shape, measured from every call's
timestamps (a smoke run of the real script, and how a trace is read)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from archipel._bench import result

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "failure.py"


def _failure(*args: str, timeout: float = 110) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def trace() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("failure_trace")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.timeout(120)
def test_a_killed_monolith_fails_calls_and_a_killed_optional_service_fails_no_page(tmp_path: Path) -> None:
    # kill:recommendation is the monolith's one process, and one process of the microservices.
    done = _failure(
        "--quick",
        "--shapes",
        "monolith,microservices",
        "--trials",
        "kill:recommendation",
        "--out",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (json_file,) = tmp_path.glob("failure-*.json")
    assert {p.suffix for p in tmp_path.iterdir()} == {".json", ".md", ".png", ".svg"}
    the_result = result.read(json_file)
    names = ["monolith: kill monolith", "microservices: kill recommendation"]
    assert [row.name for row in the_result.rows] == names
    for row in the_result.rows:
        assert row.failure is None, row.failure
        timeline = row.extra["timeline"]
        assert sum(timeline["ok"]) + sum(timeline["failed"]) == row.extra["calls"] > 0
        assert 0 < row.extra["back_s"] < 60

    monolith = the_result.row("monolith: kill monolith").extra
    assert monolith["failed"] > 0 and monolith["unavailable_s"] > 0
    during = monolith["per_call"].values()  # a call at the window's edge may still succeed
    assert sum(f["failed"] for f in during) > 0.5 * sum(f["calls"] for f in during), monolith["per_call"]
    # The order accepted just before the kill is mailed after the restart (the outbox kept it).
    assert monolith["events"]["orders_accepted"] == monolith["events"]["orders_mailed"] >= 1

    optional = the_result.row("microservices: kill recommendation").extra
    assert optional["failed_fraction"] <= 0.05, optional["error_kinds"]
    for page in ("index", "browse_product"):
        assert optional["per_call"][page]["fraction"] <= 0.05, optional["per_call"]

    table = next(tmp_path.glob("failure-*.md")).read_text()
    for name in names:
        assert f"| {name} |" in table and f"| {name} |" in done.stdout


def test_what_it_cannot_run_is_named() -> None:
    done = _failure("--trials", "explode:currency", timeout=60)
    assert done.returncode == 2 and "the action must be one of kill, term, rollout" in done.stderr
    done = _failure("--trials", "kill:warehouse", timeout=60)
    assert done.returncode == 2 and "'warehouse' is not a service of the shop" in done.stderr
    done = _failure("--shapes", "cloud", timeout=60)
    assert done.returncode == 2 and "no shape 'cloud'" in done.stderr


def test_a_trace_gives_the_window_the_recovery_and_what_kept_working(trace: ModuleType) -> None:
    call = trace.CallTrace
    calls = [call("index", t / 10, t / 10 + 0.05, True) for t in range(0, 20)]  # fine until 2 s
    calls += [call("index", t / 10, t / 10 + 0.01, False, "refused") for t in range(20, 31)]  # down
    calls += [call("browse_product", t / 10, t / 10 + 0.05, True) for t in range(20, 31)]  # kept working
    calls += [call("index", t / 10, t / 10 + 0.05, True) for t in range(31, 60)]  # back
    figures = trace.analyse(calls, t0=2.0, back_s=1.0)
    assert figures["failed"] == 11 and figures["failed_before"] == 0
    assert figures["window_from_s"] == 0.0 and figures["window_to_s"] == pytest.approx(1.01)
    assert figures["unavailable_s"] == pytest.approx(1.01)
    assert figures["steady_s"] == pytest.approx(1.0)  # from 3.0 s on, every call succeeded
    assert figures["per_call"]["index"]["fraction"] == 1.0
    assert figures["per_call"]["browse_product"]["fraction"] == 0.0
    line = trace.timeline(calls, 6.0)
    assert sum(line["failed"]) == 11 and sum(line["ok"]) == len(calls) - 11
    assert trace.analyse(calls[:20], t0=0.5, back_s=None)["steady_s"] == 0.0  # nothing failed
