"""The process contract: a worker is configured by ``ARCHIPEL_*`` environment variables only.

The local supervisor, a Compose file and a Kubernetes Deployment start the same entry point
(``python -m archipel.worker``) with the same variables, written by :func:`worker_environment`
from one :class:`WorkerSpec`, so a process cannot behave differently under the three deployers.

==============================  ================================================================
``ARCHIPEL_APP``                the app: ``module:attribute`` or ``path/to/file.py[:attribute]``
``ARCHIPEL_PROCESS``            this process's name in the plan (a group, or one service's name)
``ARCHIPEL_SERVICES``           the services it hosts, comma-separated (default: the process name)
``ARCHIPEL_HOST``, ``_PORT``    where it listens (default ``0.0.0.0:8000``)
``ARCHIPEL_BROKER``             ``mqtt://`` or ``mqtts://host:port``; unset: an in-process event bus
``ARCHIPEL_PEERS``              ``service=url[,url...]`` entries separated by ``;`` or new lines
``ARCHIPEL_PEERS_FILE``         a JSON ``{service: [url, ...]}`` file, re-read when it changes
``ARCHIPEL_INSTANCE``           this replica's stable name: its MQTT client id and outbox leases
``ARCHIPEL_VERSION``            a label reported by ``/readyz`` and ``archipel status``
``ARCHIPEL_DEPLOYMENT``         the MQTT topic root and client-id prefix (default: the app's name)
``ARCHIPEL_DRAIN``              seconds for calls in progress at exit, then as much for handlers
``ARCHIPEL_DRAIN_DELAY``        seconds between SIGTERM and closing the port, answering ``/readyz``
                                503 meanwhile, so callers stop choosing this replica first
``ARCHIPEL_INTERNAL``           ``0``: serve public methods only (a monolith)
``ARCHIPEL_AUTHENTICATE``       ``0``: internal methods open to anyone (development only)
``ARCHIPEL_OPEN_ENDPOINTS``     ``metrics``, ``openapi``: served without a credential
``ARCHIPEL_BROKER_LOGIN``       ``0``: connect to the broker anonymously (rumqttd)
``ARCHIPEL_DURABLE``            ``0``: clean MQTT sessions (events sent while down are lost)
``ARCHIPEL_REUSE_PORT``         ``1``: listen with SO_REUSEPORT, so several replicas on one host share
                                one port (the local cluster's edge: its public address never moves)
``ARCHIPEL_POLICIES``           the ``[policies]`` table as JSON
``ARCHIPEL_MAX_BODY``           the largest request body accepted, in bytes
``ARCHIPEL_PROBE_INTERVAL``     seconds between health probes of each peer replica
``ARCHIPEL_SUPERVISOR_PID``     exit when this process is gone (set by the local supervisor)
``ARCHIPEL_LOG_FORMAT``         ``text`` (the default) or ``json``: one object a line
``ARCHIPEL_LOG_LEVEL``          ``DEBUG``, ``INFO`` (the default), ``WARNING``, ``ERROR``
``ARCHIPEL_LOG_QUIET``          ``0``: the MQTT client's and uvicorn's INFO lines too
==============================  ================================================================

Credentials and files come from their own variables: ``ARCHIPEL_KEYRING`` or
``ARCHIPEL_KEYRING_FILE`` (this process's keys), else ``ARCHIPEL_SECRET`` or
``ARCHIPEL_SECRET_FILE``; ``ARCHIPEL_TLS_CERT``, ``_KEY``, ``_CA``; ``ARCHIPEL_DATA_DIR`` or
``ARCHIPEL_STORE_URL`` for the services' state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgspec

from .._rpc.server import DEFAULT_MAX_BODY
from .._telemetry.logs import parse_format, parse_level

T = TypeVar("T")

VERSION_VAR = "ARCHIPEL_VERSION"


class WorkerSpec(msgspec.Struct, kw_only=True):
    app: str  # reference, e.g. "shop.app:app"
    name: str  # process name, e.g. "checkout" or "monolith"
    services: list[str]
    host: str = "0.0.0.0"
    port: int = 8000
    broker: str | None = None  # mqtt://host:port; None: in-process event bus
    peers: dict[str, list[str]] = msgspec.field(default_factory=dict)  # service -> base URLs
    peers_file: str = ""  # a JSON {service: [urls]} file re-read when it changes (local cluster)
    replica: int = 0
    instance: str = ""  # stable replica name; "" means "<name>-<replica>"
    version: str = ""
    max_body: int = DEFAULT_MAX_BODY
    durable: bool = True  # persistent MQTT session: events wait for this process while it is down
    policies: dict[str, object] = msgspec.field(default_factory=dict)  # [policies] as configured
    deployment: str = ""  # MQTT topic root and client-id prefix; "" means the app's name
    drain: float = 5.0  # seconds for requests in progress, then as much for running event handlers
    drain_delay: float = 0.0  # seconds answering /readyz 503 after SIGTERM before the port closes
    probe_interval: float = 1.0  # seconds between health probes of each peer replica
    supervisor_pid: int = 0  # when set, exit as soon as this parent is gone (see _deploy.hygiene)
    internal: bool = True  # serve internal methods (to callers with a credential); a monolith does not
    authenticate: bool = True  # False serves internal methods to anyone: development only
    open_endpoints: list[str] = msgspec.field(default_factory=list)  # of _rpc.server.OBSERVABLE
    broker_login: bool = True  # log in to the broker with the keyring's login (not on rumqttd)
    reuse_port: bool = False  # SO_REUSEPORT: replicas of the edge share one public port
    log_format: str = "text"  # or "json" (_telemetry.logs)
    log_level: str = "INFO"
    log_quiet: bool = True  # routine MQTT and uvicorn lines held to WARNING below DEBUG

    @property
    def instance_name(self) -> str:
        return self.instance or f"{self.name}-{self.replica}"


class BadEnvironment(ValueError):
    """A variable of the process contract is missing or malformed; the message names it."""


def worker_environment(spec: WorkerSpec) -> dict[str, str]:
    """The variables that configure a worker as ``spec`` says; defaults are left out."""
    default = WorkerSpec(app="", name="", services=[])
    env = {"ARCHIPEL_APP": spec.app, "ARCHIPEL_PROCESS": spec.name}
    if spec.services != [spec.name]:
        env["ARCHIPEL_SERVICES"] = ",".join(spec.services)
    for field, (variable, write) in _FIELDS.items():
        value = getattr(spec, field)
        if value != getattr(default, field):
            env[variable] = write(value)
    return env


def worker_spec(env: Mapping[str, str]) -> WorkerSpec:
    """The :class:`WorkerSpec` the variables in ``env`` describe (see the module's table)."""
    app = env.get("ARCHIPEL_APP", "").strip()
    name = env.get("ARCHIPEL_PROCESS", "").strip()
    if not app:
        raise BadEnvironment("ARCHIPEL_APP is not set: name the app, e.g. 'shop.app:app'")
    if not name:
        raise BadEnvironment("ARCHIPEL_PROCESS is not set: name this process (a group or a service)")
    services = _list(env.get("ARCHIPEL_SERVICES", "")) or [name]
    spec = WorkerSpec(app=app, name=name, services=services)
    for field, (variable, _) in _FIELDS.items():
        raw = env.get(variable)
        if raw is None or raw.strip() == "":
            continue
        parse = _PARSERS[field]
        try:
            setattr(spec, field, parse(raw.strip()))
        except (ValueError, TypeError) as exc:
            raise BadEnvironment(f"{variable}={raw!r}: {exc}") from None
    return spec


def format_peers(peers: Mapping[str, list[str]]) -> str:
    return ";".join(f"{service}={','.join(urls)}" for service, urls in peers.items())


def parse_peers(text: str) -> dict[str, list[str]]:
    """``service=url[,url...]`` entries separated by ``;`` or new lines."""
    peers: dict[str, list[str]] = {}
    for entry in text.replace("\n", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        service, equals, urls = entry.partition("=")
        addresses = _list(urls)
        if not equals or not service.strip() or not addresses:
            raise ValueError(f"{entry!r} is not service=url[,url...]")
        for url in addresses:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} (for {service.strip()}) must start with http:// or https://")
        peers[service.strip()] = [url.rstrip("/") for url in addresses]
    return peers


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1 or 0")


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("expected a number of seconds, 0 or more")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("expected a port number")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("expected a positive integer")
    return value


def _broker(text: str) -> str:
    if not text.startswith(("mqtt://", "mqtts://")):
        raise ValueError("expected mqtt://host:port or mqtts://host:port")
    return text


def _policies(text: str) -> dict[str, object]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def _same(text: str) -> str:
    return text


def _write_flag(value: Any) -> str:
    return "1" if value else "0"


def _field(variable: str, write: Callable[[Any], str] = str) -> tuple[str, Callable[[Any], str]]:
    return variable, write


_FIELDS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "host": _field("ARCHIPEL_HOST"),
    "port": _field("ARCHIPEL_PORT"),
    "broker": _field("ARCHIPEL_BROKER"),
    "peers": _field("ARCHIPEL_PEERS", format_peers),
    "peers_file": _field("ARCHIPEL_PEERS_FILE"),
    "replica": _field("ARCHIPEL_REPLICA"),
    "instance": _field("ARCHIPEL_INSTANCE"),
    "version": _field("ARCHIPEL_VERSION"),
    "deployment": _field("ARCHIPEL_DEPLOYMENT"),
    "drain": _field("ARCHIPEL_DRAIN"),
    "drain_delay": _field("ARCHIPEL_DRAIN_DELAY"),
    "probe_interval": _field("ARCHIPEL_PROBE_INTERVAL"),
    "internal": _field("ARCHIPEL_INTERNAL", _write_flag),
    "authenticate": _field("ARCHIPEL_AUTHENTICATE", _write_flag),
    "open_endpoints": _field("ARCHIPEL_OPEN_ENDPOINTS", ",".join),
    "broker_login": _field("ARCHIPEL_BROKER_LOGIN", _write_flag),
    "reuse_port": _field("ARCHIPEL_REUSE_PORT", _write_flag),
    "durable": _field("ARCHIPEL_DURABLE", _write_flag),
    "policies": _field("ARCHIPEL_POLICIES", lambda value: json.dumps(value, sort_keys=True)),
    "max_body": _field("ARCHIPEL_MAX_BODY"),
    "supervisor_pid": _field("ARCHIPEL_SUPERVISOR_PID"),
    "log_format": _field("ARCHIPEL_LOG_FORMAT"),
    "log_level": _field("ARCHIPEL_LOG_LEVEL"),
    "log_quiet": _field("ARCHIPEL_LOG_QUIET", _write_flag),
}

_PARSERS: dict[str, Callable[[str], Any]] = {
    "host": _same,
    "port": _port,
    "broker": _broker,
    "peers": parse_peers,
    "peers_file": _same,
    "replica": int,
    "instance": _same,
    "version": _same,
    "deployment": _same,
    "drain": _seconds,
    "drain_delay": _seconds,
    "probe_interval": _seconds,
    "internal": _flag,
    "authenticate": _flag,
    "open_endpoints": _list,
    "broker_login": _flag,
    "reuse_port": _flag,
    "durable": _flag,
    "policies": _policies,
    "max_body": _positive,
    "supervisor_pid": int,
    "log_format": parse_format,
    "log_level": parse_level,
    "log_quiet": _flag,
}
