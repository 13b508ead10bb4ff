"""The broker of a local cluster: which one runs, starting ours, watching it, restarting it.

- The broker: ``"embedded"`` is a private Mosquitto keeping sessions in the deployment's data
  directory (``_deploy.mosquitto``; rumqttd when Mosquitto is not installed), ``"rumqttd"`` the pip
  broker, a URL an external one. Sessions are durable everywhere but on rumqttd
  (docs/decisions/0005-default-broker.md).
- Mosquitto gets its logins and ACL written anew from the app and the secret at every start, and
  serves ``mqtts://`` when the deployment serves HTTPS.
- A watchdog probes the broker at the MQTT level every second and restarts ours (SIGKILL, same
  port, same data) after three failures in a row. After every (re)start of Mosquitto the
  keeper subscribes the consumers' sessions again: Mosquitto forgets shared subscriptions.

The :class:`BrokerKeeper` does all this for the ``Supervisor`` (``_deploy.supervisor``), which owns
it, launches its process and hears of every change (the state file is rewritten then).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._app import App
from .._events.mqtt import SESSION_EXPIRY, parse_broker_url, shared_filter, subscription_id
from .._security.tls import TlsFiles
from .acl import broker_auth_files
from .broker import EMBEDDED, RUMQTTD, broker_kind
from .children import BrokerHealth, Child, StartupError, free_port, kill, terminate
from .logins import BrokerLogins
from .mosquitto import find_mosquitto, mosquitto_command, write_config
from .plan import Mode, ProcessPlan
from .probe import ProbeFailed, end_session, probe, restore_subscriptions
from .worker import client_id

# The supervisor's logger: the broker's lifecycle is part of what the supervisor reports.
log = logging.getLogger("archipel.supervisor")

__all__ = ["BrokerChoice", "BrokerKeeper", "choose_broker"]


@dataclass(frozen=True)
class BrokerChoice:
    """What a ``broker`` setting gives: ``kind`` is ``"mosquitto"``, ``"rumqttd"`` (ours to run),
    ``"url"`` (external) or None (no broker)."""

    kind: str | None
    url: str | None = None  # the external broker's
    mosquitto: str | None = None  # the binary, for "mosquitto"
    fallback: bool = False  # "embedded" was asked for, but Mosquitto is not installed


def choose_broker(option: str | None, mode: Mode) -> BrokerChoice:
    """The broker to use for ``option`` in ``mode``; raises ValueError for an unknown option."""
    if option is None:
        return BrokerChoice(None)
    kind = broker_kind(option)
    if kind == "url":
        return BrokerChoice("url", url=option)
    if mode == "monolith":
        return BrokerChoice(None)  # the monolith's events stay in-process
    if kind == EMBEDDED:
        mosquitto = find_mosquitto()
        if mosquitto is None:
            return BrokerChoice(RUMQTTD, fallback=True)
        return BrokerChoice("mosquitto", mosquitto=mosquitto)
    return BrokerChoice(RUMQTTD)


class BrokerKeeper:
    """The broker of one deployment: ours (Mosquitto or rumqttd) to start, watch and restart, or
    an external one to watch.

    What it needs of the supervisor comes as callables: ``secret`` (read on first use, so a
    refused start leaves no data directory), ``launch`` and ``check_alive`` for the broker's
    process, ``children`` (whose sessions it restores), ``stopping`` and ``changed``.
    """

    def __init__(
        self,
        choice: BrokerChoice,
        *,
        app: App,
        deployment: str,
        plans: Sequence[ProcessPlan],
        remote: Sequence[str] = (),
        host: str,
        port: int,
        data_dir: Path,
        env: dict[str, str],
        tls: TlsFiles,
        secret: Callable[[], bytes],
        durable: bool | None,
        grace: float,
        probe_interval: float,
        probe_failures: int,
        launch: Callable[[Child], Awaitable[None]],
        check_alive: Callable[[Child], None],
        children: Callable[[], Sequence[Child]],
        stopping: Callable[[], bool],
        changed: Callable[[], None],
    ) -> None:
        self.kind = choice.kind
        self.url = choice.url
        self._mosquitto = choice.mosquitto
        self._fallback = choice.fallback
        self.app, self.deployment, self.plans = app, deployment, plans
        self.remote = remote  # external services reached by URL: they log in under their own name
        self.host, self.port = host, port
        self.data_dir = data_dir
        self._env, self.tls, self._secret = env, tls, secret
        # rumqttd panics when a durable shared-subscription session comes back
        # (docs/decisions/0003-embedded-broker.md): on it, sessions are clean unless asked otherwise.
        self.durable = self.kind != RUMQTTD if durable is None else durable
        self._grace = grace
        self._probe_interval = probe_interval
        self._probe_failures = probe_failures
        self._probe_id = f"{deployment}-supervisor-{os.getpid()}"
        self._launch, self._check_alive = launch, check_alive
        self._children, self._stopping, self._changed = children, stopping, changed
        self.child: Child | None = None  # the broker's process, when it is ours
        self.health = BrokerHealth()
        self._lock: int | None = None
        self._restart_lock = asyncio.Lock()

    @property
    def ours(self) -> bool:
        """Whether this supervisor runs the broker."""
        return self.kind in ("mosquitto", RUMQTTD)

    @property
    def dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def logins(self) -> BrokerLogins:
        """The broker logins of this deployment (none on rumqttd, which checks none)."""
        assert self.url is not None, "no broker"
        return BrokerLogins(self.deployment, self._secret(), self.url, self.tls, self.kind != RUMQTTD)

    # -- start ------------------------------------------------------------------------------

    def lock_data_dir(self) -> None:
        # Two Mosquittos on one database would corrupt it: one supervisor per data directory.
        if self.kind != "mosquitto":
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

    async def start(self, timeout: float) -> None:
        """Start our broker, if we run one, and wait until it answers."""
        kind = self.kind
        if kind not in ("mosquitto", RUMQTTD):
            return
        if self._fallback:
            log.warning(
                "the mosquitto binary is not installed: the embedded broker falls back to rumqttd, "
                "which keeps nothing on disk and runs clean sessions, so events published while a "
                "consumer is down are LOST. Install mosquitto (apt-get install mosquitto) to keep them."
            )
        port = self.port or free_port(self.host)
        scheme = "mqtt"
        if kind == "mosquitto":
            assert self._mosquitto is not None
            # Its logins and ACL, written anew from the app and the secret at every start.
            processes = {plan.name: list(plan.services) for plan in self.plans}
            processes.update({service: [service] for service in self.remote})
            passwords, acl = broker_auth_files(self.app, self.deployment, processes, self._secret(), self.dir)
            tls = self.tls if self.tls.serves_https else None  # with HTTPS, mqtts:// too
            scheme = "mqtts" if tls is not None else "mqtt"
            config = write_config(self.dir, self.host, port, password_file=passwords, acl_file=acl, tls=tls)
            command, cwd = mosquitto_command(self._mosquitto, config), str(self.dir)
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
        self.child = Child("broker", command, self._env, url=f"{scheme}://{self.host}:{port}", cwd=cwd)
        self.url = self.child.url
        await self._launch(self.child)
        await self._wait(self.child, timeout)

    async def _wait(self, broker: Child, timeout: float) -> None:
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

    async def restore_sessions(self) -> None:
        """Subscribe every consumer's session again, before its process can: Mosquitto 2.0 keeps
        sessions and their queued events on disk but not their shared subscriptions, so after a
        (re)start an event published before a consumer subscribes again would be dropped for its
        service. Restored, the subscriptions queue events for processes still starting or down."""
        if self.kind != "mosquitto" or not self.durable or self.url is None:
            return
        host, port = parse_broker_url(self.url)
        for child in self._children():
            topics = [(s, h.topic) for s in child.services for h in self.app.specs[s].handlers]
            filters = sorted({shared_filter(self.deployment, s, topic) for s, topic in topics})
            if not filters:
                continue
            session = client_id(self.deployment, child.instance)
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

    async def end_session(self, child: Child) -> None:
        """End the MQTT session of a replica removed for good, as that replica.

        Mosquitto keeps handing a share of each event to an offline member of a shared
        subscription; ending the session stops that, so no share is stranded with a replica that
        will never come back."""
        if self.url is None or not self.durable:
            return
        host, port = parse_broker_url(self.url)
        session = client_id(self.deployment, child.instance)
        await end_session(host, port, session, **self.logins.process(child.name))

    def save(self) -> None:
        """Have Mosquitto write its database now (SIGUSR1), once the processes' sessions exist:
        they then survive a broker SIGKILL without waiting for the next autosave."""
        broker = self.child
        if self.kind == "mosquitto" and broker is not None and broker.process is not None:
            with contextlib.suppress(ProcessLookupError):
                broker.process.send_signal(signal.SIGUSR1)

    # -- watch ------------------------------------------------------------------------------

    async def watch(self) -> None:
        """Probe the broker every interval; restart ours after ``probe_failures`` failures in a row."""
        assert self.url is not None
        host, port = parse_broker_url(self.url)
        loop = asyncio.get_running_loop()
        while not self._stopping():
            next_probe = loop.time() + self._probe_interval
            if not self._restart_lock.locked():  # a restart in progress is judged once it is done
                await self._check(host, port)
            await asyncio.sleep(max(0.0, next_probe - loop.time()))

    async def _check(self, host: str, port: int) -> None:
        process = self.child.process if self.child is not None else None
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
            self.url,
            self.health.failures,
            error,
        )
        try:
            await self._restart(graceful=False, timeout=30.0, failed=process)
        except StartupError as exc:
            log.error("broker restart failed: %s", exc)
            self.health.state = "down"
            self._changed()

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
                log.info("broker %s answers", self.url)
                health.state, health.failures, health.error = "ok", 0, None
                self._changed()
            return
        health.failures += 1
        health.state, health.error = "failing", error
        # Once per outage: an external broker that stays down would otherwise log every second.
        level = logging.WARNING if health.failures == 1 else logging.DEBUG
        log.log(level, "broker %s does not answer: %s", self.url, error)
        self._changed()

    async def restart(self, *, graceful: bool = True, timeout: float = 30.0) -> None:
        """Restart the broker this supervisor runs, on the same port and data directory.

        ``graceful``: SIGTERM, and Mosquitto saves everything first; otherwise SIGKILL, and what
        changed since its last autosave (under 2 s) is lost. Clients reconnect by themselves.
        """
        await self._restart(graceful=graceful, timeout=timeout, failed=None)

    async def _restart(
        self, *, graceful: bool, timeout: float, failed: asyncio.subprocess.Process | None
    ) -> None:
        """Restart the broker; with ``failed``, only if that process is still the broker's."""
        broker = self.child
        if broker is None:
            raise RuntimeError("this supervisor does not run the broker")
        async with self._restart_lock:
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
            await self._wait(broker, timeout)
            await self.restore_sessions()
            log.warning("broker %s restarted (pid %s)", broker.url, broker.pid)
            self._changed()

    # -- stop and status --------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop our broker (SIGTERM, then SIGKILL after the grace) and free the data directory."""
        if self.child is not None:
            await terminate([self.child], self._grace)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def status(self) -> dict[str, object]:
        """The broker's part of the supervisor's status."""
        broker, health = self.child, self.health
        return {
            "broker": self.url,
            "broker_kind": "external" if self.kind == "url" else self.kind,
            "broker_pid": broker.pid if broker is not None and broker.running else None,
            "broker_health": health.state if self.url else None,
            "broker_failures": health.failures,
            "broker_restarts": health.restarts,
            "broker_error": health.error,
            "durable_sessions": self.durable if self.kind else None,
        }
