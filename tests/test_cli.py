"""`archipel run` as a user runs it: real processes, real signals, nothing left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from archipel._deploy.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def archipel(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archipel", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "archipel", "run", *args, "--port", "0", "--state-dir", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_status(tmp_path: Path, runner: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert runner.poll() is None, runner.stdout.read() if runner.stdout else ""
        result = archipel("status", "--json", "--state-dir", str(tmp_path))
        if result.returncode == 0:
            status: dict[str, Any] = json.loads(result.stdout)
            return status
        time.sleep(0.2)  # polling the status file written when every process is ready
    raise AssertionError("archipel run never reported ready")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("mode", ["monolith", "microservices"])
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_run_status_and_stop_leave_nothing_behind(tmp_path: Path, mode: str, stop_signal: int) -> None:
    runner = start(tmp_path, "tests.apps.shop:app", "--mode", mode)
    try:
        status = wait_for_status(tmp_path, runner)
        table = archipel("status", "--state-dir", str(tmp_path), env={**os.environ, "COLUMNS": "200"}).stdout
    finally:
        if runner.poll() is None:
            runner.send_signal(stop_signal)
        output, _ = runner.communicate(timeout=30)
    assert status["running"] and status["mode"] == mode
    logins = None if mode == "monolith" else True  # a monolith has no broker
    assert status["security"] == {
        "authenticated_calls": True,
        "broker_logins": logins,
        "tls": False,
        "open_endpoints": [],
    }
    assert "internal calls authenticated" in table and "TLS off" in table
    services = sorted(s for p in status["processes"] for s in p["services"])
    assert services == ["checkout", "currency", "email", "ledger"]
    assert len(status["processes"]) == (1 if mode == "monolith" else 4)
    assert all(p["alive"] and p["url"].startswith("http://127.0.0.1:") for p in status["processes"])
    assert runner.returncode == 0, output
    assert "stopped" in output
    pids = [p["pid"] for p in status["processes"]] + (
        [status["broker_pid"]] if mode == "microservices" else []
    )
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)  # children are reaped by the supervisor before it exits; this only absorbs zombies
    assert not any(alive(pid) for pid in pids)
    assert archipel("status", "--json", "--state-dir", str(tmp_path)).returncode == 1


def test_a_process_that_fails_to_start_stops_everything(tmp_path: Path) -> None:
    runner = start(tmp_path, "tests.apps.broken:app", "--mode", "microservices")
    output, _ = runner.communicate(timeout=60)
    assert runner.returncode == 1
    assert "start-up failed" in output and "database at 127.0.0.1:1 is unreachable" in output
    assert not (tmp_path / "state.json").exists()


def test_definition_errors_are_reported_before_anything_starts() -> None:
    result = archipel("run", "tests.apps.nosuch:app")
    assert result.returncode == 2 and "cannot import 'tests.apps.nosuch'" in result.stderr


def test_check_lists_services() -> None:
    result = archipel("check", "tests.apps.shop:app", env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "orders/placed -> confirm" in result.stdout and "convert (idempotent)" in result.stdout
    assert "place_order (public)" in result.stdout  # what outsiders may call
    checkout = next(line for line in result.stdout.splitlines() if "│ checkout" in line)
    assert "orders/placed" in checkout  # what it declares it emits


def test_openapi_describes_every_rpc() -> None:
    result = archipel("openapi", "tests.apps.shop:app")
    document = json.loads(result.stdout)
    assert "/checkout/place_order" in document["paths"]
    request = document["paths"]["/currency/convert"]["post"]["requestBody"]["content"]["application/json"]
    assert request["schema"]["$ref"].endswith("Currency_convert_args")


@pytest.mark.parametrize("file_name", ["archipel.toml", "pyproject.toml"])
def test_app_and_placement_come_from_settings(tmp_path: Path, file_name: str) -> None:
    settings = (
        f'app = "{ROOT}/tests/apps/shop.py:app"\nmode = "microservices"\nport = 0\n'
        'deployment = "shop-a"\ndata_dir = "var"\n'
        '[groups]\nall = ["currency", "checkout", "email", "ledger"]\n'
    )
    if file_name == "pyproject.toml":
        settings = "[project]\nname = 'x'\n[tool.archipel]\n" + settings.replace(
            "[groups]", "[tool.archipel.groups]"
        )
    (tmp_path / file_name).write_text(settings)
    runner = subprocess.Popen(
        [sys.executable, "-m", "archipel", "run", "--state-dir", str(tmp_path / "state")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        status = wait_for_status(tmp_path / "state", runner)
    finally:
        runner.send_signal(signal.SIGTERM)
        output, _ = runner.communicate(timeout=30)
    assert runner.returncode == 0, output
    assert [p["name"] for p in status["processes"]] == ["all"]
    assert status["mode"] == "microservices" and status["broker"].startswith("mqtt://127.0.0.1:")
    assert status["deployment"] == "shop-a" and status["broker_kind"] == "mosquitto"
    assert status["data_dir"] == str(tmp_path / "var") and (tmp_path / "var/broker/mosquitto.conf").exists()


def test_bad_settings_are_named(tmp_path: Path) -> None:
    (tmp_path / "archipel.toml").write_text('app = "x:y"\nmode = "monolith"\nreplicas = 3\n')
    result = subprocess.run(
        [sys.executable, "-m", "archipel", "run"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "Expected `object`, got `int` - at `$.replicas`" in result.stderr


def test_readme_placement_settings_are_valid(tmp_path: Path) -> None:
    section = (ROOT / "README.md").read_text().split("## Placement is configuration", 1)[1]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    (tmp_path / "archipel.toml").write_text(block.group(1))
    settings = load_settings(tmp_path / "archipel.toml")
    assert (settings.broker, settings.deployment) == ("embedded", "shop")
    assert settings.data_dir == str(tmp_path / ".archipel" / "data" / "shop")
