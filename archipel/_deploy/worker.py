"""One process of a deployment: some services of an app behind one uvicorn server.

The supervisor starts ``python -m archipel._deploy.worker`` with a :class:`WorkerSpec` as JSON in the
``ARCHIPEL_WORKER`` environment variable; tests build the same server in-process.

On SIGTERM a worker stops taking requests, waits up to ``drain`` seconds for those in progress,
then stops its event bus, which waits up to ``drain`` seconds for running handlers: the
supervisor's grace (``Supervisor(grace=...)``, three times ``drain``) covers both.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys

import msgspec
import uvicorn

from .._app import App
from .._errors import DefinitionError
from .._events.bus import EventBus, LocalBus
from .._interceptors import default_interceptors
from .._loader import AppNotFound, load_app
from .._resilience.policies import Policies
from .._rpc.client import HttpTransport
from .._rpc.limits import limited_h11
from .._rpc.server import DEFAULT_MAX_BODY, RpcServer
from .._runtime import Runtime
from .._security.keyring import KEYRING_VAR, Keyring, process_keyring
from .._security.secrets import SECRET_FILE_VAR, SECRET_VAR, SecretError
from .._security.tls import TlsError, TlsFiles
from .._security.tokens import Signer, Verifier
from .hygiene import exit_with_parent, set_parent_death_signal

ENV_VAR = "ARCHIPEL_WORKER"


class WorkerSpec(msgspec.Struct, kw_only=True):
    app: str  # reference, e.g. "shop.app:app"
    name: str  # process name, e.g. "checkout" or "monolith"
    services: list[str]
    host: str = "127.0.0.1"
    port: int = 8000
    broker: str | None = None  # mqtt://host:port; None: in-process event bus
    peers: dict[str, list[str]] = msgspec.field(default_factory=dict)  # service -> base URLs
    replica: int = 0
    max_body: int = DEFAULT_MAX_BODY
    redelivery_window: float | None = None  # None: ARCHIPEL_REDELIVERY_WINDOW or the default
    durable: bool = True  # persistent MQTT session: events wait for this process while it is down
    policies: dict[str, object] = msgspec.field(default_factory=dict)  # [policies] as configured
    deployment: str = ""  # MQTT topic root and client-id prefix; "" means the app's name
    drain: float = 5.0  # seconds for requests in progress, then as much for running event handlers
    supervisor_pid: int = 0  # when set, exit as soon as this parent is gone (see _deploy.hygiene)
    internal: bool = True  # serve internal methods (to callers with a credential); a monolith does not
    authenticate: bool = True  # False serves internal methods to anyone: development only
    open_endpoints: list[str] = msgspec.field(default_factory=list)  # of _rpc.server.OBSERVABLE
    broker_login: bool = True  # log in to the broker with the keyring's login (not on rumqttd)


class InsecureConfiguration(DefinitionError):
    """A process would serve internal methods without a way to check its callers."""


def client_id(deployment: str, process: str, replica: int) -> str:
    """The MQTT client id of one replica: stable across restarts, so its durable session resumes."""
    return f"{deployment}-{process}-{replica}"


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
            client_id=client_id(deployment, spec.name, spec.replica),
            durable=spec.durable,
            drain_timeout=spec.drain,
            username=login.mqtt_username if login is not None else None,
            password=login.mqtt_password if login is not None else None,
            tls=mqtt_context(spec.broker, tls),
        )
    transport = HttpTransport(
        spec.peers, signer=Signer(keyring) if keyring is not None else None, ssl=tls.client_context()
    )
    policies = Policies.from_config(spec.policies, app)
    runtime = Runtime(
        app,
        spec.services,
        bus,
        remote=transport.proxy,
        redelivery_window=spec.redelivery_window,
        interceptors=default_interceptors(app, policies, endpoints=transport.endpoints),
        instance=f"{spec.name}.{spec.replica}",  # stable across restarts: takes back its outbox leases
    )
    return RpcServer(
        runtime,
        max_body=spec.max_body,
        on_startup=transport.start,
        on_shutdown=transport.close,
        verifier=Verifier(keyring) if keyring is not None and spec.authenticate else None,
        internal=spec.internal,
        open_endpoints=tuple(spec.open_endpoints),
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
    open (or requests in progress), a new request is answered 503 at once."""
    return uvicorn.Config(
        server,
        host=host,
        port=port,
        http=limited_h11(request_timeout, max_header_bytes),
        lifespan="on",
        log_level="warning",
        access_log=False,
        loop="asyncio",
        timeout_graceful_shutdown=math.ceil(drain),  # uvicorn takes whole seconds
        timeout_keep_alive=keep_alive,
        h11_max_incomplete_event_size=max_header_bytes,
        limit_concurrency=max_connections,
        ssl_certfile=tls.cert if tls is not None else None,
        ssl_keyfile=tls.key if tls is not None else None,
    )


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("ARCHIPEL_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        spec = msgspec.json.decode(os.environ[ENV_VAR], type=WorkerSpec)
        if spec.supervisor_pid:
            _follow_supervisor(spec.supervisor_pid)
        app = load_app(spec.app)
        app.validate()
        tls = TlsFiles.from_env()
        server = build_server(app, spec, tls=tls)
        # Read once: the services' code, and what it may spawn, need not see the keys.
        os.environ.pop(KEYRING_VAR, None)
    except (KeyError, msgspec.DecodeError) as exc:
        sys.exit(f"archipel worker: missing or invalid {ENV_VAR}: {exc}")
    except (AppNotFound, DefinitionError, SecretError, TlsError) as exc:
        sys.exit(f"archipel worker: {exc}")
    uv = uvicorn.Server(uvicorn_config(server, spec.host, spec.port, spec.drain, tls))
    asyncio.run(uv.serve())
    if not uv.started:
        sys.exit(3)


def _follow_supervisor(supervisor: int) -> None:
    # The supervisor already set PDEATHSIG before exec; setting it again costs nothing and covers
    # a worker started by other means. The thread is the fallback where the signal cannot help.
    set_parent_death_signal()
    if os.getppid() != supervisor:
        sys.exit("archipel worker: the supervisor is gone")
    exit_with_parent(supervisor)


if __name__ == "__main__":
    main()
