"""The processes of a local cluster: what the supervisor knows of each, the ports they need, the
order they stop in, and how they are stopped."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import signal
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .._app import App
from .hygiene import die_with_parent
from .log_files import RotatingLog

log = logging.getLogger("archipel.supervisor")


class StartupError(RuntimeError):
    """A process did not become ready. The message carries the end of its output."""


class PortInUse(StartupError):
    """A fixed port is taken: nothing was started."""


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str]
    url: str = ""
    services: tuple[str, ...] = ()
    replica: int = 0
    cwd: str | None = None
    process: asyncio.subprocess.Process | None = None
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=60))
    restarts: int = 0  # since the supervisor started
    backoff: int = 0  # crashes in a row: the exponent of the restart delay
    last_exit: int | None = None  # exit code of the previous process (negative: killed by a signal)
    since: float | None = None  # wall-clock start of the current process
    ready: bool = False
    retired: bool = False
    leaving: bool = False  # out of the rotation, about to be stopped (scale-down, rollout)
    version: str = ""  # of the code the current process runs (see _deploy.version)
    pump: asyncio.Task[None] | None = None
    log_file: RotatingLog | None = None  # its lines as received, across restarts (_deploy.log_files)

    @property
    def label(self) -> str:
        return self.name if self.replica == 0 else f"{self.name}#{self.replica}"

    @property
    def instance(self) -> str:
        """Its stable name: MQTT client id suffix and outbox lease holder."""
        return f"{self.name}-{self.replica}"

    @property
    def listed(self) -> bool:
        """Whether callers should know it: not on its way out. A replica that crashed and is
        being restarted stays listed; callers' probes keep it out of the rotation meanwhile."""
        return not self.leaving and not self.retired

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def health(self) -> str:
        if not self.running:
            return "down"
        if self.leaving:
            return "draining"
        return "ready" if self.ready else "starting"

    def status(self) -> dict[str, object]:
        """What ``archipel status`` shows of this replica."""
        running = self.running
        return {
            "name": self.name,
            "replica": self.replica,
            "services": list(self.services),
            "url": self.url,
            "pid": self.pid if running else None,
            "ready": self.ready and running,
            "health": self.health,
            "since": self.since if running else None,
            "uptime": round(time.time() - self.since, 1) if running and self.since else None,
            "version": self.version,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit,
        }

    def tail(self) -> str:
        return "\n".join(self.output)


@dataclass
class BrokerHealth:
    state: str = "unknown"  # ok, failing, restarting, down (a restart failed)
    failures: int = 0  # failed probes in a row
    restarts: int = 0
    error: str | None = None


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host``, chosen below the kernel's ephemeral range: a port picked there
    can be taken by any outgoing connection before the child binds it (seen in CI under load)."""
    low, _ = _ephemeral_range()
    first = 10000 if low > 12000 else 1024
    for _attempt in range(200):
        port = random.randrange(first, low)
        if port not in _handed_out and port_is_free(host, port):
            if len(_handed_out) > 4096:  # a long-lived supervisor: old ports are long gone
                _handed_out.clear()
            _handed_out.add(port)
            return port
    with socket.socket() as sock:  # a crowded range: let the kernel choose
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        # As the servers do: a connection of a previous run in TIME_WAIT is no conflict.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except (OSError, OverflowError):
            return False
    return True


def stop_waves(app: App, children: Sequence[Child]) -> list[list[Child]]:
    """The order to stop processes in, as groups stopped one after the other.

    A process stops after every process that calls it (the edge first). Among the processes free
    to stop, those without event handlers go first, so what they emit while draining is still
    handled in this run: consumers stop last. Replicas stop together. Services grouped so that
    two processes call each other are stopped together.
    """
    hosts = {service: child.name for child in children for service in child.services}
    callers: dict[str, set[str]] = {child.name: set() for child in children}
    for child in children:
        for service in child.services:
            for dependency in app.specs[service].dependencies.values():
                callee = hosts.get(dependency.__service_name__)
                if callee is not None and callee != child.name:
                    callers[callee].add(child.name)
    consumers = {c.name for c in children if any(app.specs[s].handlers for s in c.services)}
    remaining = set(callers)
    waves: list[list[Child]] = []
    while remaining:
        free = {name for name in remaining if not callers[name] & remaining} or set(remaining)
        wave = {name for name in free if name not in consumers} or free
        waves.append([child for child in children if child.name in wave])
        remaining -= wave
    return waves


async def kill(child: Child) -> None:
    """SIGKILL ``child`` now and reap it."""
    process = child.process
    if process is None or process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()
    if process.stdin is not None:
        process.stdin.close()


async def terminate(children: list[Child], grace: float, signum: int = signal.SIGTERM) -> None:
    """Signal ``children`` together (SIGTERM: stop; a worker takes SIGUSR2 as "stop for good");
    SIGKILL what outlives ``grace``; close their pipes."""
    running = [c.process for c in children if c.process is not None and c.process.returncode is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
    if running:
        _, pending = await asyncio.wait([asyncio.create_task(p.wait()) for p in running], timeout=grace)
        if pending:
            for process in running:
                if process.returncode is None:
                    log.warning("pid %s outlived its %.0fs grace: SIGKILL", process.pid, grace)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*(p.wait() for p in running))
    for child in children:
        if child.process is not None and child.process.stdin is not None:
            child.process.stdin.close()


async def launch(child: Child, echo: Callable[[str, str], None] | None = None) -> None:
    """Start ``child``'s command; its output goes to ``child.output`` (and ``echo``)."""
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
    child.pump = asyncio.create_task(_pump(child, child.process, echo))


async def _pump(
    child: Child, process: asyncio.subprocess.Process, echo: Callable[[str, str], None] | None
) -> None:
    assert process.stdout is not None
    async for raw in process.stdout:
        if child.log_file is not None:
            child.log_file.write(raw)
        line = raw.decode("utf-8", "replace").rstrip()
        child.output.append(line)
        if echo is not None:
            echo(child.label, line)


async def wait_ready(child: Child, timeout: float, tls: ssl.SSLContext | None = None) -> None:
    """Return once ``child`` itself answers ``/readyz`` with 200; StartupError if it exits or is
    not ready within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    # A new connection for each look: replicas of the edge share its port (SO_REUSEPORT), the
    # kernel picks one per connection, and only this child's own answer (its pid) says it is ready.
    connector = aiohttp.TCPConnector(ssl=tls or True, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        while time.monotonic() < deadline:
            check_alive(child)
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                async with session.get(child.url + "/readyz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                    answer = await r.json(content_type=None)
                    mine = child.process is not None and answer.get("pid") == child.process.pid
                    if r.status == 200 and mine:
                        child.ready = True
                        return
            await asyncio.sleep(0.05)  # poll interval while the child boots
    raise StartupError(f"{child.label} was not ready within {timeout:.0f}s\n{child.tail()}")


def check_alive(child: Child) -> None:
    """Raise :class:`StartupError` with the end of its output if ``child`` has exited."""
    if child.process is not None and child.process.returncode is not None:
        raise StartupError(
            f"{child.label} exited with code {child.process.returncode} during start-up:\n{child.tail()}"
        )
