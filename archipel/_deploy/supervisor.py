"""The local cluster: starts the broker and one OS process per planned process and replica,
waits for readiness, restarts what dies, and stops everything on the way out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
import msgspec

from .._app import App
from .._rpc.server import DEFAULT_MAX_BODY
from .plan import Mode, ProcessPlan
from .worker import ENV_VAR, WorkerSpec

log = logging.getLogger("archipel.supervisor")

EMBEDDED = "embedded"
STABLE_AFTER = 30.0  # seconds a restarted process must live before its back-off resets


class StartupError(RuntimeError):
    """A process did not become ready. The message carries the end of its output."""


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str]
    url: str = ""
    services: tuple[str, ...] = ()
    replica: int = 0
    process: asyncio.subprocess.Process | None = None
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=60))
    restarts: int = 0
    pump: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        return self.name if self.replica == 0 else f"{self.name}#{self.replica}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def tail(self) -> str:
        return "\n".join(self.output)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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
    ) -> None:
        self.app_ref, self.app, self.plans, self.mode = app_ref, app, plans, mode
        self.host = host
        self._first_port = port
        self._broker_option = broker
        self.broker_url: str | None = None
        self._env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._echo = echo
        self._restart = restart
        self._max_body = max_body
        # rumqttd (the embedded broker) can panic when a durable shared-subscription session is
        # killed and comes back (docs/decisions/0003-embedded-broker.md): on it, sessions are
        # clean unless asked otherwise. Any other broker keeps durable sessions.
        self._durable = broker != EMBEDDED if durable is None else durable
        self.broker: Child | None = None
        self.children: list[Child] = []
        self._stopping = False
        self._watchers: list[asyncio.Task[None]] = []

    def _next_port(self, index: int) -> int:
        return free_port(self.host) if self._first_port == 0 else self._first_port + index

    async def start(self, timeout: float = 30.0) -> None:
        try:
            await self._start_broker(timeout)
            self._plan_children()
            for child in self.children:
                await self._launch(child)
            await asyncio.gather(*(self.wait_ready(child, timeout) for child in self.children))
        except BaseException:
            await self.stop()
            raise
        self._watchers = [asyncio.create_task(self._watch(child)) for child in self.children]

    async def _start_broker(self, timeout: float) -> None:
        option = self._broker_option
        if option is None or (self.mode == "monolith" and option == EMBEDDED):
            return  # the monolith's events stay in-process; no broker needed
        if option != EMBEDDED:
            self.broker_url = option
            return
        port = free_port(self.host)
        command = [sys.executable, "-m", "archipel._deploy.broker", "--host", self.host, "--port", str(port)]
        self.broker = Child("broker", command, self._env, url=f"mqtt://{self.host}:{port}")
        await self._launch(self.broker)
        await self._wait_port(self.broker, self.host, port, timeout)
        self.broker_url = self.broker.url

    def _plan_children(self) -> None:
        ports: dict[tuple[str, int], int] = {}
        index = 0
        for process in self.plans:
            for replica in range(process.replicas):
                ports[process.name, replica] = self._next_port(index)
                index += 1
        peers: dict[str, list[str]] = {}
        for process in self.plans:
            urls = [f"http://{self.host}:{ports[process.name, r]}" for r in range(process.replicas)]
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
                )
                env = {**self._env, ENV_VAR: msgspec.json.encode(spec).decode()}
                self.children.append(
                    Child(
                        process.name,
                        [sys.executable, "-m", "archipel._deploy.worker"],
                        env,
                        url=f"http://{self.host}:{port}",
                        services=process.services,
                        replica=replica,
                    )
                )

    async def _launch(self, child: Child) -> None:
        child.output.clear()
        child.process = await asyncio.create_subprocess_exec(
            *child.command,
            env=child.env,
            stdin=asyncio.subprocess.PIPE,  # the embedded broker exits when this pipe closes
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
        )
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
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                self._check_alive(child)
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(
                        child.url + "/readyz", timeout=aiohttp.ClientTimeout(total=1)
                    ) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)  # poll interval while the child boots
        raise StartupError(f"{child.label} was not ready within {timeout:.0f}s\n{child.tail()}")

    async def _wait_port(self, child: Child, host: str, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(child)
            try:
                _, writer = await asyncio.open_connection(host, port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise StartupError(
            f"{child.label} did not listen on {host}:{port} within {timeout:.0f}s\n{child.tail()}"
        )

    @staticmethod
    def _check_alive(child: Child) -> None:
        if child.process is not None and child.process.returncode is not None:
            raise StartupError(
                f"{child.label} exited with code {child.process.returncode} during start-up:\n{child.tail()}"
            )

    async def _watch(self, child: Child) -> None:
        while not self._stopping and child.process is not None:
            started = time.monotonic()
            code = await child.process.wait()
            if self._stopping or not self._restart:
                return
            if time.monotonic() - started > STABLE_AFTER:
                child.restarts = 0  # it ran fine for a while: a new crash starts the back-off afresh
            delay = min(10.0, 0.2 * 2**child.restarts)
            child.restarts += 1
            log.warning(
                "%s exited with code %s; restart %d in %.1fs", child.label, code, child.restarts, delay
            )
            await asyncio.sleep(delay)  # back-off between restarts of a crashing process
            if self._stopping:
                return
            await self._launch(child)

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process (services first, broker last), then SIGKILL what is left."""
        self._stopping = True
        for task in self._watchers:
            task.cancel()
        await _terminate([c for c in self.children if c.process is not None], grace)
        if self.broker is not None:
            await _terminate([self.broker], grace)

    def status(self) -> dict[str, object]:
        return {
            "app": self.app.name,
            "mode": self.mode,
            "broker": self.broker_url,
            "broker_pid": None if self.broker is None else self.broker.pid,
            "supervisor_pid": os.getpid(),
            "processes": [
                {
                    "name": c.name,
                    "replica": c.replica,
                    "services": list(c.services),
                    "url": c.url,
                    "pid": c.pid,
                    "restarts": c.restarts,
                }
                for c in self.children
            ],
        }


async def _terminate(children: list[Child], grace: float) -> None:
    running = [c.process for c in children if c.process is not None and c.process.returncode is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    if not running:
        return
    _, pending = await asyncio.wait([asyncio.create_task(p.wait()) for p in running], timeout=grace)
    if pending:
        for process in running:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        await asyncio.gather(*(p.wait() for p in running))
    for process in running:
        if process.stdin is not None:
            process.stdin.close()
