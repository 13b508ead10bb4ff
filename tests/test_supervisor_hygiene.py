"""Process hygiene of `archipel run`: nothing outlives the supervisor, whatever kills it; signals
stop everything in order; `archipel status` tells the truth; busy ports fail before anything runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

from archipel._deploy.environment import WorkerSpec, worker_environment
from archipel._deploy.plan import plan
from archipel._deploy.supervisor import Child, free_port, stop_waves
from archipel._loader import load_app
from archipel._runtime import DATA_DIR_VAR
from tests.test_cli import ROOT, alive, archipel, start, wait_for_status

pytestmark = pytest.mark.timeout(90)

T = TypeVar("T")
SHOP = "tests.apps.shop:app"


def until(probe: Callable[[], T | None], timeout: float = 15.0, every: float = 0.05) -> T:
    """Poll ``probe`` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while (value := probe()) is None:
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(every)  # polling a condition no event signals (another process's state)
    return value


def status(state_dir: Path) -> tuple[int, dict[str, Any]]:
    """What `archipel status --json` says, and its exit code."""
    result = archipel("status", "--json", "--state-dir", str(state_dir))
    return result.returncode, json.loads(result.stdout)


def state(state_dir: Path) -> dict[str, Any]:
    """The state file as the supervisor last wrote it (cheaper to poll than `archipel status`)."""
    data: dict[str, Any] = json.loads((state_dir / "state.json").read_text())
    return data


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def said(text: str) -> str:
    """Output with line breaks undone: rich wraps long messages at the terminal width."""
    return " ".join(text.split())


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def listening() -> Iterator[Callable[[], int]]:
    """Open listening sockets on free ports: what another program holding a port looks like."""
    sockets: list[socket.socket] = []

    def open_one() -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sockets.append(sock)
        port: int = sock.getsockname()[1]
        return port

    yield open_one
    for sock in sockets:
        sock.close()


def test_status_tells_the_truth_and_a_sigkilled_run_leaves_nothing_behind(tmp_path: Path) -> None:
    runner = start(tmp_path, SHOP, "--mode", "microservices", "--quiet")
    try:
        first = wait_for_status(tmp_path, runner)
        assert first["broker_kind"] == "mosquitto" and first["broker_health"] == "ok"
        assert first["durable_sessions"] and first["deployment"] == "testshop"

        # A killed worker: restarted, and the status shows the new pid, the count, the exit code.
        ledger = next(p for p in first["processes"] if p["name"] == "ledger")
        os.kill(ledger["pid"], signal.SIGKILL)

        def ledger_restarted() -> bool | None:
            now = next(p for p in state(tmp_path)["processes"] if p["name"] == "ledger")
            return True if now["pid"] not in (None, ledger["pid"]) and now["ready"] else None

        until(ledger_restarted)
        again = next(p for p in status(tmp_path)[1]["processes"] if p["name"] == "ledger")
        assert again["restarts"] == 1 and again["last_exit_code"] == -signal.SIGKILL and again["alive"]

        # A killed broker: the watchdog restarts it on the same port, and the status says so.
        os.kill(first["broker_pid"], signal.SIGKILL)

        def broker_restarted() -> bool | None:
            now = state(tmp_path)
            fresh = now["broker_pid"] not in (None, first["broker_pid"])
            return True if fresh and now["broker_health"] == "ok" else None

        until(broker_restarted)
        current = status(tmp_path)[1]
        assert current["broker_restarts"] == 1 and current["broker"] == first["broker"]

        # A second run while this one runs fails at once: on its ports, or on its data directory.
        taken = port_of(first["processes"][0]["url"])
        second = archipel(
            "run", SHOP, "--deployment", "other", "--port", str(taken), "--state-dir", str(tmp_path)
        )
        assert second.returncode == 1 and f"port {taken} on 127.0.0.1 is already in use" in said(
            second.stderr
        )
        same = archipel("run", SHOP, "--port", "0", "--state-dir", str(tmp_path))
        assert same.returncode == 1 and "deployment 'testshop' already runs" in said(same.stderr)

        # A stopped supervisor (SIGSTOP) is said to be, then SIGKILLed: every child follows it,
        # the ports are free, and status says it is not running.
        final = state(tmp_path)
        pids = [p["pid"] for p in final["processes"]] + [final["broker_pid"]]
        ports = [port_of(p["url"]) for p in final["processes"]] + [port_of(final["broker"])]
        runner.send_signal(signal.SIGSTOP)
        code, stopped = status(tmp_path)
        assert code == 0 and stopped["running"] and stopped["supervisor_stopped"]
        runner.kill()
        runner.wait(10)
        started = time.monotonic()
        until(lambda: True if not any(alive(pid) for pid in pids) else None, timeout=10)
        gone_after = time.monotonic() - started
        until(lambda: True if all(bindable(port) for port in ports) else None, timeout=5)
        assert gone_after < 5, gone_after
        assert (tmp_path / "state.json").exists(), "the stale state file stays"
        code, data = status(tmp_path)
        assert code == 1 and data == {"running": False, "processes": []}
        assert "not running" in archipel("status", "--state-dir", str(tmp_path)).stdout
    finally:
        if runner.poll() is None:
            runner.kill()
        runner.communicate(timeout=30)


