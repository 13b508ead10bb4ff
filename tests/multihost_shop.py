"""The shop deployed on hosts made of network namespaces (``tests/netns.py``), each process
started as a container would start it: ``python -m archipel.worker`` inside its host's namespace,
with only the variables its manifest would give it, its keyring, and where its state lives.
Used by ``tests/test_multihost.py``, which says what the hosts are and what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec
import pytest

from archipel._deploy.acl import ACL_FILE, PASSWORD_FILE
from archipel._deploy.environment import worker_environment
from archipel._deploy.hygiene import die_with_parent
from archipel._deploy.mosquitto import find_mosquitto, mosquitto_command, write_config
from archipel._deploy.plan import DEFAULT_PORT, DeploymentPlan, ProcessPlan, deployment_plan
from archipel._deploy.statefile import pid_alive
from archipel._events.mqtt import MqttBus
from archipel._loader import load_app
from archipel._runtime import DATA_DIR_VAR, STORE_URL_VAR
from archipel._security.keyring import KEYRING_VAR, OPERATOR, keyring_for
from archipel._security.secrets import SECRET_VAR, new_secret
from archipel._security.tokens import Signer, operator_headers
from archipel._state import CollectionField
from tests.netns import Host, NetnsUnavailable, Network

ROOT = Path(__file__).resolve().parents[1]
APP_REF = f"{ROOT / 'examples' / 'boutique' / 'boutique' / 'app.py'}:app"
app = load_app(APP_REF)  # as a worker loads it: examples/boutique joins sys.path, the shop is `boutique`
PYTHON = sys.executable
PG_URL = os.environ.get("ARCHIPEL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
DATABASE_PREFIX = "archipel_multihost_"
BROKER_PORT = 1883
PROBE_INTERVAL = 1.0  # ARCHIPEL_PROBE_INTERVAL, explicitly (the default)


# -- the hosts -------------------------------------------------------------------------------------


@contextlib.contextmanager
def three_hosts() -> Iterator[Network]:
    """Hosts a, b and c on a bridge; everything of theirs removed afterwards. As root, namespaces
    that cannot be made fail the test (they must work where it runs: CI)."""
    net = Network()
    try:
        net.create()
        for name, number in (("a", 1), ("b", 2), ("c", 3)):
            net.add_host(name, number)
        _check_reachable(net.hosts["b"], net.gateway)
    except (NetnsUnavailable, subprocess.CalledProcessError, OSError) as exc:
        with contextlib.suppress(Exception):
            net.remove()
        what = (
            f"{' '.join(exc.cmd)}: {exc.stderr.strip()}"
            if isinstance(exc, subprocess.CalledProcessError)
            else exc
        )
        pytest.fail(f"network namespaces are not usable here (as root they must be): {what}")
    try:
        yield net
    finally:
        net.remove()


def _check_reachable(host: Host, gateway: str) -> None:
    """A TCP connection from ``host`` to the root namespace over the bridge (a firewall's bridge
    filtering would drop it): fail now, saying so, rather than as a worker that never gets ready."""
    with socket.create_server((gateway, 0)) as server:  # the kernel completes the handshake
        port = server.getsockname()[1]
        connect = f"import socket; socket.create_connection(('{gateway}', {port}), 5)"
        probe = subprocess.run(
            host.command([PYTHON, "-c", connect]), capture_output=True, text=True, timeout=20
        )
    if probe.returncode != 0:
        raise NetnsUnavailable(f"host {host.address} cannot reach {gateway} over the bridge: {probe.stderr}")


@contextlib.asynccontextmanager
async def shop_database() -> AsyncIterator[str]:
    """A database of this run on the root namespace's PostgreSQL, dropped afterwards (with those a
    run that died left); yields its name."""
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError:
        pytest.skip("asyncpg is not installed (pip install 'archipel[postgres]')")
    try:
        admin = await asyncpg.connect(PG_URL, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL at {PG_URL} is unreachable: {exc!r}"
        if os.environ.get("CI") == "true":  # scripts/services.sh starts it there: must not hide
            pytest.fail(message)
        pytest.skip(message)
    name = f"{DATABASE_PREFIX}{os.getpid()}"
    try:
        for (stale,) in await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", DATABASE_PREFIX + "%"
        ):
            pid = stale.removeprefix(DATABASE_PREFIX)
            if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
                await admin.execute(f'DROP DATABASE IF EXISTS "{stale}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# -- the shop's processes --------------------------------------------------------------------------


@dataclass
class Process:
    """The broker, or one replica of one process of the shop, running in one host's namespace."""

    label: str
    host: Host
    argv: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path
    url: str = ""
    plan: ProcessPlan | None = None
    proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.host.command(self.argv),
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(os.getpid()),  # gone with the test, whatever ends it
            )

    @property
    def services(self) -> tuple[str, ...]:
        return self.plan.services if self.plan is not None else ()

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            raise AssertionError(f"{self.label} exited with {self.proc.returncode}:\n{self.tail()}")

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def lines_since(self, offset: int) -> list[str]:
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace").splitlines()

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"

    async def stop(self, grace: float) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def keeps_state(service: str) -> bool:
    """Collections, an outbox (it emits) or an inbox (it handles events): state its replicas share."""
    spec = app.specs[service]
    has_collections = any(isinstance(value, CollectionField) for value in vars(spec.cls).values())
    return has_collections or bool(spec.emits) or bool(spec.handlers)


