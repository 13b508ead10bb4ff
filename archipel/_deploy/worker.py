"""One process of a deployment: some services of an app behind one uvicorn server.

The supervisor, a Compose file and a Kubernetes Deployment all start ``python -m archipel.worker``,
configured by ``ARCHIPEL_*`` variables (``_deploy.environment``); tests build the same server in-process.

On SIGTERM a worker stops taking requests, waits up to ``drain`` seconds for those in progress,
then stops its event bus, which waits up to ``drain`` seconds for running handlers: the
supervisor's grace (``Supervisor(grace=...)``, three times ``drain``) covers both.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import sys
import time
from types import FrameType

import uvicorn
import uvloop

from .._app import App
from .._errors import DefinitionError
from .._events.bus import EventBus, LocalBus
from .._interceptors import default_interceptors
from .._loader import AppNotFound, load_app
from .._resilience.breaker import Breakers
from .._resilience.policies import Policies
from .._rpc.client import HttpTransport
from .._rpc.limits import limited_httptools
from .._rpc.membership import Membership
from .._rpc.server import RpcServer
from .._runtime import Runtime
from .._security.keyring import KEYRING_VAR, Keyring, process_keyring
from .._security.secrets import SECRET_FILE_VAR, SECRET_VAR, SecretError
from .._security.tls import TlsError, TlsFiles
from .._security.tokens import Signer, Verifier
from .._telemetry.logs import LogSettings, adopt_uvicorn, configure_logging
from .._telemetry.metrics import describe_process
from .environment import BadEnvironment, WorkerSpec, worker_spec
from .hygiene import exit_with_parent, set_parent_death_signal
from .plan import called_services
from .version import SHAPE_VAR, app_shape, shape_changes


class InsecureConfiguration(DefinitionError):
    """A process would serve internal methods without a way to check its callers."""


def client_id(deployment: str, instance: str) -> str:
    """The MQTT client id of one replica: stable across restarts, so its durable session resumes."""
    return f"{deployment}-{instance}"


def build_server(
    app: App, spec: WorkerSpec, keyring: Keyring | None = None, tls: TlsFiles | None = None
) -> RpcServer:
    """The ASGI app of one process: runtime, event bus and remote transport chosen by ``spec``;
    credentials from ``keyring`` and TLS files from ``tls``, else from the environment."""
    deployment = spec.deployment or app.name
    if keyring is None:
        keyring = process_keyring(app, deployment, spec.name, spec.services)
    if keyring is None and spec.internal and spec.authenticate and not _nothing_internal(app, spec):
        raise InsecureConfiguration(
            f"process {spec.name!r} serves internal methods but has no credentials to check its callers: "
            f"set {SECRET_VAR} (or {SECRET_FILE_VAR}) to the deployment's secret"
        )
    tls = tls or TlsFiles.from_env()
    login = keyring if spec.broker_login else None  # rumqttd checks no logins
    bus: EventBus
    if spec.broker is None:
        bus = LocalBus()
    else:
        from .._events.mqtt import MqttBus
        from .logins import mqtt_context

        bus = MqttBus(
            spec.broker,
            deployment,
            client_id=client_id(deployment, spec.instance_name),
            durable=spec.durable,
            drain_timeout=spec.drain,
            username=login.mqtt_username if login is not None else None,
            password=login.mqtt_password if login is not None else None,
            tls=mqtt_context(spec.broker, tls),
        )
    called = called_services(app, spec.services)  # whatever the peers list: probe only these
    membership = Membership(
        {s: urls for s, urls in spec.peers.items() if s in called},
        peers_file=spec.peers_file,
        interval=spec.probe_interval,
        only=called,
    )
    transport = HttpTransport(
        spec.peers,
        signer=Signer(keyring) if keyring is not None else None,
        ssl=tls.client_context(),
        membership=membership,
    )
    policies = Policies.from_config(spec.policies, app)
    interceptors = default_interceptors(app, policies, endpoints=transport.endpoints)
    for interceptor in interceptors:
        if isinstance(interceptor, Breakers):  # a replica back in rotation needs no cool-down
            membership.on_back(interceptor.back_in_rotation)
    runtime = Runtime(
        app,
        spec.services,
        bus,
        remote=transport.proxy,
        interceptors=interceptors,
        instance=spec.instance_name,  # stable across restarts: takes back its outbox leases
    )
    return RpcServer(
        runtime,
        max_body=spec.max_body,
        on_startup=transport.start,
        on_shutdown=transport.close,
        verifier=Verifier(keyring) if keyring is not None and spec.authenticate else None,
        internal=spec.internal,
        open_endpoints=tuple(spec.open_endpoints),
        version=spec.version,
    )


def _nothing_internal(app: App, spec: WorkerSpec) -> bool:
    return all(m.public for name in spec.services for m in app.specs[name].methods.values())


def uvicorn_config(
    server: RpcServer,
    host: str,
    port: int,
    drain: float = 5.0,
    tls: TlsFiles | None = None,
    *,
    request_timeout: float = 10.0,
    max_header_bytes: int = 16 * 1024,
    keep_alive: int = 5,
    max_connections: int = 512,
) -> uvicorn.Config:
    """The uvicorn configuration of one process, with its HTTP limits: ``request_timeout`` and
    ``max_header_bytes`` as ``_rpc.limits`` enforces them; ``keep_alive``: an idle kept-alive
    connection is closed after this many seconds; ``max_connections``: with this many connections
    open (or requests in progress), a new request is answered 503 at once.

    The protocol is uvicorn's httptools one with those limits, on uvloop: a third less CPU per
    call than h11, and uvloop another 12-22 % less (docs/decisions/0010-http-stack.md). ``main``
    runs the server in uvloop itself; ``loop`` here only matters to ``uvicorn.Server.run``."""
    return uvicorn.Config(
        server,
        host=host,
        port=port,
        http=limited_httptools(request_timeout, max_header_bytes),
        lifespan="on",
        log_level="warning",
        access_log=False,
        loop="uvloop",
        timeout_graceful_shutdown=math.ceil(drain),  # uvicorn takes whole seconds
        timeout_keep_alive=keep_alive,
        h11_max_incomplete_event_size=max_header_bytes,
        limit_concurrency=max_connections,
        ssl_certfile=tls.cert if tls is not None else None,
        ssl_keyfile=tls.key if tls is not None else None,
    )


def main() -> None:
    try:
        spec = worker_spec(os.environ)
        logs = LogSettings(format=spec.log_format, level=spec.log_level, quiet=spec.log_quiet)
        configure_logging(logs, process=spec.name, services=spec.services, replica=spec.replica)
        if spec.supervisor_pid:
            _follow_supervisor(spec.supervisor_pid)
        app = load_app(spec.app)
        app.validate()
        _check_shape(app)
        tls = TlsFiles.from_env()
        server = build_server(app, spec, tls=tls)
        describe_process(spec.name, spec.instance_name, spec.version)  # archipel_process_info
        # Read once: the services' code, and what it may spawn, need not see the keys.
        os.environ.pop(KEYRING_VAR, None)
    except (AppNotFound, DefinitionError, SecretError, TlsError, BadEnvironment) as exc:
        sys.exit(f"archipel worker: {exc}")
    uv = DrainingServer(
        uvicorn_config(server, spec.host, spec.port, spec.drain, tls), server, spec.drain_delay
    )
    adopt_uvicorn(logs)  # uvicorn.Config installed its own handlers: ours format its lines too
    signal.signal(signal.SIGUSR2, uv.handle_leave)  # the supervisor removes this replica for good
    uvloop.run(uv.serve(sockets=[shared_socket(spec.host, spec.port)] if spec.reuse_port else None))
    if not uv.started:
        sys.exit(3)


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain delay: on the first SIGTERM the process stops accepting connections,
    answers ``/readyz`` with 503, and for ``delay`` seconds keeps answering on the connections it
    has, each answer asking the client to close its connection; callers (their probes, a
    Kubernetes Service, the other replicas of a shared port) move to other replicas meanwhile,
    before uvicorn's own graceful shutdown closes what is left."""

    def __init__(self, config: uvicorn.Config, rpc: RpcServer, delay: float) -> None:
        super().__init__(config)
        self._rpc = rpc
        self._delay = delay
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._exit_at is not None or self._delay <= 0:  # a second signal does not wait
            super().handle_exit(sig, frame)
            return
        self._rpc.draining = True
        self._exit_at = time.monotonic() + self._delay
        asyncio.get_running_loop().call_soon_threadsafe(self._stop_listening)

    def handle_leave(self, sig: int, frame: FrameType | None) -> None:
        """SIGUSR2: stop as on SIGTERM, and hand this replica's share of events to the others
        before the event bus stops (its session is ended afterwards)."""
        self._rpc.leaving = True
        self.handle_exit(signal.SIGTERM, frame)

    def _stop_listening(self) -> None:
        for server in self.servers:
            server.close()  # new connections go to the other listeners of a shared port

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return bool(await super().on_tick(counter))


def _check_shape(app: App) -> None:
    """Refuse to start code whose calls or events differ from what the deployment's credentials
    and broker rules were made for (the local supervisor sets ``ARCHIPEL_SHAPE``): it would start,
    then fail its calls with 401 or lose its events to the broker's ACL."""
    expected = os.environ.get(SHAPE_VAR)
    changes = shape_changes(json.loads(expected), app_shape(app)) if expected else []
    if changes:
        raise DefinitionError(
            "the code on disk changes the app's shape, which a rollout cannot apply "
            f"({'; '.join(changes)}): restart `archipel run` to deploy it"
        )


def shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other replicas on this host may bind too (SO_REUSEPORT): the
    kernel spreads new connections over them, and a replica that stops leaves the others serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _follow_supervisor(supervisor: int) -> None:
    # The supervisor already set PDEATHSIG before exec; setting it again costs nothing and covers
    # a worker started by other means. The thread is the fallback where the signal cannot help.
    set_parent_death_signal()
    if os.getppid() != supervisor:
        sys.exit("archipel worker: the supervisor is gone")
    exit_with_parent(supervisor)


if __name__ == "__main__":
    main()
