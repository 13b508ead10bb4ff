"""The hello example (examples/hello): its behaviour in every topology, and its README commands."""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from archipel._loader import load_app
from archipel.testing import Topology, run_app

from .conftest import eventually
from .test_cli import alive

ROOT = Path(__file__).resolve().parent.parent
README_APP = "examples/hello/hello.py"  # as written in examples/hello/README.md, relative to ROOT

# Load it the way `archipel run examples/hello/hello.py` does: examples/hello goes on sys.path and
# the module is `hello` (not `examples.hello.hello`: zmqtt installs a top-level `examples` package).
app = load_app(str(ROOT / README_APP))
from hello import Greeted, Greeter, Guestbook  # type: ignore[import-not-found, unused-ignore]  # noqa: E402


async def test_greet_reaches_the_guestbook(archipel_topology: Topology) -> None:
    async with run_app(app, archipel_topology) as running:
        greeting = await running.client(Greeter).greet("  ada  lovelace ")
        assert greeting.message == "Hello, Ada Lovelace!"

        event = await running.events.wait_for(Greeted, lambda e: e.greeting_id == greeting.greeting_id)
        assert event.name == "Ada Lovelace"

        # The handler runs after emit() returned: wait for its effect instead of sleeping.
        guestbook = running.client(Guestbook)

        async def recorded() -> list[str] | None:
            entries = await guestbook.entries()
            return entries if "Ada Lovelace" in entries else None

        assert await eventually(recorded, timeout=10) == ["Ada Lovelace"]


async def test_bad_payload_is_a_422_naming_the_field(archipel_topology: Topology) -> None:
    async with run_app(app, archipel_topology) as running, aiohttp.ClientSession() as session:
        url = running.url_of("greeter") + "/greeter/greet"
        async with session.post(url, json={"name": 42}) as response:
            assert response.status == 422
            error = (await response.json())["error"]
        assert error["kind"] == "invalid_argument"
        assert error["details"] == {"path": "$.name"}


# --- The README, command by command -------------------------------------------------------------


def _archipel() -> list[str]:
    """The `archipel` console script beside this interpreter (the project's venv), or the same
    entry point through this interpreter."""
    script = Path(sys.executable).parent / "archipel"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from archipel.cli import main; main()"]


def _status(state_dir: Path) -> dict[str, Any] | None:
    result = subprocess.run(
        [*_archipel(), "status", "--json", "--state-dir", str(state_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        return None
    data: dict[str, Any] = json.loads(result.stdout)
    return data if data.get("processes") else None


def _post(url: str, body: dict[str, str]) -> dict[str, Any]:
    """The README's curl command; urllib when curl is not installed."""
    data = json.dumps(body)
    if shutil.which("curl"):
        command = ["curl", "-s", "-X", "POST", url, "-H", "content-type: application/json", "-d", data]
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    else:
        import urllib.request

        request = urllib.request.Request(url, data.encode(), {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            out = response.read().decode()
    result: dict[str, Any] = json.loads(out)
    return result


def _curl(line: str) -> str:
    return subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=30, check=True).stdout


def test_readme_commands_run_and_stop_cleanly(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    log = (tmp_path / "run.log").open("w+")
    # The README's command, on free ports instead of 8000 and with its own state folder.
    command = [*_archipel(), "run", README_APP, "--mode", "microservices", "--port", "0"]
    run = subprocess.Popen([*command, "--state-dir", str(state_dir)], cwd=ROOT, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while (status := _status(state_dir)) is None:
            if run.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"archipel run did not come up (exit {run.returncode}):\n{log.read()}")
            time.sleep(0.2)  # the state file appears once every process is ready
        assert status["running"] is True
        processes = {p["name"]: p for p in status["processes"]}
        assert set(processes) == {"names", "greeter", "guestbook"}
        assert all(p["alive"] for p in processes.values())

        greeting = _post(processes["greeter"]["url"] + "/greeter/greet", {"name": "ada"})
        assert greeting["message"] == "Hello, Ada!"

        # The README's internal call: refused from outside, answered with the operator's credential.
        normalize = processes["names"]["url"] + "/names/normalize"
        refused = _curl(f"""curl -s -X POST {normalize} -d '{{"name":"ada"}}'""")
        assert json.loads(refused)["error"]["kind"] == "unauthenticated"
        token = f"{' '.join(_archipel())} token names --state-dir {state_dir}"
        answered = _curl(
            f"""curl -s -X POST {normalize} -d '{{"name":"ada"}}' -H "authorization: $({token})\""""
        )
        assert json.loads(answered) == "Ada"

        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=20) == 0
        assert [p["pid"] for p in processes.values() if alive(p["pid"])] == []
        assert _status(state_dir) is None  # the state file is removed on the way out
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        log.close()


async def test_readme_mosquitto_sub_shows_the_event(archipel_mosquitto_url: str) -> None:
    """The README's `mosquitto_sub -V mqttv5 -t 'hello/#' -v`, pointed at this test's broker."""
    readme = (ROOT / "examples" / "hello" / "README.md").read_text()
    documented = next(line for line in readme.splitlines() if line.startswith("mosquitto_sub "))
    host, port = archipel_mosquitto_url.removeprefix("mqtt://").split(":")
    command = [*shlex.split(documented.split("#  ")[0]), "-h", host, "-p", port, "-C", "1", "-W", "20"]
    subscriber = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    async with run_app(app, Topology("microservices", archipel_mosquitto_url)) as running:
        # mosquitto_sub says nothing once subscribed: greet until its one message arrives.
        async def greeted() -> bytes | None:
            await running.client(Greeter).greet("ada")
            try:
                return await asyncio.wait_for(asyncio.shield(read_line), 0.5)
            except TimeoutError:
                return None

        assert subscriber.stdout is not None
        read_line = asyncio.ensure_future(subscriber.stdout.readline())
        line = await eventually(greeted, timeout=20)
    await subscriber.wait()
    topic, payload = line.decode().split(" ", 1)
    assert topic == "hello/greetings/sent" and json.loads(payload)["name"] == "Ada"
