"""The local cluster: starts the broker and one OS process per planned process and replica,
waits for readiness, restarts what dies, watches the broker, and stops everything in order.

- The broker (which one, its files, its watchdog and restarts): ``_deploy.brokers``, whose
  :class:`~._deploy.brokers.BrokerKeeper` the supervisor owns and hears of every change from.
- Children die with the supervisor, whatever kills it (``_deploy.hygiene``); a child that dies
  unasked is restarted with a back-off (``_deploy.restarts``).
- The state file (``archipel status``) is rewritten, atomically, whenever something changes.
- Rollouts and scaling (``_deploy.scaling``) drive it through :meth:`Supervisor.add_replica` and
  :meth:`Supervisor.retire`; it stays one module because it alone owns the children's lifecycle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec

from .._app import App
from .._rpc.server import DEFAULT_MAX_BODY
from .._runtime import DATA_DIR_VAR
from .._security.keyring import KEYRING_VAR, Keyring
from .._security.secrets import SECRET_FILE_VAR, SECRET_VAR
from .._security.tls import TlsFiles
from .broker import EMBEDDED, RUMQTTD
from .brokers import BrokerKeeper, choose_broker
from .children import (
    BrokerHealth,
    Child,
    PortInUse,
    StartupError,
    check_alive,
    free_port,
    launch,
    stop_waves,
    terminate,
    wait_ready,
)
from .control import serve_control
from .credentials import DeploymentSecrets
from .environment import VERSION_VAR, worker_environment
from .log_files import RotatingLog, log_path
from .logins import BrokerLogins
from .plan import DeploymentPlan, Mode, ProcessPlan
from .remote_health import RemoteHealth
from .replica_set import replica_set
from .restarts import keep_running
from .scaling import ChangeRefused, Changes
from .startup import check_ports, check_state_file, planned_ports
from .statefile import process_start, read_state, write_state
from .version import SHAPE_VAR, app_shape, code_version, foreign_version


class Companion(Protocol):
    """Something served beside the deployment while it runs (the dashboard): started once every
    process is ready, before the state file names its ``url``; stopped first."""

    @property
    def url(self) -> str: ...

    async def start(self) -> object: ...

    async def stop(self) -> None: ...


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

DEFAULT_GRACE = 15.0  # seconds a process may take to stop before SIGKILL
PROBE_INTERVAL = 1.0
PROBE_FAILURES = 3  # failed broker probes in a row before the broker is restarted
EDGE_DRAIN_DELAY = 1.0  # seconds a stopping edge replica sheds its kept-alive connections
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
        control_socket: Path | None = None,
        companion: Callable[[Supervisor], Companion] | None = None,
        remote: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """``deployment`` (default: the app's name) is the MQTT topic root and prefixes client ids
        and share groups; ``data_dir`` (default ``.archipel/data/<deployment>``) is the app's
        data directory: the services' stores, and the embedded broker's files under ``broker/``.
        ``grace``: seconds each process may take to stop; workers get a third of it to drain
        requests and as much for event handlers.

        The deployment's secret comes from ``ARCHIPEL_SECRET``/``ARCHIPEL_SECRET_FILE`` (in ``env``
        or the environment), else from ``secret`` in the data directory, made on first start. Each
        process gets its own keyring, never the secret. ``authenticate=False`` serves internal
        methods to anyone (development only); ``open_endpoints`` opens /metrics or /openapi.json.
        ``remote``: external services reached by URL (service -> base URLs), started elsewhere."""
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
        self.credentials = DeploymentSecrets(app, self.deployment, self.data_dir, self._env)
        for name in (SECRET_VAR, SECRET_FILE_VAR, KEYRING_VAR):
            self._env.pop(name, None)
        self._authenticate = authenticate
        self.tls = TlsFiles.from_env(self._env)  # ARCHIPEL_TLS_*: every process serves HTTPS
        self._env.update(self.tls.env())  # absolute: a process may start in another folder
        self.peers_file = self.data_dir / "peers.json"
        self.replicas_file = self.data_dir / "replicas.json"
        self.changes = Changes(self)  # rollouts and scaling, one at a time
        self._control_path = control_socket  # where `archipel rollout` and `archipel scale` connect
        self._control: asyncio.AbstractServer | None = None
        # The live dashboard (None: not served), made by whoever runs us: it depends on us, not we on it.
        self._companion = companion
        self.dashboard: Companion | None = None
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
            remote={name: tuple(urls) for name, urls in (remote or {}).items()},
        )
        # Services reached by URL: their /readyz looked at, for `archipel status` (routing is the callers').
        tls = self.tls.client_context()
        self.remote_health = RemoteHealth(
            self.plan.remote, interval=probe_interval_peers, changed=self._changed, tls=tls
        )
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
            remote=list(remote or {}),
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
            check_alive=check_alive,
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
            remote=plan.remote,
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
        return self.credentials.source

    @property
    def _secrets(self) -> list[bytes]:
        return self.credentials.secrets

    def operator_keyring(self) -> Keyring:
        return self.credentials.operator_keyring()

    @property
    def logins(self) -> BrokerLogins:
        """The broker logins of this deployment (none on rumqttd, which checks none)."""
        return self._broker.logins

    def auth_headers(self, service: str) -> dict[str, str]:
        return self.credentials.auth_headers(service)

    # -- start ------------------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Start the broker, then every process; return once each one is ready.

        Raises :class:`PortInUse` before starting anything if a fixed port is taken, and
        :class:`StartupError` (after stopping what started) if a process does not come up.
        """
        broker_port = self._broker.port if self._broker.ours else 0
        edges = [p.name for p in self.plans if self.plan.serves_pages(p)]
        check_ports(self.host, planned_ports(self.plans, self._first_port, broker_port, edges))
        check_state_file(self._state_file)
        try:
            self._broker.lock_data_dir()
            await self._broker.start(timeout)
            for gone in self._plan_children():
                await self._broker.end_session(gone)  # a replica the plan no longer has
            # Before any child reads it: a previous run's file names its own addresses (another
            # port, or a monolith where a service now has a process), which the workers would
            # call until the next rewrite.
            write_state(self.peers_file, self.peers())
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
        self._watchers.append(asyncio.create_task(self.remote_health.watch()))
        if self._companion is not None:  # before the state file: it names the dashboard
            await self._serve_dashboard(self._companion)
        self._published = True
        self._broker.save()
        self._changed()
        if self._control_path is not None:
            self._control = await serve_control(self._control_path, self._command)

    async def _serve_dashboard(self, make: Callable[[Supervisor], Companion]) -> None:
        self.dashboard = make(self)
        try:
            await self.dashboard.start()
        except OSError as exc:
            await self.stop()  # the dashboard's half-open parts too
            raise StartupError(f"the dashboard cannot listen: {exc.strerror or exc}") from None

    async def _command(self, request: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
        """One request of the control channel (``_deploy.control``)."""
        command, service = request.get("command"), request.get("service")
        if not isinstance(service, str):
            raise ChangeRefused("name a service (or a process)")
        if command == "rollout":
            return await self.changes.rollout(service, progress)
        if command == "scale" and isinstance(request.get("replicas"), int):
            return await self.changes.scale(service, request["replicas"], progress)
        raise ChangeRefused(f"unknown command {command!r}: rollout SERVICE or scale SERVICE=N")

    def _plan_children(self) -> list[Child]:
        """The replicas to start (``_deploy.replica_set``); returns previous ones to end."""
        chosen, surplus = replica_set(
            self.plans,
            read_state(self.replicas_file) or {},
            first_port=self._first_port,
            pick_port=lambda: free_port(self.host),
            shared=[p.name for p in self.plans if self.plan.serves_pages(p)],
        )
        peers = self.plan.remote_peers()
        peers.update(
            {s: [self._url(port) for port in chosen[p.name].values()] for p in self.plans for s in p.services}
        )
        for process in self.plans:
            for replica, port in chosen[process.name].items():
                self.children.append(self.new_child(process, replica, port, peers))
        return [Child(name, [], {}, replica=index) for name, index in surplus]

    def _url(self, port: int) -> str:
        return f"{self.tls.scheme}://{self.host}:{port}"

    def new_child(
        self, process: ProcessPlan, replica: int, port: int, peers: Mapping[str, list[str]] | None = None
    ) -> Child:
        """One replica of ``process``, not started: its environment is what a container would get
        (``_deploy.environment``), plus its keyring and the peers file the supervisor keeps."""
        edge = self.plan.serves_pages(process)
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
            reuse_port=edge,  # its public address survives rollouts
            # Internal callers leave a replica before it stops (retire); the edge's clients are
            # told to, one answer at a time, while the other replicas take its port's connections.
            drain_delay=EDGE_DRAIN_DELAY if edge else 0.0,
        )
        keyring = self.credentials.keyring(process.name, process.services)
        env = {
            **self._env,
            **worker_environment(spec),
            KEYRING_VAR: msgspec.json.encode(keyring).decode(),
            SHAPE_VAR: json.dumps(app_shape(self.app)),  # what the keyrings and broker rules fit
        }
        if process.foreign and not process.command:
            raise StartupError(
                f"[external.{process.name}] has an image but no command: `archipel run` needs the "
                "command that starts it on this machine"
            )
        return Child(
            process.name,
            list(process.command) or [sys.executable, "-m", "archipel.worker"],
            env,
            url=self._url(port),
            services=process.services,
            replica=replica,
            cwd=process.cwd,
        )

    def peers(self) -> dict[str, list[str]]:
        """Each service's replicas, but those on their way out (scale-down, rollout); external
        services reached by URL at their configured addresses."""
        peers: dict[str, list[str]] = self.plan.remote_peers()
        for child in self.children:
            for service in child.services:
                urls = peers.setdefault(service, [])
                if child.listed:
                    urls.append(child.url)
        return peers

    def publish_peers(self) -> None:
        """Rewrite the peers file (every process re-reads it within a probe interval), and the
        replicas file: which replica indices (MQTT sessions) the next start resumes."""
        write_state(self.peers_file, self.peers())
        replicas: dict[str, list[int]] = {}
        for child in self.children:
            if not child.retired:
                replicas.setdefault(child.name, []).append(child.replica)
        write_state(self.replicas_file, replicas)

    async def _launch(self, child: Child) -> None:
        if child.services:  # a worker, not the broker: which code it runs is what is on disk now
            foreign = self.plan.process(child.name).foreign
            on_disk = foreign_version(child.command, child.cwd) if foreign else code_version(self.app)
            child.version = self.plan.version or on_disk
            child.env[VERSION_VAR] = child.version
        if child.log_file is None and self._state_file is not None:  # where `archipel logs` looks
            logs = self._state_file.parent / "logs"
            child.log_file = RotatingLog(log_path(logs, child.name, child.replica))
        await launch(child, self._echo)

    async def wait_ready(self, child: Child, timeout: float) -> None:
        await wait_ready(child, timeout, self.tls.client_context())

    # -- watch ------------------------------------------------------------------------------

    async def _watch(self, child: Child) -> None:
        """Restart ``child`` whenever it dies (``_deploy.restarts``), until stopped or retired."""
        await keep_running(
            child,
            restart=self._restart,
            delay=self._restart_delay,
            stopping=lambda: self._stopping,
            launch=self._launch,
            wait_ready=self.wait_ready,
            changed=self._changed,
            ready_again=self._ready_again,
        )

    def _ready_again(self) -> None:
        self._broker.save()  # its MQTT session is one to resume at the next start
        self._changed()

    async def restart_broker(self, *, graceful: bool = True, timeout: float = 30.0) -> None:
        """Restart the broker this supervisor runs, on the same port and data directory
        (``graceful``: SIGTERM, else SIGKILL; see :meth:`BrokerKeeper.restart`)."""
        await self._broker.restart(graceful=graceful, timeout=timeout)

    # -- stop -------------------------------------------------------------------------------

    async def add_replica(self, process: ProcessPlan, timeout: float = 60.0) -> Child:
        """Start one more replica of ``process`` (a fresh index: its own MQTT session), wait until
        it is ready, then put it in the rotation. A replica that does not come up is stopped."""
        siblings = [c for c in self.children if c.name == process.name]
        replica = 1 + max((c.replica for c in siblings), default=-1)
        edge = self.plan.serves_pages(process) and siblings  # shares the public port: SO_REUSEPORT
        port = int(siblings[0].url.rsplit(":", 1)[1]) if edge else free_port(self.host)
        child = self.new_child(process, replica, port)
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
        # SIGUSR2: it unsubscribes, handles what was already queued for it, then stops, so ending
        # its session below drops nothing.
        await terminate(
            [child], self._grace, signal.SIGUSR2 if self.mode == "microservices" else signal.SIGTERM
        )
        if self.mode == "microservices":
            await self._broker.end_session(child)
        self.publish_peers()  # the next start no longer resumes its session
        log.info("retired %s", child.label)
        self._changed()

    async def stop(self) -> None:
        """Stop every process: the edge first, event consumers last, the broker after all; each
        step SIGTERM, then SIGKILL what outlives the grace. MQTT sessions are kept."""
        self._stopping = True
        if self.dashboard is not None:  # first: it continues any process it paused
            await self.dashboard.stop()
            self.dashboard = None
        if self._control is not None and self._control_path is not None:
            self._control.close()
            self._control_path.unlink(missing_ok=True)
            self._control = None
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
            "processes": [c.status() for c in self.children],
            "external": self.plan.remote_peers(),  # reached by URL
            "external_health": dict(self.remote_health.states),  # each address: ready, not ready, down
            "dashboard": None if self.dashboard is None else self.dashboard.url,
        }