def test_sighup_stops_everything_edge_first_consumers_last(tmp_path: Path) -> None:
    runner = start(tmp_path, SHOP, "--mode", "microservices", "--quiet")
    try:
        state = wait_for_status(tmp_path, runner)
    finally:
        runner.send_signal(signal.SIGHUP)
        output, _ = runner.communicate(timeout=60)
    assert runner.returncode == 0, output
    steps = [line.split("stopping ", 1)[1] for line in output.splitlines() if "supervisor: stopping " in line]
    assert steps == ["checkout", "currency", "email, ledger"], output
    assert output.rstrip().endswith("stopped")
    pids = [p["pid"] for p in state["processes"]] + [state["broker_pid"]]
    until(lambda: True if not any(alive(pid) for pid in pids) else None, timeout=5)
    assert not (tmp_path / "state.json").exists()


@pytest.mark.parametrize("which", ["service", "broker"])
def test_a_run_on_a_busy_port_fails_before_starting_anything(
    tmp_path: Path, listening: Callable[[], int], which: str
) -> None:
    busy = listening()
    ports = ["--port", str(busy)] if which == "service" else ["--port", "0", "--broker-port", str(busy)]
    result = archipel("run", SHOP, "--mode", "microservices", *ports, "--state-dir", str(tmp_path))
    owner = "currency" if which == "service" else "the broker"
    assert result.returncode == 1
    assert f"port {busy} on 127.0.0.1 is already in use (planned for {owner})" in said(result.stderr)
    assert not (tmp_path / "data").exists() and not (tmp_path / "state.json").exists()


def test_stop_order_is_callers_first_then_producers_then_consumers() -> None:
    app = load_app(SHOP)

    def waves(groups: dict[str, list[str]] | None = None) -> list[list[str]]:
        children = [Child(p.name, [], {}, services=p.services) for p in plan(app, "microservices", groups)]
        return [[c.name for c in wave] for wave in stop_waves(app, children)]

    # checkout calls currency; email and ledger only consume events.
    assert waves() == [["checkout"], ["currency"], ["email", "ledger"]]
    # A consumer grouped with a caller: the group goes as soon as nobody calls it.
    assert waves({"front": ["checkout", "email"]}) == [["front", "ledger"], ["currency"]]


def test_a_worker_exits_when_the_pipe_from_its_supervisor_closes(tmp_path: Path) -> None:
    # The fallback for PDEATHSIG: no prctl here, only the worker's own watch of its stdin.
    port = free_port()
    spec = WorkerSpec(
        app=SHOP,
        name="currency",
        services=["currency"],
        host="127.0.0.1",
        port=port,
        supervisor_pid=os.getpid(),
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "archipel._deploy.worker"],
        cwd=ROOT,
        env={
            **os.environ,
            **worker_environment(spec),
            DATA_DIR_VAR: str(tmp_path),
            "PYTHONPATH": str(ROOT),
            "ARCHIPEL_SECRET": "a-secret-for-this-test-only-0123456789",
        },
        stdin=subprocess.PIPE,
    )
    try:
        until(lambda: True if ready(f"http://127.0.0.1:{port}") else None)
        assert worker.stdin is not None
        worker.stdin.close()
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == -signal.SIGTERM  # a graceful stop, as on the supervisor's SIGTERM
