"""Durability on the default path: the outbox keeps what was accepted, the inbox keeps effects
single, dead letters are kept and can be replayed. Real processes killed with real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from archipel._deploy.mosquitto import find_mosquitto, mosquitto_command, write_config
from archipel._deploy.supervisor import free_port
from archipel._telemetry.metrics import REGISTRY
from archipel.testing import Topology, run_app
from tests.apps.shop import Checkout, Email, Item, Ledger, app
from tests.conftest import eventually

ROOT = Path(__file__).resolve().parents[1]


def archipel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archipel", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


async def test_dead_letters_are_kept_listed_and_replayed_once(tmp_path: Path) -> None:
    async with run_app(app, data_dir=tmp_path) as running:
        checkout, ledger = running.client(Checkout), running.client(Ledger)
        order = await checkout.place_order("u1", "broken@example.org", [Item("a", 2)])
        await running.events.wait_for_dead_letter(
            "orders/placed", lambda d: msgspec.json.decode(d.payload)["order_id"] == order
        )
        listed = await asyncio.to_thread(
            archipel, "events", "dead", "tests/apps/shop.py:app", "--data-dir", str(tmp_path), "--json"
        )
        assert listed.returncode == 0, listed.stderr
        letters = json.loads(listed.stdout)
        assert [(d["handler"], json.loads(d["payload"])["order_id"]) for d in letters] == [
            ("email.confirm", order)
        ]
        assert "InvalidArgument" in letters[0]["reason"]

        running.instance(Email).mailbox_fixed = True  # the operator repaired the cause
        duplicates_before = _sample(
            "archipel_inbox_duplicates_total", service="ledger", handler="ledger.record"
        )
        retries_before = _sample(
            "archipel_events_handled_total", service="ledger", handler="record", outcome="retried"
        )
        replayed = await asyncio.to_thread(
            archipel, "events", "replay", "tests/apps/shop.py:app", "--data-dir", str(tmp_path)
        )
        assert replayed.returncode == 0 and "replayed 1" in replayed.stdout, replayed.stdout + replayed.stderr
        email = running.client(Email)
        assert await eventually(lambda: email.sent_mail(order), timeout=15) == "fixed@example.org: 20 EUR"
        # The replay went to the handler that failed, and to no other consumer.
        assert await ledger.times_recorded(order) == 1
        assert _sample("archipel_inbox_duplicates_total", service="ledger", handler="ledger.record") == (
            duplicates_before
        )
        assert (
            _sample("archipel_events_handled_total", service="ledger", handler="record", outcome="retried")
            == retries_before
        )
        empty = await asyncio.to_thread(
            archipel, "events", "dead", "tests/apps/shop.py:app", "--data-dir", str(tmp_path), "--json"
        )
        assert json.loads(empty.stdout) == []


async def test_a_replay_in_microservices_reaches_the_failed_handler_not_the_broker(tmp_path: Path) -> None:
    """The consumer may not publish what it consumes (the broker's ACL): its replay stays inside."""
    fixed = tmp_path / "mailbox-fixed"
    data = tmp_path / "data"
    async with run_app(
        app, "microservices", data_dir=data, env={"SHOP_MAILBOX_FIXED": str(fixed)}
    ) as running:
        order = await running.client(Checkout).place_order("u1", "broken@example.org", [Item("a", 2)])
        await running.events.wait_for_dead_letter(
            "orders/placed", lambda d: msgspec.json.decode(d.payload)["order_id"] == order
        )
        fixed.touch()  # the operator repaired the cause
        replayed = await asyncio.to_thread(
            archipel, "events", "replay", "tests/apps/shop.py:app", "--data-dir", str(data)
        )
        assert replayed.returncode == 0 and "replayed 1" in replayed.stdout, replayed.stdout + replayed.stderr
        email = running.client(Email)
        assert await eventually(lambda: email.sent_mail(order), timeout=15) == "fixed@example.org: 20 EUR"
        assert await running.client(Ledger).times_recorded(order) == 1
        published = [e for e in running.events.envelopes if e.topic == "orders/placed"]
        assert len(published) == 1  # the original only: nothing was published again


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_replay_names_an_unknown_dead_letter(tmp_path: Path) -> None:
    result = archipel("events", "replay", "tests/apps/shop.py:app", "nope", "--data-dir", str(tmp_path))
    assert result.returncode == 1 and "no dead letter with id nope" in result.stdout


def _start(tmp_path: Path, mode: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "archipel",
            "run",
            "tests/apps/durable.py:app",
            "--mode",
            mode,
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "state"),
            "--quiet",
        ],
        cwd=ROOT,
        env={**os.environ, "ARCHIPEL_DATA_DIR": str(tmp_path / "data"), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _status(tmp_path: Path, runner: subprocess.Popen[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert runner.poll() is None, runner.stdout.read() if runner.stdout else ""
        result = archipel("status", "--json", "--state-dir", str(tmp_path / "state"))
        if result.returncode == 0:
            status: dict[str, Any] = json.loads(result.stdout)
            return status
        time.sleep(0.2)  # polling the status file written once every process is ready
    raise AssertionError("archipel run never reported ready")


async def _call(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=5)) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def _eventually_equal(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], want: Any
) -> None:
    deadline = time.monotonic() + 45
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await _call(session, url, body)
            if last == want:
                return
        except (aiohttp.ClientError, TimeoutError) as exc:  # the process is restarting
            last = exc
        await asyncio.sleep(0.1)  # polling the restarted process
    raise AssertionError(f"{url} {body}: wanted {want!r}, last {last!r}")


async def test_an_event_in_flight_when_the_monolith_is_killed_is_handled_once_after_restart(
    tmp_path: Path,
) -> None:
    hold = tmp_path / "hold"
    runner = _start(tmp_path, "monolith", {"DURABLE_HOLD": str(hold)})
    try:
        status = await asyncio.to_thread(_status, tmp_path, runner)
        process = status["processes"][0]
        url = process["url"]
        hold.touch()
        async with aiohttp.ClientSession() as session:
            await _call(session, f"{url}/orders/place", {"order_id": "o1", "units": 3})
            deadline = time.monotonic() + 20
            while not _exists(str(hold) + ".reached"):  # the handler has the event
                assert time.monotonic() < deadline, "the handler never got the event"
                await asyncio.sleep(0.02)
            os.kill(process["pid"], signal.SIGKILL)  # the event dies with the process...
            hold.unlink()
            # ...but it was in the outbox, committed with the order: the restarted monolith
            # delivers it again, and the mailer handles it exactly once.
            await _eventually_equal(session, f"{url}/mailer/sent", {"order_id": "o1"}, 1)
            await _call(session, f"{url}/orders/place", {"order_id": "o2", "units": 1})
            await _eventually_equal(session, f"{url}/mailer/sent", {"order_id": "o2"}, 1)
            assert await _call(session, f"{url}/mailer/sent", {"order_id": "o1"}) == 1
            assert await _call(session, f"{url}/orders/count", {}) == 2
    finally:
        runner.send_signal(signal.SIGINT)
        runner.communicate(timeout=30)


async def test_readyz_is_false_while_a_process_cannot_take_events(tmp_path: Path) -> None:
    """A broker of the test's own, killed and started again on the same port and data."""
    binary = find_mosquitto()
    assert binary is not None, "mosquitto is installed by scripts/setup.sh"
    port = free_port()
    command = mosquitto_command(binary, write_config(tmp_path / "broker", "127.0.0.1", port))

    def start_broker() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, cwd=tmp_path / "broker", stderr=subprocess.DEVNULL)

    broker = start_broker()
    try:
        async with run_app(app, Topology("microservices", f"mqtt://127.0.0.1:{port}")) as running:
            readyz = running.url_of("ledger") + "/readyz"
            async with aiohttp.ClientSession() as session:
                assert await _status_of(session, readyz) == 200
                broker.kill()
                broker.wait(10)
                await _until_status(session, readyz, 503)  # the consumer lost its broker
                broker = start_broker()
                await _until_status(session, readyz, 200)  # reconnected: ready again
    finally:
        broker.kill()
        broker.wait(10)


async def _status_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        return response.status


async def _until_status(session: aiohttp.ClientSession, url: str, status: int) -> None:
    async with asyncio.timeout(30):
        while await _status_of(session, url) != status:
            await asyncio.sleep(0.05)  # polling the probe
