"""The local cluster: starts the broker and one OS process per planned process and replica,
waits for readiness, restarts what dies, watches the broker, and stops everything in order.

- The broker: ``"embedded"`` is a private Mosquitto keeping sessions in the deployment's data
  directory (``_deploy.mosquitto``; rumqttd when Mosquitto is not installed), ``"rumqttd"`` the pip
  broker, a URL an external one. Sessions are durable everywhere but on rumqttd
  (docs/decisions/0005-default-broker.md).
- A watchdog probes the broker at the MQTT level every second and restarts ours (SIGKILL, same
  port, same data) after three failures in a row. After every (re)start of Mosquitto the
  supervisor subscribes the consumers' sessions again: Mosquitto forgets shared subscriptions.
- Children die with the supervisor, whatever kills it (``_deploy.hygiene``).
- The state file (``archipel status``) is rewritten, atomically, whenever something changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from .._app import App
from .._events.mqtt import SESSION_EXPIRY, parse_broker_url, shared_filter, subscription_id
from .._rpc.server import DEFAULT_MAX_BODY
from .._runtime import DATA_DIR_VAR
from .._security.acl import broker_auth_files
from .._security.keyring import KEYRING_VAR, OPERATOR, Keyring, keyring_for
from .._security.secrets import SECRET_FILE_VAR, SECRET_VAR, load_secrets, stored_secret
from .._security.tls import TlsFiles
from .._security.tokens import Signer
from .broker import EMBEDDED, RUMQTTD, broker_kind
from .children import (
    BrokerHealth,
    Child,
    PortInUse,
    StartupError,
    free_port,
    kill,
    port_is_free,
    stop_waves,
    terminate,
)
from .hygiene import die_with_parent
from .logins import BrokerLogins
from .mosquitto import find_mosquitto, mosquitto_command, write_config
from .plan import Mode, ProcessPlan
from .probe import ProbeFailed, end_session, probe, restore_subscriptions
from .statefile import pid_alive, process_start, read_state, write_state
from .worker import ENV_VAR, WorkerSpec, client_id

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
        self.host = host
        self._first_port = port
        self._broker_port = broker_port
        self.data_dir = Path(data_dir or Path(".archipel", "data", self.deployment)).absolute()
        self.broker_url: str | None = None
        self._mosquitto: str | None = None
        self._fallback = False
        self.broker_kind = self._choose_broker(broker)
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
        self._operator: Signer | None = None
        self._open_endpoints = list(open_endpoints)
        self._echo = echo
        self._restart = restart
        self._restart_delay = restart_delay
        self._max_body = max_body
        self._policies = dict(policies or {})  # [policies], passed to every worker as configured
        self._grace = grace
        self._state_file = state_file
        self._probe_interval = probe_interval
        self._probe_failures = probe_failures
        self._probe_id = f"{self.deployment}-supervisor-{os.getpid()}"
        # rumqttd panics when a durable shared-subscription session comes back
        # (docs/decisions/0003-embedded-broker.md): on it, sessions are clean unless asked otherwise.
        self._durable = self.broker_kind != RUMQTTD if durable is None else durable
        self.broker: Child | None = None
        self.health = BrokerHealth()
        self.children: list[Child] = []
        self._stopping = False
        self._published = False
        self._lock: int | None = None
        self._broker_lock = asyncio.Lock()
        self._watchers: list[asyncio.Task[None]] = []

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def durable(self) -> bool:
        return self._durable

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
        assert self.broker_url is not None, "no broker"
        return BrokerLogins(
            self.deployment, self._secrets[0], self.broker_url, self.tls, self.broker_kind != RUMQTTD
        )

    def auth_headers(self, service: str) -> dict[str, str]:
        """The operator's credential for ``service``: its internal methods, and /metrics and
        /openapi.json of the processes hosting it."""
        if self._operator is None:
            self._operator = Signer(self.operator_keyring())
        header = self._operator.header(OPERATOR, service)
        if header is None:
            raise KeyError(f"app {self.app.name!r} has no service {service!r}")
        return {"authorization": header}

    def _choose_broker(self, option: str | None) -> str | None:
        """``"mosquitto"``, ``"rumqttd"`` (ours to run), ``"url"`` (external) or None (no broker)."""
        if option is None:
            return None
        kind = broker_kind(option)
        if kind == "url":
            self.broker_url = option
            return "url"
        if self.mode == "monolith":
            return None  # the monolith's events stay in-process
        if kind == EMBEDDED:
            self._mosquitto = find_mosquitto()
            if self._mosquitto is None:
                self._fallback = True
                return RUMQTTD
            return "mosquitto"
        return RUMQTTD

    # -- start ------------------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Start the broker, then every process; return once each one is ready.

        Raises :class:`PortInUse` before starting anything if a fixed port is taken, and
        :class:`StartupError` (after stopping what started) if a process does not come up.
        """
        self._check_ports()
        self._check_state_file()
        try:
            self._lock_data_dir()
            await self._start_broker(timeout)
            self._plan_children()
            await self._restore_sessions()
            for child in self.children:
                await self._launch(child)
            await asyncio.gather(*(self.wait_ready(child, timeout) for child in self.children))
        except BaseException:
            await self.stop()
            raise
        self._watchers = [asyncio.create_task(self._watch(child)) for child in self.children]
        if self.broker_url is not None and self.mode == "microservices":
            self._watchers.append(asyncio.create_task(self._watch_broker()))
        self._published = True
        self._save_broker()
        self._changed()

    def _planned_ports(self) -> list[tuple[int, str]]:
        planned: list[tuple[int, str]] = []
        if self._first_port:
            for process in self.plans:
                for replica in range(process.replicas):
                    label = process.name if replica == 0 else f"{process.name}#{replica}"
                    planned.append((self._first_port + len(planned), label))
        if self._broker_port and self.broker_kind in ("mosquitto", RUMQTTD):
            planned.append((self._broker_port, "the broker"))
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

    def _lock_data_dir(self) -> None:
        # Two Mosquittos on one database would corrupt it: one supervisor per data directory.
        if self.broker_kind != "mosquitto":
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / "supervisor.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupError(
                f"deployment {self.deployment!r} already runs with data in {self.data_dir}; "
                "stop it, or give this one another deployment name or data directory"
            ) from None
        self._lock = fd

    async def _start_broker(self, timeout: float) -> None:
        kind = self.broker_kind
        if kind not in ("mosquitto", RUMQTTD):
            return
        if self._fallback:
            log.warning(
                "the mosquitto binary is not installed: the embedded broker falls back to rumqttd, "
                "which keeps nothing on disk and runs clean sessions, so events published while a "
                "consumer is down are LOST. Install mosquitto (apt-get install mosquitto) to keep them."
            )
        port = self._broker_port or free_port(self.host)
        scheme = "mqtt"
        if kind == "mosquitto":
            assert self._mosquitto is not None
            # Its logins and ACL, written anew from the app and the secret at every start.
            processes = {plan.name: list(plan.services) for plan in self.plans}
            passwords, acl = broker_auth_files(
                self.app, self.deployment, processes, self._secrets[0], self.broker_dir
            )
            tls = self.tls if self.tls.serves_https else None  # with HTTPS, mqtts:// too
            scheme = "mqtts" if tls is not None else "mqtt"
            config = write_config(
                self.broker_dir, self.host, port, password_file=passwords, acl_file=acl, tls=tls
            )
            command, cwd = mosquitto_command(self._mosquitto, config), str(self.broker_dir)
        else:
            command = [
                sys.executable,
                "-m",
                "archipel._deploy.broker",
                "--host",
                self.host,
                "--port",
                str(port),
            ]
            cwd = None
        self.broker = Child("broker", command, self._env, url=f"{scheme}://{self.host}:{port}", cwd=cwd)
        self.broker_url = self.broker.url
        await self._launch(self.broker)
        await self._wait_broker(self.broker, timeout)

    def _plan_children(self) -> None:
        ports: dict[tuple[str, int], int] = {}
        index = 0
        for process in self.plans:
            for replica in range(process.replicas):
                ports[process.name, replica] = (
                    free_port(self.host) if self._first_port == 0 else self._first_port + index
                )
                index += 1
        peers: dict[str, list[str]] = {}
        for process in self.plans:
            urls = [
                f"{self.tls.scheme}://{self.host}:{ports[process.name, r]}" for r in range(process.replicas)
            ]
            for service in process.services:
                peers[service] = urls
        for process in self.plans:
            for replica in range(process.replicas):
                port = ports[process.name, replica]
                spec = WorkerSpec(
                    app=self.app_ref,
                    name=process.name,
                    services=list(process.services),
                    host=self.host,
                    port=port,
                    broker=self.broker_url if self.mode == "microservices" else None,
                    peers={s: u for s, u in peers.items() if s not in process.services},
                    replica=replica,
                    max_body=self._max_body,
                    durable=self._durable,
                    policies=self._policies,
                    deployment=self.deployment,
                    drain=self._grace / 3,
                    supervisor_pid=os.getpid(),
                    internal=self.mode == "microservices",
                    authenticate=self._authenticate,
                    open_endpoints=self._open_endpoints,
                    broker_login=self.broker_kind != RUMQTTD,
                )
                keyring = keyring_for(
                    self.app, self.deployment, process.name, process.services, self._secrets
                )
                env = {
                    **self._env,
                    ENV_VAR: msgspec.json.encode(spec).decode(),
                    KEYRING_VAR: msgspec.json.encode(keyring).decode(),
                }
                self.children.append(
                    Child(
                        process.name,
                        [sys.executable, "-m", "archipel._deploy.worker"],
                        env,
                        url=f"{self.tls.scheme}://{self.host}:{port}",
                        services=process.services,
                        replica=replica,
                    )
                )

    async def _launch(self, child: Child) -> None:
        child.output.clear()
        child.ready = False
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

    async def _wait_broker(self, broker: Child, timeout: float) -> None:
        host, port = parse_broker_url(broker.url)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(broker)
            try:
                # Not the watchdog's client id: the same id would take the other's connection over.
                await probe(host, port, f"{self._probe_id}-start", **self.logins.supervisor())
                break
            except ProbeFailed as exc:
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"the broker did not answer within {timeout:.0f}s: {exc}\n{broker.tail()}"
                    ) from None
            await asyncio.sleep(0.02)  # poll interval while the broker binds its port
        broker.ready = True
        self.health.state, self.health.failures, self.health.error = "ok", 0, None

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
                self._save_broker()
                self._changed()

    async def _watch_broker(self) -> None:
        """Probe the broker every interval; restart ours after ``probe_failures`` failures in a row."""
        assert self.broker_url is not None
        host, port = parse_broker_url(self.broker_url)
        loop = asyncio.get_running_loop()
        while not self._stopping:
            next_probe = loop.time() + self._probe_interval
            if not self._broker_lock.locked():  # a restart in progress is judged once it is done
                await self._check_broker(host, port)
            await asyncio.sleep(max(0.0, next_probe - loop.time()))

    async def _check_broker(self, host: str, port: int) -> None:
        process = self.broker.process if self.broker is not None else None
        error: str | None
        if process is not None and process.returncode is not None:
            error = f"the broker process exited with code {process.returncode}"
            self.health.failures = self._probe_failures - 1  # a dead broker needs no more probes
        else:
            error = await self._probe(host, port)
        self._record_probe(error)
        if error is None or process is None or self.health.failures < self._probe_failures:
            return
        log.warning(
            "broker %s failed %d probes in a row (%s): restarting it on the same port and data",
            self.broker_url,
            self.health.failures,
            error,
        )
        try:
            await self._restart_broker(graceful=False, timeout=30.0, failed=process)
        except StartupError as exc:
            log.error("broker restart failed: %s", exc)
            self.health.state = "down"
            self._changed()

    async def _restore_sessions(self) -> None:
        """Subscribe every consumer's session again, before its process can: Mosquitto 2.0 keeps
        sessions and their queued events on disk but not their shared subscriptions, so after a
        (re)start an event published before a consumer subscribes again would be dropped for its
        service. Restored, the subscriptions queue events for processes still starting or down."""
        if self.broker_kind != "mosquitto" or not self._durable or self.broker_url is None:
            return
        host, port = parse_broker_url(self.broker_url)
        for child in self.children:
            topics = [(s, h.topic) for s in child.services for h in self.app.specs[s].handlers]
            filters = sorted({shared_filter(self.deployment, s, topic) for s, topic in topics})
            if not filters:
                continue
            session = client_id(self.deployment, child.name, child.replica)
            try:
                await restore_subscriptions(
                    host,
                    port,
                    session,
                    [(f, subscription_id(f)) for f in filters],
                    SESSION_EXPIRY,
                    **self.logins.process(child.name),  # as the consumer: see _deploy.logins
                )
            except ProbeFailed as exc:
                raise StartupError(f"could not restore the subscriptions of {child.label}: {exc}") from None

    def _save_broker(self) -> None:
        """Have Mosquitto write its database now (SIGUSR1), once the processes' sessions exist:
        they then survive a broker SIGKILL without waiting for the next autosave."""
        broker = self.broker
        if self.broker_kind == "mosquitto" and broker is not None and broker.process is not None:
            with contextlib.suppress(ProcessLookupError):
                broker.process.send_signal(signal.SIGUSR1)

    async def _probe(self, host: str, port: int) -> str | None:
        try:
            await probe(host, port, self._probe_id, timeout=self._probe_interval, **self.logins.supervisor())
        except ProbeFailed as exc:
            return str(exc)
        return None

    def _record_probe(self, error: str | None) -> None:
        health = self.health
        if error is None:
            if health.state != "ok":
                log.info("broker %s answers", self.broker_url)
                health.state, health.failures, health.error = "ok", 0, None
                self._changed()
            return
        health.failures += 1
        health.state, health.error = "failing", error
        # Once per outage: an external broker that stays down would otherwise log every second.
        level = logging.WARNING if health.failures == 1 else logging.DEBUG
        log.log(level, "broker %s does not answer: %s", self.broker_url, error)
        self._changed()

    async def restart_broker(self, *, graceful: bool = True, timeout: float = 30.0) -> None:
        """Restart the broker this supervisor runs, on the same port and data directory.

        ``graceful``: SIGTERM, and Mosquitto saves everything first; otherwise SIGKILL, and what
        changed since its last autosave (under 2 s) is lost. Clients reconnect by themselves.
        """
        await self._restart_broker(graceful=graceful, timeout=timeout, failed=None)

    async def _restart_broker(
        self, *, graceful: bool, timeout: float, failed: asyncio.subprocess.Process | None
    ) -> None:
        """Restart the broker; with ``failed``, only if that process is still the broker's."""
        broker = self.broker
        if broker is None:
            raise RuntimeError("this supervisor does not run the broker")
        async with self._broker_lock:
            if failed is not None and broker.process is not failed:
                return  # restarted by someone else meanwhile
            self.health.state = "restarting"
            self._changed()
            if graceful:
                await terminate([broker], self._grace)
            else:
                await kill(broker)
            self.health.restarts += 1
            await self._launch(broker)
            await self._wait_broker(broker, timeout)
            await self._restore_sessions()
            log.warning("broker %s restarted (pid %s)", broker.url, broker.pid)
            self._changed()

    # -- stop -------------------------------------------------------------------------------

    async def retire(self, child: Child) -> None:
        """Remove one replica for good (scale-down): stop it, then end its MQTT session.

        Mosquitto keeps handing a share of each event to an offline member of a shared
        subscription; ending the session stops that, so no share is stranded with a replica that
        will never come back. Stopping the whole deployment keeps every session instead: its
        events wait for the next start.
        """
        child.retired = True
        if child in self.children:
            self.children.remove(child)
        await terminate([child], self._grace)
        if self.broker_url is not None and self.mode == "microservices" and self._durable:
            host, port = parse_broker_url(self.broker_url)
            session = client_id(self.deployment, child.name, child.replica)
            await end_session(host, port, session, **self.logins.process(child.name))
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
        if self.broker is not None:
            await terminate([self.broker], self._grace)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        if self._published and self._state_file is not None:
            self._state_file.unlink(missing_ok=True)
        self._published = False

    # -- status -----------------------------------------------------------------------------

    def _changed(self) -> None:
        if self._published and self._state_file is not None:
            write_state(self._state_file, self.status())

    def status(self) -> dict[str, object]:
        """What runs now; the state file holds this, rewritten at every change."""
        broker = self.broker
        return {
            "app": self.app.name,
            "deployment": self.deployment,
            "mode": self.mode,
            "broker": self.broker_url,
            "broker_kind": "external" if self.broker_kind == "url" else self.broker_kind,
            "broker_pid": broker.pid if broker is not None and broker.running else None,
            "broker_health": self.health.state if self.broker_url else None,
            "broker_failures": self.health.failures,
            "broker_restarts": self.health.restarts,
            "broker_error": self.health.error,
            "durable_sessions": self._durable if self.broker_kind else None,
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
                    "since": c.since if c.running else None,
                    "restarts": c.restarts,
                    "last_exit_code": c.last_exit,
                }
                for c in self.children
            ],
        }