@dataclass
class Shop:
    plan: DeploymentPlan
    secret: str
    broker: Process
    workers: list[Process]
    signer: Signer  # the operator's: /metrics of each process, RPC to read the shop's state

    @property
    def deployment(self) -> str:
        return self.plan.deployment

    def on(self, host: Host) -> list[Process]:
        return [w for w in self.workers if w.host == host]

    def replica(self, service: str, host: Host) -> Process:
        return next(w for w in self.on(host) if service in w.services)

    def headers(self, service: str) -> dict[str, str]:
        return operator_headers(self.signer, service)


def build_shop(network: Network, store_url: str, workdir: Path) -> Shop:
    """Broker on A, the storefront on B, every other process on B and on C, as manifests would
    start them; nothing started yet."""
    a, b, c = (network.hosts[name] for name in "abc")
    broker_url = f"mqtt://{a.address}:{BROKER_PORT}"
    replicas = {name: 1 if name == "frontend" else 2 for name in app.specs}
    plan = deployment_plan(APP_REF, app, replicas=replicas, broker=broker_url)
    placement = {p.name: [b] if p.replicas == 1 else [b, c] for p in plan.processes}
    # Every process listens on its own port of its host's address, the same port on every host.
    ports = {p.name: DEFAULT_PORT + index for index, p in enumerate(plan.processes)}
    url = {
        (p.name, h.name): f"http://{h.address}:{ports[p.name]}"
        for p in plan.processes
        for h in placement[p.name]
    }
    peers = {s: [url[p.name, h.name] for h in placement[p.name]] for p in plan.processes for s in p.services}
    secret = new_secret()
    logs = workdir / "logs"
    logs.mkdir(parents=True)

    broker_dir = workdir / "broker"
    # The operator's way for an external Mosquitto: `archipel broker-auth` writes the hashed
    # passwords and the ACL; the rest of the configuration is the embedded broker's, as in production.
    subprocess.run(
        [
            PYTHON,
            "-m",
            "archipel",
            "broker-auth",
            APP_REF,
            "--out",
            str(broker_dir),
            "--host",
            a.address,
            "--port",
            str(BROKER_PORT),
        ],
        env={**os.environ, SECRET_VAR: secret},
        cwd=workdir,
        check=True,
        capture_output=True,
        timeout=60,
    )
    config = write_config(
        broker_dir,
        a.address,
        BROKER_PORT,
        password_file=broker_dir / PASSWORD_FILE,
        acl_file=broker_dir / ACL_FILE,
    )
    mosquitto = find_mosquitto()
    assert mosquitto is not None, "Mosquitto is not installed (scripts/setup.sh installs it)"
    broker = Process(
        "broker@a", a, mosquitto_command(mosquitto, config), {}, logs / "broker-a.log", broker_dir
    )

    workers = []
    for process in plan.processes:
        for replica, host in enumerate(placement[process.name]):
            spec = plan.worker(
                process,
                peers=peers,
                broker_url=broker_url,
                host=host.address,
                port=ports[process.name],
                replica=replica,
                instance=f"{process.name}-{host.name}",
                probe_interval=PROBE_INTERVAL,
            )
            keyring = keyring_for(app, plan.deployment, process.name, process.services, [secret.encode()])
            data = workdir / f"host-{host.name}"
            data.mkdir(exist_ok=True)
            env = {
                **worker_environment(spec),
                KEYRING_VAR: msgspec.json.encode(keyring).decode(),
                DATA_DIR_VAR: str(data / "data"),
            }
            if any(keeps_state(s) for s in process.services):
                env[STORE_URL_VAR] = store_url
            workers.append(
                Process(
                    f"{process.name}@{host.name}",
                    host,
                    [PYTHON, "-m", "archipel.worker"],
                    env,
                    logs / f"{process.name}-{host.name}.log",
                    data,
                    url=url[process.name, host.name],
                    plan=process,
                )
            )
    operator = keyring_for(app, plan.deployment, OPERATOR, (), [secret.encode()], operator=True)
    return Shop(plan, secret, broker, workers, Signer(operator))


async def until(probe: Callable[[], Awaitable[bool]], within: float, what: str, every: float = 0.1) -> float:
    """Poll ``probe`` until it holds; return how long that took. AssertionError after ``within``."""
    started = time.monotonic()
    while not await probe():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not within {within:.0f}s")
        await asyncio.sleep(every)
    return time.monotonic() - started


async def ready(http: aiohttp.ClientSession, process: Process) -> bool:
    process.check_alive()
    try:
        async with http.get(process.url + "/readyz", timeout=aiohttp.ClientTimeout(total=1)) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def broker_listening(broker: Process, port: int) -> bool:
    broker.check_alive()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(broker.host.address, port), 1)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


@contextlib.asynccontextmanager
async def started(bus: MqttBus) -> AsyncIterator[MqttBus]:
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop()


@contextlib.asynccontextmanager
async def running(shop: Shop, http: aiohttp.ClientSession) -> AsyncIterator[None]:
    """The broker, then every worker, each ready; all stopped afterwards, whatever happened."""
    try:
        await shop.broker.start()
        await until(lambda: broker_listening(shop.broker, BROKER_PORT), 15, "the broker on host A listening")
        await asyncio.gather(*(w.start() for w in shop.workers))

        async def all_ready() -> bool:
            return all(await asyncio.gather(*(ready(http, w) for w in shop.workers)))

        try:
            await until(all_ready, 45, "every worker ready", every=0.2)
        except AssertionError:
            late = [w for w in shop.workers if not await ready(http, w)]
            raise AssertionError(
                "not ready within 45s: " + "\n\n".join(f"== {w.label}\n{w.tail()}" for w in late)
            ) from None
        yield
    finally:
        await asyncio.gather(*(w.stop(grace=15) for w in shop.workers))
        await shop.broker.stop(grace=5)
