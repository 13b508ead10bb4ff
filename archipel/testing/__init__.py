"""Run an app inside a test, in either topology, and talk to it.

>>> async with run_app(app, "microservices") as running:
...     order_id = await running.client(Checkout).place_order("u1", "a@b.c")
...     await running.events.wait_for(OrderPlaced, lambda e: e.order_id == order_id)

With the pytest plugin (installed with archipel), the ``archipel_topology`` fixture runs the
same test body as a monolith, as microservices on the embedded broker (the private Mosquitto
``archipel run`` starts) and on rumqttd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

from .._app import App
from .._deploy.plan import External, Mode, ProcessPlan, check_external, plan, reached_by_url
from .._deploy.supervisor import EMBEDDED, Supervisor, free_port
from .._deploy.worker import uvicorn_config
from .._events.bus import LocalBus
from .._interceptors import default_interceptors
from .._loader import load_app, reference_of
from .._model import Service
from .._resilience.policies import Policies
from .._rpc.client import HttpTransport
from .._rpc.server import DEFAULT_MAX_BODY, RpcServer
from .._runtime import DATA_DIR_VAR, Runtime
from .._security.keyring import OPERATOR, Keyring, keyring_for
from .._security.secrets import new_secret
from .._security.tokens import Signer, Verifier, operator_headers
from ._recorder import EventRecorder

__all__ = ["EventRecorder", "External", "RunningApp", "Topology", "run_app"]

S = TypeVar("S", bound=Service)


@dataclass(frozen=True)
class Topology:
    """Where a test runs the app: ``mode``, and for microservices the broker: a URL, "embedded"
    (a private Mosquitto for this run, its files in the run's data folder) or "rumqttd"."""

    mode: Mode
    broker: str | None = None
    durable: bool | None = None  # durable MQTT sessions; None: the supervisor's choice (not on rumqttd)
    # Services implemented outside the app (``[external.NAME]``): started by their command, or
    # reached by URL. Microservices only.
    external: Mapping[str, External] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Topology | str) -> Topology:
        if isinstance(value, Topology):
            return value
        if value == "monolith":
            return cls("monolith")
        if value == "microservices":
            return cls("microservices", EMBEDDED)
        raise ValueError(f"topology must be 'monolith', 'microservices' or a Topology, not {value!r}")


class RunningApp:
    """A running app as a test sees it: proxies to call, URLs to request, events recorded."""

    def __init__(
        self,
        app: App,
        topology: Topology,
        urls: Mapping[str, str],
        events: EventRecorder,
        operator: Keyring,
    ) -> None:
        self.app = app
        self.topology = topology
        self.events = events
        self._urls = dict(urls)
        self._signer = Signer(operator)
        self._local: Runtime | None = None
        self._transport: HttpTransport | None = None
        self._supervisor: Supervisor | None = None
        self._policies: Policies | None = None

    def pid_of(self, service: str) -> int:
        """The OS process that hosts ``service`` (this test's own process in a monolith)."""
        if self._supervisor is None:
            return os.getpid()
        for child in self._supervisor.children:
            if service in child.services and child.pid is not None:
                return child.pid
        raise KeyError(service)

    async def wait_restarted(self, service: str, old_pid: int, timeout: float = 20.0) -> int:
        """After a process was killed: wait until the supervisor restarted it and it is ready."""
        if self._supervisor is None:
            raise RuntimeError("a monolith runs in the test's process; nothing restarts")
        async with asyncio.timeout(timeout):
            while (pid := self.pid_of(service)) == old_pid:
                await asyncio.sleep(0.05)  # the supervisor's restart back-off runs first
            child = next(c for c in self._supervisor.children if service in c.services)
            await self._supervisor.wait_ready(child, timeout)
        return pid

    def url_of(self, service: str) -> str:
        """Base URL (``http://127.0.0.1:PORT``) of the process that hosts ``service``."""
        if service not in self._urls:
            raise KeyError(f"app {self.app.name!r} has no service {service!r}")
        return self._urls[service]

    def urls_of(self, service: str) -> list[str]:
        """Base URLs of every replica of the process hosting ``service``."""
        if self._supervisor is None:
            return [self.url_of(service)]
        return [c.url for c in self._supervisor.children if service in c.services]

    def auth_headers(self, service: str) -> dict[str, str]:
        """The operator's credential for ``service``: calls its internal methods (in microservices),
        and reads /metrics and /openapi.json of the process hosting it, as a test may."""
        return operator_headers(self._signer, service)

    def client(self, cls: type[S]) -> S:
        """Call ``cls``'s rpc methods: the live instance in a monolith, an HTTP proxy otherwise."""
        spec = self.app.spec_of(cls)
        if self._local is not None:
            return self._local.instances[spec.name]  # type: ignore[return-value]
        assert self._transport is not None
        interceptors = default_interceptors(self.app, self._policies, endpoints=self._transport.endpoints)
        proxy: S = self._transport.proxy(spec, caller=OPERATOR, interceptors=interceptors)
        return proxy

    def instance(self, cls: type[S]) -> S:
        """The live instance (monolith only): for white-box assertions."""
        if self._local is None:
            raise RuntimeError("instances live in other processes in microservices mode; use client()")
        return self._local.instances[self.app.spec_of(cls).name]  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def run_app(
    app: App | str,
    topology: Topology | str = "monolith",
    *,
    env: Mapping[str, str] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    replicas: Mapping[str, int] | None = None,
    timeout: float = 30.0,
    max_body: int = DEFAULT_MAX_BODY,
    policies: Mapping[str, Any] | None = None,
    data_dir: str | Path | None = None,
    deployment: str | None = None,
    open_endpoints: Sequence[str] = (),
) -> AsyncIterator[RunningApp]:
    """Start ``app`` for the duration of the block and stop every part of it afterwards.

    ``data_dir``: where the services keep their state (SQLite stores) and the embedded broker
    its sessions; by default a new temporary folder, removed afterwards. Pass the same folder to
    two blocks to see state survive a restart.

    ``deployment`` names the run on the broker (topic root, client ids); default: the app's name.

    ``policies``: the resilience policies, as the ``[policies]`` table of ``archipel.toml``.

    Credentials are on, as in production: ``running.auth_headers(service)`` gives the operator's,
    and ``ARCHIPEL_SECRET`` in ``env`` fixes the deployment's secret. ``open_endpoints`` opens
    /metrics or /openapi.json ("metrics", "openapi") to callers without one."""
    the_app = load_app(app) if isinstance(app, str) else app
    checked = Policies.from_config(policies, the_app)  # a bad key fails here, before anything starts
    where = Topology.parse(topology)
    check_external(the_app, where.mode, where.external, groups or {})  # before anything starts
    scratch = None if data_dir is not None else tempfile.mkdtemp(prefix="archipel-test-")
    env = {**(env or {}), DATA_DIR_VAR: _absolute(data_dir or scratch or ".")}
    try:
        if where.mode == "monolith":
            async with _monolith(the_app, where, env, timeout, max_body, checked, open_endpoints) as running:
                yield running
        else:
            reference = app if isinstance(app, str) else reference_of(the_app)
            async with _microservices(
                the_app,
                reference,
                where,
                env,
                plan(the_app, "microservices", groups, replicas, where.external),
                timeout,
                max_body,
                policies,
                deployment,
                open_endpoints,
            ) as running:
                yield running
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _absolute(path: str | Path) -> str:
    return os.path.abspath(path)  # children run from other folders (the supervisor's cwd)


