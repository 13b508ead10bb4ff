"""Hosts of their own on one Linux machine, for tests: network namespaces plugged into a bridge.

Each host is a network namespace with one veth interface (``eth0``) on a bridge of the root
namespace. The bridge has an address on the hosts' subnet too, so the test process, in the root
namespace, reaches every host; and a host is cut off from outside it, by setting the bridge side
of its veth down (a pulled cable: nothing answers, nothing is refused).

Needs root and iproute2. Names carry the test's pid, so concurrent runs never meet, and
:meth:`Network.remove_stale` removes what a run that died before its teardown left behind:
namespaces, their processes and links named after a pid that no longer runs.

:class:`TcpRelay` makes a service of the root namespace bound to 127.0.0.1 (PostgreSQL) reachable
from the hosts, on the bridge's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from archipel._deploy.statefile import pid_alive

NAMESPACE_PREFIX = "archipel-mh"  # archipel-mh-{pid}-{host}
LINK_PREFIX = "amh"  # amh{pid}: the bridge; amh{pid}{host}: a veth's bridge side (15 characters at most)
_NAMESPACE = re.compile(rf"^{NAMESPACE_PREFIX}-(\d+)-\w+$")
_LINK = re.compile(rf"^{LINK_PREFIX}(\d+)[a-z]*$")
SUBNETS = ipaddress.IPv4Network("10.77.0.0/16")  # private; a free /24 of it is taken per run


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here; the message says what failed."""


