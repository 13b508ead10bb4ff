"""External services: a service of the app implemented outside it, placed by ``[external.NAME]``.

Started by its own command (``command``: the supervisor runs it with the process contract's
``ARCHIPEL_*`` variables and its keyring), or reached at an address and started by someone else
(``url``: ``archipel keyring`` writes what it needs). Real processes, the embedded broker, the
example app ``examples/hello``. The Node.js implementation of the shop's ``shipping`` is tested in
``tests/boutique``; here the outside implementation is Archipel's own worker, started the foreign way.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from archipel._deploy.children import free_port
from archipel._deploy.generate import compose_files, kubernetes_files
from archipel._deploy.plan import External, settings_plan
from archipel._deploy.settings import ConfigError, load_settings
from archipel._deploy.version import foreign_version
from archipel._errors import DefinitionError
from archipel._loader import load_app
from archipel.testing import RunningApp, Topology, run_app
from tests.test_cli import wait_for_status

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "examples" / "hello" / "hello.py"
BIN = Path(sys.executable).parent
SECRET = "external-test-secret-0123456789abcdef"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def hello() -> Iterator[object]:
    yield load_app(str(HELLO))


def write_settings(folder: Path, body: str) -> Path:
    path = folder / "archipel.toml"
    path.write_text(f'app = "{HELLO}"\n' + textwrap.dedent(body))
    return path


# -- placement ------------------------------------------------------------------------------


def test_a_command_is_a_process_of_its_own_run_from_the_settings_folder(
    tmp_path: Path, hello: object
) -> None:
    settings = load_settings(
        write_settings(
            tmp_path,
            """
            [external.guestbook]
            command = ["node", "guestbook/main.js"]
            image = "hello/guestbook-node:1"
            """,
        )
    )
    plan = settings_plan(str(HELLO), hello, settings)  # type: ignore[arg-type]
    guestbook = plan.process("guestbook")
    assert guestbook.command == ("node", "guestbook/main.js") and guestbook.cwd == str(tmp_path)
    assert guestbook.image == "hello/guestbook-node:1" and guestbook.foreign
    assert not plan.process("greeter").foreign and plan.remote == {}


def test_a_url_has_no_process_and_becomes_its_callers_peer(tmp_path: Path, hello: object) -> None:
    settings = load_settings(
        write_settings(tmp_path, '[external.names]\nurl = "http://names.example:8000/"\n')
    )
    plan = settings_plan(str(HELLO), hello, settings)  # type: ignore[arg-type]
    assert "names" not in plan.process_names
    assert plan.remote == {"names": ("http://names.example:8000",)}
    assert plan.login_owners()["names"] == ["names"]  # it logs in to the broker under its own name
    assert plan.callers(plan.process("greeter")) == []


@pytest.mark.parametrize(
    ("body", "mode", "message"),
    [
        ('[external.nobody]\nurl = "http://x:1"\n', "microservices", "'nobody' is not a service of 'hello'"),
        ('[external.names]\nurl = "http://x:1"\n', "monolith", 'needs mode = "microservices"'),
        ('[groups]\nfront = ["greeter", "names"]\n[external.names]\nurl = "http://x:1"\n', "microservices",
         "also in group 'front'"),
        ('[external.names]\nurl = "http://x:1"\ncommand = ["node"]\n', "microservices", "not both"),
        ("[external.names]\n", "microservices", "say where it runs: url, command or image"),
        ('[external.names]\nurl = "names:8000"\n', "microservices", "must be http:// or https://"),
    ],
)  # fmt: skip
def test_an_external_table_that_cannot_be_placed_is_refused_naming_the_fix(
    tmp_path: Path, hello: object, body: str, mode: str, message: str
) -> None:
    settings = load_settings(write_settings(tmp_path, body))
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(")):
        settings_plan(str(HELLO), hello, settings, mode=mode)  # type: ignore[arg-type]


def test_an_unknown_key_in_an_external_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown field `port`"):
        load_settings(write_settings(tmp_path, "[external.names]\nport = 8000\n"))


def test_containers_run_its_image_and_callers_reach_a_url(tmp_path: Path, hello: object) -> None:
    body = '[external.guestbook]\nimage = "hello/guestbook-node:1"\n[external.names]\nurl = "http://names.example:9000"\n'
    plan = settings_plan(str(HELLO), hello, load_settings(write_settings(tmp_path, body)))  # type: ignore[arg-type]
    compose = {o.path: o.text for o in compose_files(plan, image="hello:1", command="c", source="s")}
    services = yaml.safe_load(compose["compose.yaml"])["services"]
    assert services["guestbook"]["image"] == "hello/guestbook-node:1"
    assert "healthcheck" not in services["guestbook"]  # its image has no Python to run the check
    assert services["greeter"]["image"] == "hello:1" and "names" not in services
    assert "names=http://names.example:9000" in services["greeter"]["environment"]["ARCHIPEL_PEERS"]
    kube = kubernetes_files(plan, image="hello:1", version="1", command="c", source="s")
    images = {doc["metadata"]["name"]: doc["spec"]["template"]["spec"]["containers"][0]["image"]
              for o in kube for doc in yaml.safe_load_all(o.text)
              if isinstance(doc, dict) and doc.get("kind") in ("Deployment", "StatefulSet")}  # fmt: skip
    assert images["hello-guestbook"] == "hello/guestbook-node:1" and images["hello-greeter"] == "hello:1"
    policies = {doc["metadata"]["name"]: doc["spec"] for o in kube for doc in yaml.safe_load_all(o.text)
                if isinstance(doc, dict) and doc.get("kind") == "NetworkPolicy"}  # fmt: skip
    greeter_out = policies["hello-greeter"]["egress"]
    assert {"ports": [{"protocol": "TCP", "port": 9000}]} in greeter_out  # to names, outside
    assert {"ports": [{"protocol": "TCP", "port": 9000}]} not in policies["hello-guestbook"]["egress"]


def test_containers_need_an_image_for_a_command(tmp_path: Path) -> None:
    write_settings(tmp_path, '[external.guestbook]\ncommand = ["node", "main.js"]\n')
    done = subprocess.run(
        [BIN / "archipel", "deploy", "compose", "--out", str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "[external.guestbook] has a command but no image" in done.stderr + done.stdout


# -- running --------------------------------------------------------------------------------


async def test_a_service_started_by_its_own_command_takes_its_calls_and_events(tmp_path: Path) -> None:
    # A launcher of its own: it says so, then becomes the worker (same pid, as `exec node` would).
    launcher = tmp_path / "launch.py"
    launcher.write_text(
        "import os, sys\nprint('guestbook started by its own command', flush=True)\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'archipel.worker'])\n"
    )
    external = {"guestbook": External(command=(sys.executable, str(launcher)), cwd=str(tmp_path))}
    async with run_app(str(HELLO), Topology("microservices", "embedded", external=external)) as hello:
        supervisor = hello._supervisor
        assert supervisor is not None
        child = next(c for c in supervisor.children if c.name == "guestbook")
        assert any("started by its own command" in line for line in child.output)
        greeter = next(c for c in supervisor.children if c.name == "greeter")
        assert child.version == foreign_version(child.command, str(tmp_path)) != greeter.version
        async with httpx.AsyncClient(base_url=hello.url_of("greeter"), timeout=10) as web:
            assert (await web.post("/greeter/greet", json={"name": "ada"})).status_code == 200
            await eventually(lambda: web_json(web, hello.url_of("guestbook") + "/guestbook/entries"), ["Ada"])


async def test_a_service_reached_by_url_is_called_once_it_is_there(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"ARCHIPEL_SECRET": SECRET}
    topology = Topology("microservices", "embedded", external={"names": External(url=(url,))})
    async with run_app(str(HELLO), topology, env=env) as hello:
        assert hello.url_of("names") == url
        supervisor = hello._supervisor
        assert supervisor is not None

        async def looked_at() -> object:  # what `archipel status` shows of the address
            return supervisor.status()["external_health"]

        await eventually(looked_at, {url: "down"})
        async with httpx.AsyncClient(base_url=hello.url_of("greeter"), timeout=10) as web:
            down = await web.post("/greeter/greet", json={"name": "ada"})
            assert down.status_code == 503 and "names" in down.text  # not started yet: said so
            keyring = tmp_path / "names.keyring"
            made = await asyncio.to_thread(
                subprocess.run,
                [BIN / "archipel", "keyring", "names", "--out", str(keyring), "--app", str(HELLO)],
                env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert made.returncode == 0, made.stderr
            assert oct(keyring.stat().st_mode & 0o777) == "0o600" and SECRET not in keyring.read_text()
            with started_by_hand(hello, "names", port, keyring):
                answer = await eventually(lambda: greet(web, "  grace  hopper "), "Hello, Grace Hopper!")
                assert answer == "Hello, Grace Hopper!"
                await eventually(looked_at, {url: "ready"})
            await eventually(looked_at, {url: "down"})  # stopped: seen within a probe interval


async def test_the_keyring_command_names_what_is_wrong(tmp_path: Path) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [BIN / "archipel", "keyring", "nobody", "--out", str(tmp_path / "k"), "--app", str(HELLO)],
        env={**os.environ, "ARCHIPEL_SECRET": SECRET}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "no process or external service 'nobody'" in done.stderr
    bare = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIPEL_SECRET")}
    done = await asyncio.to_thread(
        subprocess.run,
        [BIN / "archipel", "keyring", "names", "--out", str(tmp_path / "k"), "--app", str(HELLO)],
        env=bare, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0 and "ARCHIPEL_SECRET" in done.stderr and not (tmp_path / "k").exists()


# -- helpers ----------------------------------------------------------------------------------


class started_by_hand:
    """The worker of ``service`` started by someone else than the supervisor, as an operator
    would start an external service: its address, the broker, its keyring file."""

    def __init__(self, running: RunningApp, service: str, port: int, keyring: Path) -> None:
        supervisor = running._supervisor
        assert supervisor is not None and supervisor.broker_url is not None
        self.env = {
            **os.environ,
            "ARCHIPEL_APP": str(HELLO),
            "ARCHIPEL_PROCESS": service,
            "ARCHIPEL_HOST": "127.0.0.1",
            "ARCHIPEL_PORT": str(port),
            "ARCHIPEL_BROKER": supervisor.broker_url,
            "ARCHIPEL_DEPLOYMENT": supervisor.deployment,
            "ARCHIPEL_KEYRING_FILE": str(keyring),
        }

    def __enter__(self) -> started_by_hand:
        self.process = subprocess.Popen([sys.executable, "-m", "archipel.worker"], env=self.env)
        return self

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(30)


async def greet(web: httpx.AsyncClient, name: str) -> object:
    answer = await web.post("/greeter/greet", json={"name": name})
    return answer.json()["message"] if answer.status_code == 200 else answer.status_code


async def web_json(web: httpx.AsyncClient, url: str) -> object:
    return (await web.post(url, json={})).json()


async def eventually(read: object, expected: object, timeout: float = 20.0) -> object:
    """What ``read()`` returns once it equals ``expected``, polling; fails with the last value."""
    assert callable(read)
    last: object = None
    async with asyncio.timeout(timeout):
        while True:
            last = await read()
            if last == expected:
                return last
            await asyncio.sleep(0.1)  # polling a condition, bounded by the timeout


def test_archipel_run_starts_the_command_shows_both_kinds_and_calls_them(tmp_path: Path) -> None:
    (tmp_path / "launch.py").write_text(
        "import os, sys\nos.execv(sys.executable, [sys.executable, '-m', 'archipel.worker'])\n"
    )
    names = f"http://127.0.0.1:{free_port()}"  # nothing there: started elsewhere, later
    write_settings(
        tmp_path,
        f"""
        port = 0
        [external.guestbook]
        command = ["{sys.executable}", "launch.py"]   # relative to this file's folder
        [external.names]
        url = "{names}"
        """,
    )
    state = tmp_path / "state"
    runner = subprocess.Popen(
        [sys.executable, "-m", "archipel", "run", "--state-dir", str(state)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        status = wait_for_status(state, runner)
        assert status["external"] == {"names": [names]}
        assert sorted(p["name"] for p in status["processes"]) == ["greeter", "guestbook"]
        deadline = time.monotonic() + 20
        while json.loads(cli("status", "--json", "--state-dir", str(state), cwd=tmp_path).stdout)[
            "external_health"
        ] != {names: "down"}:
            assert time.monotonic() < deadline, "the address was never looked at"
            time.sleep(0.2)  # the state file is rewritten once the first look is done
        table = cli("status", "--state-dir", str(state), cwd=tmp_path)
        row = next(line for line in table.stdout.splitlines() if "names (external)" in line)
        assert "down" in row and names.split("://")[1] in row
        status = json.loads(cli("status", "--json", "--state-dir", str(state), cwd=tmp_path).stdout)
        snapshot = httpx.get(status["dashboard"] + "api/snapshot", timeout=10).json()
        services = {s["name"]: s for s in snapshot["services"]}  # the dashboard's graph shows it down
        assert services["names"]["external"] == {names: "down"} and services["greeter"]["external"] == {}
        entries = cli("call", "guestbook.entries", "--state-dir", str(state), cwd=tmp_path)
        assert entries.returncode == 0 and json.loads(entries.stdout) == []
        away = cli("call", "names.normalize", '{"name": "ada"}', "--state-dir", str(state), cwd=tmp_path)
        assert away.returncode != 0 and names.split("://")[1] in away.stderr + away.stdout
    finally:
        runner.send_signal(signal.SIGTERM)
        output, _ = runner.communicate(timeout=30)
    assert runner.returncode == 0, output


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN / "archipel", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


async def test_a_previous_runs_peers_file_is_never_used(tmp_path: Path) -> None:
    # What a previous run in this folder left: its own addresses, here one where nothing listens.
    (tmp_path / "peers.json").write_text(json.dumps({"names": [f"http://127.0.0.1:{free_port()}"]}))
    async with (
        run_app(str(HELLO), "microservices", data_dir=tmp_path) as hello,
        httpx.AsyncClient(base_url=hello.url_of("greeter"), timeout=10) as web,
    ):
        assert await greet(web, "ada") == "Hello, Ada!"  # at once: no stale address in between


def test_the_version_of_a_foreign_process_is_its_own_code(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "node_modules" / "mqtt").mkdir(parents=True)
    (tmp_path / "src" / "main.js").write_text("console.log('v1')\n")
    (tmp_path / "node_modules" / "mqtt" / "index.js").write_text("// a dependency\n")
    first = foreign_version(["node", "src/main.js"], str(tmp_path))
    (tmp_path / "node_modules" / "mqtt" / "index.js").write_text("// reinstalled\n")
    assert foreign_version(["node", "src/main.js"], str(tmp_path)) == first  # dependencies left out
    (tmp_path / "src" / "main.js").write_text("console.log('v2')\n")
    second = foreign_version(["node", "src/main.js"], str(tmp_path))
    assert second != first and len(second) == 12
    assert foreign_version(["node", str(tmp_path / "src" / "main.js")], None) != first  # by its files