@contextlib.asynccontextmanager
async def _monolith(
    app: App,
    topology: Topology,
    env: Mapping[str, str] | None,
    timeout: float,
    max_body: int,
    policies: Policies,
    open_endpoints: Sequence[str],
) -> AsyncIterator[RunningApp]:
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    bus = LocalBus()
    events = EventRecorder()
    bus.observe(events.record)
    runtime = Runtime(app, list(app.specs), bus, interceptors=default_interceptors(app, policies))
    port = free_port()
    secrets = [new_secret().encode()]  # this run's: guards /metrics and /openapi.json as in production
    keyring = keyring_for(app, app.name, "monolith", app.specs, secrets)
    rpc = RpcServer(
        runtime,
        max_body=max_body,
        verifier=Verifier(keyring),
        internal=False,
        open_endpoints=tuple(open_endpoints),
    )
    server = uvicorn.Server(uvicorn_config(rpc, "127.0.0.1", port))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(timeout):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the monolith's server stopped during start-up")
                await asyncio.sleep(0.01)  # uvicorn exposes no start-up event to await
        urls = {name: f"http://127.0.0.1:{port}" for name in app.specs}
        operator = keyring_for(app, app.name, OPERATOR, (), secrets, operator=True)
        running = RunningApp(app, topology, urls, events, operator)
        running._local = runtime
        yield running
    finally:
        server.should_exit = True
        await task
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.asynccontextmanager
async def _microservices(
    app: App,
    reference: str,
    topology: Topology,
    env: Mapping[str, str] | None,
    plans: list[ProcessPlan],
    timeout: float,
    max_body: int,
    policies: Mapping[str, Any] | None,
    deployment: str | None,
    open_endpoints: Sequence[str],
) -> AsyncIterator[RunningApp]:
    from .._events.mqtt import MqttBus

    supervisor = Supervisor(
        reference,
        app,
        plans,
        mode="microservices",
        broker=topology.broker,
        env=env,
        max_body=max_body,
        durable=topology.durable,
        policies=policies,
        deployment=deployment,
        data_dir=(env or {}).get(DATA_DIR_VAR),
        open_endpoints=open_endpoints,
        echo=_echo if os.environ.get("ARCHIPEL_TEST_ECHO") else None,
        remote=reached_by_url(topology.external),
    )
    await supervisor.start(timeout)
    replicas: dict[str, list[str]] = supervisor.plan.remote_peers()
    for child in supervisor.children:
        for service in child.services:
            replicas.setdefault(service, []).append(child.url)
    urls = {service: addresses[0] for service, addresses in replicas.items()}
    events = EventRecorder()
    assert supervisor.broker_url is not None
    root = supervisor.deployment
    observer = MqttBus(
        supervisor.broker_url,
        root,
        client_id=f"{root}-test-observer-{os.getpid()}",
        durable=False,
        **supervisor.logins.observer(),  # read-only: sees every event, may publish none
    )
    observer.observe(events.record)
    operator = supervisor.operator_keyring()
    transport = HttpTransport(replicas, signer=Signer(operator), ssl=supervisor.tls.client_context())
    try:
        await observer.start()
        await transport.start()
        running = RunningApp(app, topology, urls, events, operator)
        running._transport = transport
        running._supervisor = supervisor
        running._policies = Policies.from_config(policies, app)
        yield running
    finally:
        await transport.close()
        await observer.stop()
        await supervisor.stop()


def _echo(label: str, line: str) -> None:
    print(f"{label:>12} | {line}", flush=True)  # ARCHIPEL_TEST_ECHO=1 shows the processes' output