def ip_binary() -> str:
    found = shutil.which("ip") or next(
        (path for path in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.access(path, os.X_OK)), None
    )
    if found is None:
        raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
    return found


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS`` and return its output; CalledProcessError (with ip's message) on failure."""
    result = subprocess.run([ip_binary(), *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, ["ip", *args], result.stdout, result.stderr)
    return result.stdout


@dataclass(frozen=True)
class Host:
    name: str  # one letter: a, b, c...
    namespace: str
    address: str
    link: str  # the bridge side of its veth, in the root namespace

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace (``ip netns exec`` execs it: same pid)."""
        return [ip_binary(), "netns", "exec", self.namespace, *argv]


class Network:
    """A bridge with hosts on it, each at ``{subnet}.{n}``; the bridge is ``{subnet}.254``."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.bridge = f"{LINK_PREFIX}{self.pid}"
        self.hosts: dict[str, Host] = {}
        self.subnet: ipaddress.IPv4Network | None = None
        self.gateway = ""  # the bridge's address: the root namespace as the hosts see it

    # -- set-up ----------------------------------------------------------------------------------

    def create(self) -> None:
        """Make the bridge on a free /24 of :data:`SUBNETS`; NetnsUnavailable when it cannot."""
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root")
        self.remove_stale()
        self._remove_own()
        self.subnet = self._free_subnet()
        self.gateway = str(self.subnet.network_address + 254)
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
        except subprocess.CalledProcessError as exc:
            self.remove()
            raise NetnsUnavailable(
                f"cannot make a bridge: {' '.join(exc.cmd)}: {exc.stderr.strip()}"
            ) from exc

    def add_host(self, name: str, number: int) -> Host:
        """A namespace ``name`` at ``{subnet}.{number}``, its ``eth0`` on the bridge, ``lo`` up."""
        assert self.subnet is not None, "create() first"
        if not re.fullmatch(r"[a-z]", name):
            raise ValueError(f"host names are one letter, not {name!r}")
        host = Host(
            name,
            f"{NAMESPACE_PREFIX}-{self.pid}-{name}",
            str(self.subnet.network_address + number),
            f"{self.bridge}{name}",
        )
        inside = f"{host.link}p"  # its name until it is moved into the namespace and renamed
        try:
            ip("netns", "add", host.namespace)
            ip("link", "add", host.link, "type", "veth", "peer", "name", inside)
            ip("link", "set", host.link, "master", self.bridge)
            ip("link", "set", inside, "netns", host.namespace)
            ip("-n", host.namespace, "link", "set", inside, "name", "eth0")
            ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
            ip("-n", host.namespace, "link", "set", "eth0", "up")
            ip("-n", host.namespace, "link", "set", "lo", "up")
            ip("link", "set", host.link, "up")
        except subprocess.CalledProcessError as exc:
            self.hosts[name] = host  # removed with the rest
            raise NetnsUnavailable(
                f"cannot make host {name}: {' '.join(exc.cmd)}: {exc.stderr.strip()}"
            ) from exc
        self.hosts[name] = host
        return host

    # -- faults ----------------------------------------------------------------------------------

    def cut(self, host: Host) -> None:
        """Pull the host's cable: its bridge port goes down, its packets are dropped both ways."""
        ip("link", "set", host.link, "down")

    def restore(self, host: Host) -> None:
        ip("link", "set", host.link, "up")

    # -- teardown --------------------------------------------------------------------------------

    def remove(self) -> None:
        """Remove every namespace (killing what still runs in it) and link of this network."""
        for host in self.hosts.values():
            _remove_namespace(host.namespace)
        self.hosts.clear()
        self._remove_own()

    def _remove_own(self) -> None:
        for namespace in _namespaces():
            found = _NAMESPACE.match(namespace)
            if found and int(found.group(1)) == self.pid:
                _remove_namespace(namespace)
        for link in _links():
            found = _LINK.match(link)
            if found and int(found.group(1)) == self.pid:
                ip("link", "del", link, check=False)

    @staticmethod
    def remove_stale() -> list[str]:
        """Remove namespaces and links left by runs whose process is gone; return their names."""
        removed = []
        for namespace in _namespaces():
            found = _NAMESPACE.match(namespace)
            if found and not pid_alive(int(found.group(1))):
                _remove_namespace(namespace)
                removed.append(namespace)
        for link in _links():
            found = _LINK.match(link)
            if found and not pid_alive(int(found.group(1))):
                ip("link", "del", link, check=False)
                removed.append(link)
        return removed

    def _free_subnet(self) -> ipaddress.IPv4Network:
        # Addresses and routes of the root namespace (other runs' bridges included). Routes broader
        # than a /16 (a 10.0.0.0/8 to a VPN, say) do not count: a /24 on the bridge wins over them.
        used = ip("-4", "-o", "addr", "show") + ip("-4", "route", "show", "table", "all")
        found = re.findall(r"\b\d+\.\d+\.\d+\.\d+/\d+", used)
        found += [f"{m}/32" for m in re.findall(r"\b(\d+\.\d+\.\d+\.\d+)\b", used)]
        networks = [ipaddress.IPv4Network(text, strict=False) for text in found]
        taken = [network for network in networks if network.prefixlen >= 16]
        candidates = list(SUBNETS.subnets(new_prefix=24))
        start = self.pid % len(candidates)
        for subnet in candidates[start:] + candidates[:start]:
            if not any(subnet.overlaps(other) for other in taken):
                return subnet
        raise NetnsUnavailable(f"no free /24 left in {SUBNETS}")


def _namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list", check=False).splitlines() if line.strip()]


def _links() -> list[str]:
    shown = ip("-o", "link", "show", check=False).splitlines()
    return [line.split(":")[1].strip().split("@")[0] for line in shown if line.count(":") >= 2]


def _remove_namespace(namespace: str) -> None:
    # A namespace outlives `ip netns del` while a process runs in it, and so do its links: kill
    # those processes first (they are this test's workers and broker, or a dead run's).
    for pid in ip("netns", "pids", namespace, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    ip("netns", "del", namespace, check=False)


class TcpRelay:
    """Forwards each connection made to ``listen_host`` (a port it picks) to ``target``: a server
    of the root namespace bound to 127.0.0.1, which the hosts cannot reach, made reachable on
    the bridge's address. Runs its own event loop in a thread, so a busy test never delays it."""

    def __init__(self, listen_host: str, target_host: str, target_port: int) -> None:
        self._listen = listen_host
        self._target = (target_host, target_port)
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="tcp-relay", daemon=True)

    def start(self) -> int:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the TCP relay on {self._listen} did not start: {self._error!r}")
        return self.port

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        connections: set[asyncio.Task[None]] = set()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await self._forward(reader, writer)
            finally:
                connections.discard(task)

        server = await asyncio.start_server(accept, self._listen, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(connections):
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            for end in (writer, upstream_writer):
                end.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):  # the other side went away: the connection ends
        writer.close()
