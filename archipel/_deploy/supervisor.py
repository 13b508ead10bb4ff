"""The local cluster: starts the broker and one OS process per planned process and replica,
waits for readiness, restarts what dies, watches the broker, and stops everything in order.

- The broker (which one, its files, its watchdog and restarts): ``_deploy.brokers``, whose
  :class:`~._deploy.brokers.BrokerKeeper` the supervisor owns and hears of every change from.
- Children die with the supervisor, whatever kills it (``_deploy.hygiene``).
- The state file (``archipel status``) is rewritten, atomically, whenever something changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from .._app import App
from .._rpc.server import DEFAULT_MAX_BODY
from .._runtime import DATA_DIR_VAR
from .._security.keyring import KEYRING_VAR, OPERATOR, Keyring, keyring_for
from .._security.secrets import SECRET_FILE_NAME, SECRET_FILE_VAR, SECRET_VAR, load_secrets, stored_secret
from .._security.tls import TlsFiles
from .._security.tokens import Signer, operator_headers
from .broker import EMBEDDED, RUMQTTD
from .brokers import BrokerKeeper, choose_broker
from .children import (
    BrokerHealth,
    Child,
    PortInUse,
    StartupError,
    free_port,
    port_is_free,
    stop_waves,
    terminate,
)
from .environment import VERSION_VAR, worker_environment
from .hygiene import die_with_parent
from .logins import BrokerLogins
from .plan import DeploymentPlan, Mode, ProcessPlan
from .statefile import pid_alive, process_start, read_state, write_state
from .version import code_version

log = logging.getLogger("archipel.supervisor")

__all__ = [
    "EMBEDDED",
    "RUMQTTD",
    "Child",
    "PortInUse",
    "StartupError",
    "Supervisor",
    "free_port",
    "stop_waves",
]

STABLE_AFTER = 30.0  # seconds a restarted process must live before its back-off resets
DEFAULT_GRACE = 15.0  # seconds a process may take to stop before SIGKILL
PROBE_INTERVAL = 1.0
PROBE_FAILURES = 3  # failed broker probes in a row before the broker is restarted
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class Supervisor:
    def __init__(
        self,
        app_ref: str,
        app: App,
        plans: list[ProcessPlan],
        *,
        mode: Mode,
        broker: str | None = EMBEDDED,
        host: str = "127.0.0.1",
        port: int = 0,
        env: Mapping[str, str] | None = None,
        echo: Callable[[str, str], None] | None = None,
        restart: bool = True,
        max_body: int = DEFAULT_MAX_BODY,
        durable: bool | None = None,
        policies: Mapping[str, Any] | None = None,
        deployment: str | None = None,
        data_dir: Path | str | None = None,
        broker_port: int = 0,
        grace: float = DEFAULT_GRACE,
        state_file: Path | None = None,
        restart_delay: float = 0.2,
        probe_interval: float = PROBE_INTERVAL,
        probe_failures: int = PROBE_FAILURES,
        authenticate: bool = True,
        open_endpoints: Sequence[str] = (),
        probe_interval_peers: float = 1.0,
        version: str = "",
    ) -> None:
        """``deployment`` (default: the app's name) is the MQTT topic root and prefixes client ids
        and share groups; ``data_dir`` (default ``.archipel/data/<deployment>``) is the app's
        data directory: the services' stores, and the embedded broker's files under ``broker/``.
        ``grace``: seconds each process may take to stop; workers get a third of it to drain
        requests and as much for event handlers.

        The deployment's secret comes from ``ARCHIPEL_SECRET``/``ARCHIPEL_SECRET_FILE`` (in ``env``
        or the environment), else from ``secret`` in the data directory, made on first start. Each
        process gets its own keyring, never the secret. ``authenticate=False`` serves internal
        methods to anyone (development only); ``open_endpoints`` opens /metrics or /openapi.json."""
        self.app_ref, self.app, self.plans, self.mode = app_ref, app, plans, mode
        self.deployment = deployment or app.name
        if not _NAME.match(self.deployment):
            raise ValueError(f"deployment {self.deployment!r} must be lower case letters, digits, '-' or '_'")
        self.probe_interval = probe_interval_peers  # how often each process probes its peers
        self.host = host
        self._first_port = port
        self.data_dir = Path(data_dir or Path(".archipel", "data", self.deployment)).absolute()
        choice = choose_broker(broker, mode)
        self._env = {
            **os.environ,
            DATA_DIR_VAR: str(self.data_dir),
            **(env or {}),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }
        # The secret stays here: children get their keyrings (see _plan_children), not the secret.
        self._given_secrets = load_secrets(self._env)
        self._stored_secrets: list[bytes] | None = None
        for name in (SECRET_VAR, SECRET_FILE_VAR, KEYRING_VAR):
            self._env.pop(name, None)
        self._authenticate = authenticate
        self.tls = TlsFiles.from_env(self._env)  # ARCHIPEL_TLS_*: every process serves HTTPS
        self._env.update(self.tls.env())  # absolute: a process may start in another folder
        self.peers_file = self.data_dir / "peers.json"
        # What every replica runs: the same plan the Compose and Kubernetes generators write out.
        self.plan = DeploymentPlan(
            app_ref=app_ref,
            app=app,
            deployment=self.deployment,
            mode=mode,
            processes=tuple(plans),
            broker=broker or "",
            port=port,
            policies=dict(policies or {}),
            authenticate=authenticate,
            open_endpoints=tuple(open_endpoints),
            tls=self.tls.serves_https,
            drain=grace / 3,
            version=version,
        )
        self._operator: Signer | None = None
        self._open_endpoints = list(open_endpoints)
        self._echo = echo
        self._restart = restart
        self._restart_delay = restart_delay
        self._max_body = max_body
        self._policies = dict(policies or {})  # [policies], passed to every worker as configured
        self._grace = grace
        self._state_file = state_file
        self.children: list[Child] = []
        self._stopping = False
        self._published = False
        self._watchers: list[asyncio.Task[None]] = []
        self._broker = BrokerKeeper(
            choice,
            app=app,
            deployment=self.deployment,
            plans=plans,
            host=host,
            port=broker_port,
            data_dir=self.data_dir,
            env=self._env,
            tls=self.tls,
            secret=lambda: self._secrets[0],
            durable=durable,
            grace=grace,
            probe_interval=probe_interval,
            probe_failures=probe_failures,
            launch=self._launch,
            check_alive=self._check_alive,
            children=lambda: self.children,
            stopping=lambda: self._stopping,
            changed=self._changed,
        )

    @classmethod
    def from_plan(cls, plan: DeploymentPlan, **local: Any) -> Supervisor:
        """Run ``plan`` here; ``local`` sets what only a local cluster has (see ``__init__``)."""
        return cls(
            plan.app_ref,
            plan.app,
            list(plan.processes),
            mode=plan.mode,
            broker=plan.broker,
            port=plan.port,
            policies=plan.policies,
            deployment=plan.deployment,
            authenticate=plan.authenticate,
            open_endpoints=plan.open_endpoints,
            grace=plan.grace,
            version=plan.version,
            **local,
        )

    @property
    def broker_url(self) -> str | None:
        return self._broker.url

    @property
    def broker_kind(self) -> str | None:  # mosquitto, rumqttd (ours), url (external) or None
        return self._broker.kind

    @property
    def broker(self) -> Child | None:  # the broker's process, when it is ours
        return self._broker.child

    @property
    def health(self) -> BrokerHealth:
        return self._broker.health

    @property
    def broker_dir(self) -> Path:
        return self._broker.dir

    @property
    def durable(self) -> bool:
        return self._broker.durable

    @property
    def secret_source(self) -> str:
        """Where the deployment's secret comes from (never the secret): for the start-up table."""
        if self._given_secrets:
            return f"{SECRET_VAR} or {SECRET_FILE_VAR}"
        return str(self.data_dir / SECRET_FILE_NAME)

    @property
    def _secrets(self) -> list[bytes]:
        """The deployment's secrets: given, else the one kept in the data directory, made on
        first use (after the start-up checks, so a refused start leaves no data directory)."""
        if self._given_secrets:
            return self._given_secrets
        if self._stored_secrets is None:
            self._stored_secrets = [stored_secret(self.data_dir).encode()]
        return self._stored_secrets

    def operator_keyring(self) -> Keyring:
        """Keys to call any service of this deployment as the operator (tools and tests)."""
        return keyring_for(self.app, self.deployment, OPERATOR, (), self._secrets, operator=True)

    @property
    def logins(self) -> BrokerLogins:
        """The broker logins of this deployment (none on rumqttd, which checks none)."""
        return self._broker.logins

    def auth_headers(self, service: str) -> dict[str, str]:
        """The operator's credential for ``service``: its internal methods, and /metrics and
        /openapi.json of the processes hosting it."""
        if self._operator is None:
            self._operator = Signer(self.operator_keyring())
        return operator_headers(self._operator, service)

    # -- start ------------------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Start the broker, then every process; return once each one is ready.

        Raises :class:`PortInUse` before starting anything if a fixed port is taken, and
        :class:`StartupError` (after stopping what started) if a process does not come up.
        """
        self._check_ports()
        self._check_state_file()
        try:
            self._broker.lock_data_dir()
            await self._broker.start(timeout)
            self._plan_children()
            await self._broker.restore_sessions()
            for child in self.children:
                await self._launch(child)
            await asyncio.gather(*(self.wait_ready(child, timeout) for child in self.children))
        except BaseException:
            await self.stop()
            raise
        self.publish_peers()
        self._watchers = [asyncio.create_task(self._watch(child)) for child in self.children]
        if self.broker_url is not None and self.mode == "microservices":
            self._watchers.append(asyncio.create_task(self._broker.watch()))
        self._published = True
        self._broker.save()
        self._changed()

    def _planned_ports(self) -> list[tuple[int, str]]:
        planned: list[tuple[int, str]] = []
        if self._first_port:
            for process in self.plans:
                for replica in range(process.replicas):
                    label = process.name if replica == 0 else f"{process.name}#{replica}"
                    planned.append((self._first_port + len(planned), label))
        if self._broker.port and self._broker.ours:
            planned.append((self._broker.port, "the broker"))
        return planned

    def _check_ports(self) -> None:
        owners: dict[int, str] = {}
        for port, owner in self._planned_ports():
            if port in owners:
                raise PortInUse(f"port {port} is planned for both {owners[port]} and {owner}")
            owners[port] = owner
            if not port_is_free(self.host, port):
                raise PortInUse(
                    f"port {port} on {self.host} is already in use (planned for {owner}); stop what "
                    "uses it (another `archipel run`?) or choose other ports (0 picks free ones)"
                )

    def _check_state_file(self) -> None:
        # One deployment per state file: a second one would overwrite what `archipel status` reads.
        other = read_state(self._state_file) if self._state_file is not None else None
        if other is not None and pid_alive(other.get("supervisor_pid"), other.get("supervisor_started")):
            raise StartupError(
                f"deployment {other.get('deployment')!r} already runs with its state in {self._state_file} "
                f"(supervisor pid {other.get('supervisor_pid')}); stop it, or use another state directory"
            )

    def _plan_children(self) -> None:
        index = 0
        ports: dict[tuple[str, int], int] = {}
        for process in self.plans:
            for replica in range(process.replicas):
                ports[process.name, replica] = (
                    free_port(self.host) if self._first_port == 0 else self._first_port + index
                )
                index += 1
        peers: dict[str, list[str]] = {}
        for process in self.plans:
            for service in process.services:
                peers[service] = [self._url(ports[process.name, r]) for r in range(process.replicas)]
        for process in self.plans:
            for replica in range(process.replicas):
                self.children.append(self.new_child(process, replica, ports[process.name, replica], peers))

    def _url(self, port: int) -> str:
        return f"{self.tls.scheme}://{self.host}:{port}"

    def new_child(
        self, process: ProcessPlan, replica: int, port: int, peers: Mapping[str, list[str]] | None = None
    ) -> Child:
        """One replica of ``process``, not started: its environment is what a container would get
        (``_deploy.environment``), plus its keyring and the peers file the supervisor keeps."""
        spec = self.plan.worker(
            process,
            peers=peers if peers is not None else self.peers(),
            broker_url=self.broker_url,
            host=self.host,
            port=port,
            replica=replica,
            peers_file=str(self.peers_file),
            durable=self.durable,
            max_body=self._max_body,
            supervisor_pid=os.getpid(),
            broker_login=self.broker_kind != RUMQTTD,
            probe_interval=self.probe_interval,
        )
        keyring = keyring_for(self.app, self.deployment, process.name, process.services, self._secrets)
        env = {**self._env, **worker_environment(spec), KEYRING_VAR: msgspec.json.encode(keyring).decode()}
        return Child(
            process.name,
            [sys.executable, "-m", "archipel.worker"],
            env,
            url=self._url(port),
            services=process.services,
            replica=replica,
        )

    def peers(self) -> dict[str, list[str]]:
        """Each service's replicas that take calls now (all planned ones before the first start)."""
        peers: dict[str, list[str]] = {}
        for child in self.children:
            for service in child.services:
                urls = peers.setdefault(service, [])
                if child.in_rotation:
                    urls.append(child.url)
        return peers

    def publish_peers(self) -> None:
        """Rewrite the peers file: every process re-reads it within a probe interval."""
        write_state(self.peers_file, self.peers())

    async def _launch(self, child: Child) -> None:
        child.output.clear()
        child.ready = False
        child.version = self.plan.version or code_version(self.app)  # the code on disk now
        child.env[VERSION_VAR] = child.version
        child.process = await asyncio.create_subprocess_exec(
            *child.command,
            env=child.env,
            cwd=child.cwd,
            stdin=asyncio.subprocess.PIPE,  # never written: its EOF tells a worker we are gone
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
            preexec_fn=die_with_parent(os.getpid()),
        )
        child.since = time.time()
        child.pump = asyncio.create_task(self._pump(child, child.process))

    async def _pump(self, child: Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            child.output.append(line)
            if self._echo is not None:
                self._echo(child.label, line)

    async def wait_ready(self, child: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        connector = aiohttp.TCPConnector(ssl=self.tls.client_context() or True)
        async with aiohttp.ClientSession(connector=connector) as session:
            while time.monotonic() < deadline:
                self._check_alive(child)
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(
                        child.url + "/readyz", timeout=aiohttp.ClientTimeout(total=1)
                    ) as r:
                        if r.status == 200:
                            child.ready = True
                            return
                await asyncio.sleep(0.05)  # poll interval while the child boots
        raise StartupError(f"{child.label} was not ready within {timeout:.0f}s\n{child.tail()}")

    @staticmethod
    def _check_alive(child: Child) -> None:
        if child.process is not None and child.process.returncode is not None:
            raise StartupError(
                f"{child.label} exited with code {child.process.returncode} during start-up:\n{child.tail()}"
            )

    # -- watch ------------------------------------------------------------------------------

    async def _watch(self, child: Child) -> None:
        while child.process is not None:
            started = time.monotonic()
            code = await child.process.wait()
            if child.process.stdin is not None:
                child.process.stdin.close()
            if self._stopping or child.retired:
                return
            child.last_exit, child.ready = code, False
            self.publish_peers()  # callers stop choosing it now, not at their next probe
            if not self._restart:
                log.warning("%s exited with code %s", child.label, code)
                self._changed()
                return
            if time.monotonic() - started > STABLE_AFTER:
                child.backoff = 0  # it ran fine for a while: a new crash starts the back-off afresh
            delay = min(10.0, self._restart_delay * 2**child.backoff)
            child.backoff += 1
            child.restarts += 1
            log.warning(
                "%s exited with code %s; restart %d in %.1fs", child.label, code, child.restarts, delay
            )
            self._changed()
            await asyncio.sleep(delay)  # back-off between restarts of a crashing process
            if self._stopping or child.retired:
                return
            await self._launch(child)
            self._changed()
            with contextlib.suppress(StartupError):  # it died again: the loop restarts it
                await self.wait_ready(child, 60.0)
                self.publish_peers()
                self._broker.save()
                self._changed()

    async def restart_broker(self, *, graceful: bool = True, timeout: float = 30.0) -> None:
        """Restart the broker this supervisor runs, on the same port and data directory
        (``graceful``: SIGTERM, else SIGKILL; see :meth:`BrokerKeeper.restart`)."""
        await self._broker.restart(graceful=graceful, timeout=timeout)

    # -- stop -------------------------------------------------------------------------------

    async def add_replica(self, process: ProcessPlan, timeout: float = 60.0) -> Child:
        """Start one more replica of ``process`` (a fresh index: its own MQTT session), wait until
        it is ready, then put it in the rotation. A replica that does not come up is stopped."""
        replica = 1 + max((c.replica for c in self.children if c.name == process.name), default=-1)
        child = self.new_child(process, replica, free_port(self.host))
        self.children.append(child)
        try:
            await self._launch(child)
            await self.wait_ready(child, timeout)
        except BaseException:
            child.retired = True
            self.children.remove(child)
            await terminate([child], self._grace)
            raise
        self._watchers.append(asyncio.create_task(self._watch(child)))
        self.publish_peers()
        self._broker.save()
        self._changed()
        return child

    async def retire(self, child: Child, settle: float | None = None) -> None:
        """Remove one replica for good (scale-down, rollout): take it out of the rotation, give
        callers ``settle`` seconds (default: a probe interval and a half) to see that, stop it
        (it finishes its calls and handlers), then end its MQTT session
        (:meth:`BrokerKeeper.end_session`). Stopping the whole deployment keeps every session
        instead: its events wait for the next start."""
        child.leaving = True
        self.publish_peers()
        self._changed()
        await asyncio.sleep(self.probe_interval * 1.5 if settle is None else settle)
        child.retired = True
        if child in self.children:
            self.children.remove(child)
        await terminate([child], self._grace)
        if self.mode == "microservices":
            await self._broker.end_session(child)
        log.info("retired %s", child.label)
        self._changed()

    async def stop(self) -> None:
        """Stop every process: the edge first, event consumers last, the broker after all; each
        step SIGTERM, then SIGKILL what outlives the grace. MQTT sessions are kept."""
        self._stopping = True
        watchers, self._watchers = self._watchers, []
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        for wave in stop_waves(self.app, [c for c in self.children if c.running]):
            log.info("stopping %s", ", ".join(child.label for child in wave))
            await terminate(wave, self._grace)
        await self._broker.stop()  # after all
        if self._published and self._state_file is not None:
            self._state_file.unlink(missing_ok=True)
        self._published = False

    # -- status -----------------------------------------------------------------------------

    def _changed(self) -> None:
        if self._published and self._state_file is not None:
            write_state(self._state_file, self.status())

    def status(self) -> dict[str, object]:
        """What runs now; the state file holds this, rewritten at every change."""
        return {
            "app": self.app.name,
            "deployment": self.deployment,
            "mode": self.mode,
            **self._broker.status(),
            # How the deployment is guarded (docs/security.md); never a key or the secret.
            "security": {
                "authenticated_calls": self._authenticate,
                "broker_logins": self.broker_kind in ("mosquitto", "url") if self.broker_kind else None,
                "tls": self.tls.serves_https,
                "open_endpoints": list(self._open_endpoints),
            },
            "data_dir": str(self.data_dir),
            "supervisor_pid": os.getpid(),
            "supervisor_started": process_start(os.getpid()),
            "updated": time.time(),
            "processes": [
                {
                    "name": c.name,
                    "replica": c.replica,
                    "services": list(c.services),
                    "url": c.url,
                    "pid": c.pid if c.running else None,
                    "ready": c.ready and c.running,
                    "health": _health(c),
                    "since": c.since if c.running else None,
                    "uptime": round(time.time() - c.since, 1) if c.running and c.since else None,
                    "version": c.version,
                    "restarts": c.restarts,
                    "last_exit_code": c.last_exit,
                }
                for c in self.children
            ],
        }


def _health(child: Child) -> str:
    if child.leaving and child.running:
        return "draining"
    if not child.running:
        return "down"
    return "ready" if child.ready else "starting"
