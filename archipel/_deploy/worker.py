"""One process of a deployment: some services of an app behind one uvicorn server.

The supervisor starts ``python -m archipel._deploy.worker`` with a :class:`WorkerSpec` as JSON in the
``ARCHIPEL_WORKER`` environment variable; tests build the same server in-process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import msgspec
import uvicorn

from .._app import App
from .._errors import DefinitionError
from .._events.bus import EventBus, LocalBus
from .._loader import AppNotFound, load_app
from .._rpc.client import HttpTransport
from .._rpc.server import DEFAULT_MAX_BODY, RpcServer
from .._runtime import Runtime

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
    handler_attempts: int = 3
    durable: bool = True  # persistent MQTT session: events wait for this process while it is down


def build_server(app: App, spec: WorkerSpec) -> RpcServer:
    """The ASGI app of one process: runtime, event bus and remote transport chosen by ``spec``."""
    bus: EventBus
    if spec.broker is None:
        bus = LocalBus()
    else:
        from .._events.mqtt import MqttBus

        client_id = f"{app.name}-{spec.name}-{spec.replica}"
        bus = MqttBus(spec.broker, app.name, client_id=client_id, durable=spec.durable)
    transport = HttpTransport(spec.peers)
    runtime = Runtime(app, spec.services, bus, remote=transport.proxy, handler_attempts=spec.handler_attempts)
    return RpcServer(runtime, max_body=spec.max_body, on_startup=transport.start, on_shutdown=transport.close)


def uvicorn_config(server: RpcServer, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        server, host=host, port=port, lifespan="on", log_level="warning", access_log=False, loop="asyncio"
    )


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("ARCHIPEL_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        spec = msgspec.json.decode(os.environ[ENV_VAR], type=WorkerSpec)
        app = load_app(spec.app)
        app.validate()
        server = build_server(app, spec)
    except (KeyError, msgspec.DecodeError) as exc:
        sys.exit(f"archipel worker: missing or invalid {ENV_VAR}: {exc}")
    except (AppNotFound, DefinitionError) as exc:
        sys.exit(f"archipel worker: {exc}")
    uv = uvicorn.Server(uvicorn_config(server, spec.host, spec.port))
    asyncio.run(uv.serve())
    if not uv.started:
        sys.exit(3)


if __name__ == "__main__":
    main()
