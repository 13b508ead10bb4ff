"""Placement (which services share a process, how many replicas each has) and the deployment plan.

Placement is configuration (``archipel.toml`` or ``[tool.archipel]``), never service code.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .._app import App
from .._errors import DefinitionError
from .._model import Service
from .environment import WorkerSpec
from .settings import Settings

Mode = Literal["monolith", "microservices"]
MODES: tuple[Mode, ...] = ("monolith", "microservices")
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class ProcessPlan:
    name: str
    services: tuple[str, ...]
    replicas: int = 1
    # A service implemented outside this app (another language, say), started with its own
    # command locally and its own image in containers, under the same process contract.
    command: tuple[str, ...] = ()
    cwd: str | None = None
    image: str | None = None

    @property
    def foreign(self) -> bool:
        """Whether the process runs something else than Archipel's Python worker."""
        return bool(self.command or self.image)


@dataclass(frozen=True)
class External:
    """Where a service implemented outside this app runs (``[external.NAME]`` in the settings).

    ``url``: reached at these addresses, started by someone else. Otherwise it is a process of
    the plan: ``command`` is what ``archipel run`` starts (in ``cwd``), ``image`` what containers
    run. Either way it speaks the app's contracts: its methods over HTTP, its events on the broker."""

    url: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    cwd: str | None = None
    image: str | None = None


def plan(
    app: App,
    mode: Mode,
    groups: Mapping[str, Sequence[str]] | None = None,
    replicas: Mapping[str, int] | None = None,
    external: Mapping[str, External] | None = None,
) -> list[ProcessPlan]:
    """One process for the monolith; in microservices one per group, then one per service left.
    An external service reached by URL has no process; one with a command or an image has its own."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    names = list(app.specs)
    replicas = dict(replicas or {})
    external = dict(external or {})
    check_external(app, mode, external, groups or {})
    if mode == "monolith":
        return [ProcessPlan("monolith", tuple(names), replicas.get("monolith", 1))]
    plans: list[ProcessPlan] = []
    placed: dict[str, str] = {name: "external" for name, where in external.items() if where.url}
    for group, members in (groups or {}).items():
        for member in members:
            if member not in app.specs:
                raise DefinitionError(
                    f"group {group!r} names {member!r}, which is not a service of {app.name!r}"
                )
            if member in placed:
                raise DefinitionError(
                    f"service {member!r} is in two groups: {placed[member]!r} and {group!r}"
                )
            placed[member] = group
        plans.append(ProcessPlan(group, tuple(members), replicas.get(group, 1)))
    for name in names:
        if name not in placed:
            where = external.get(name, External())
            plans.append(
                ProcessPlan(name, (name,), replicas.get(name, 1), where.command, where.cwd, where.image)
            )
    for process in plans:
        if process.replicas < 1:
            raise DefinitionError(f"process {process.name!r}: replicas must be at least 1")
    unknown = set(replicas) - {p.name for p in plans}
    if unknown:
        raise DefinitionError(f"replicas set for unknown process(es): {', '.join(sorted(unknown))}")
    return plans


def check_external(
    app: App, mode: Mode, external: Mapping[str, External], groups: Mapping[str, Sequence[str]]
) -> None:
    """Refuse an ``[external]`` table that cannot be placed, naming the service and the fix."""
    grouped = {member: group for group, members in groups.items() for member in members}
    for name, where in external.items():
        if name not in app.specs:
            raise DefinitionError(
                f"[external.{name}]: {name!r} is not a service of {app.name!r}; "
                f"its services: {', '.join(app.specs)}"
            )
        if mode == "monolith":
            raise DefinitionError(
                f'[external.{name}]: an external service needs mode = "microservices": '
                "its calls and events cross processes"
            )
        if name in grouped:
            raise DefinitionError(
                f"[external.{name}]: {name!r} is also in group {grouped[name]!r}; an external "
                "service runs in a process of its own"
            )
        if where.url and (where.command or where.image):
            raise DefinitionError(
                f"[external.{name}]: give either url (started elsewhere) or command/image (started "
                "by this deployment), not both"
            )
        if not (where.url or where.command or where.image):
            raise DefinitionError(f"[external.{name}]: say where it runs: url, command or image")
        for url in where.url:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise DefinitionError(f"[external.{name}]: url {url!r} must be http:// or https://host:port")


def reached_by_url(external: Mapping[str, External]) -> dict[str, tuple[str, ...]]:
    """The external services that run elsewhere: service -> their base URLs."""
    return {name: where.url for name, where in external.items() if where.url}


DEFAULT_PORT = 8000  # what each process listens on in a container; the first port locally


@dataclass(frozen=True)
class DeploymentPlan:
    """Everything a deployer needs, read from the app and its settings once: the local supervisor
    runs it, and the Compose and Kubernetes generators write it out, so they cannot disagree.

    Credentials appear by reference only (the names of the variables or files that hold them)."""

    app_ref: str  # what each process loads: module:attribute or path/to/file.py[:attribute]
    app: App
    deployment: str  # MQTT topic root, client-id prefix, and the generated resources' name prefix
    mode: Mode
    processes: tuple[ProcessPlan, ...]
    broker: str = "embedded"  # "embedded", "rumqttd" or an mqtt:// or mqtts:// URL
    port: int = DEFAULT_PORT
    policies: Mapping[str, Any] = field(default_factory=dict)
    authenticate: bool = True
    open_endpoints: tuple[str, ...] = ()
    tls: bool = False  # processes serve HTTPS (their certificate by reference: ARCHIPEL_TLS_*)
    drain: float = 5.0  # seconds for calls in progress at exit, then as much for event handlers
    version: str = ""
    # External services reached by URL (no process of the plan): service -> base URLs.
    remote: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def process(self, name: str) -> ProcessPlan:
        for process in self.processes:
            if process.name == name:
                return process
        raise KeyError(f"no process {name!r} in the plan; processes: {', '.join(self.process_names)}")

    @property
    def process_names(self) -> list[str]:
        return [process.name for process in self.processes]

    def process_of(self, service: str) -> ProcessPlan:
        for process in self.processes:
            if service in process.services:
                return process
        raise KeyError(f"{service!r} is not a service of {self.app.name!r}")

    def callers(self, process: ProcessPlan) -> list[str]:
        """The other processes that call ``process``'s services: the only ones that need to
        reach it (Kubernetes NetworkPolicies are generated from this)."""
        placed = {s for p in self.processes for s in p.services}
        names = {
            self.process_of(caller).name
            for s in process.services
            for caller in self.app.callers_of(s)
            if caller in placed  # an external service reached by URL has no process here
        }
        return sorted(names - {process.name})

    def called_by(self, process: ProcessPlan) -> set[str]:
        """The services of other processes that ``process``'s services call: the peers it needs
        to know, and probe, and no others."""
        return called_services(self.app, process.services)

    def serves_pages(self, process: ProcessPlan) -> bool:
        """Whether ``process`` hosts a service with its own web routes (an edge of the system)."""
        return any(self.app.specs[s].cls.asgi_app is not Service.asgi_app for s in process.services)

    def remote_peers(self) -> dict[str, list[str]]:
        """The external services reached by URL as peers: service -> base URLs."""
        return {name: list(urls) for name, urls in self.remote.items()}

    def login_owners(self) -> dict[str, list[str]]:
        """Who logs in to the broker (process -> its services): every process, and each
        external service reached by URL under its own name."""
        owners = {p.name: list(p.services) for p in self.processes}
        owners.update({service: [service] for service in self.remote})
        return owners

    def handles_events(self, process: ProcessPlan) -> bool:
        return any(self.app.specs[s].handlers for s in process.services)

    @property
    def uses_broker(self) -> bool:
        return self.mode == "microservices"

    def worker(
        self,
        process: ProcessPlan,
        *,
        peers: Mapping[str, list[str]],
        broker_url: str | None,
        app_ref: str | None = None,
        **where: Any,
    ) -> WorkerSpec:
        """What one replica of ``process`` runs with; ``peers`` (service -> base URLs) and
        ``broker_url`` say where the others are, ``where`` sets the deployer's own fields
        (host, port, replica, instance, peers_file, drain_delay, ...)."""
        return WorkerSpec(
            app=app_ref or self.app_ref,
            name=process.name,
            services=list(process.services),
            broker=broker_url if self.uses_broker else None,
            peers={s: list(u) for s, u in peers.items() if s in self.called_by(process)},
            policies=dict(self.policies),
            deployment=self.deployment,
            drain=self.drain,
            internal=self.mode == "microservices",
            authenticate=self.authenticate,
            open_endpoints=list(self.open_endpoints),
            version=self.version,
            **{"port": self.port, **where},
        )

    @property
    def grace(self) -> float:
        """Seconds a process may take to stop: its calls, then its handlers, with a margin."""
        return self.drain * 3


def deployment_plan(
    app_ref: str,
    app: App,
    *,
    mode: Mode = "microservices",
    groups: Mapping[str, Sequence[str]] | None = None,
    replicas: Mapping[str, int] | None = None,
    deployment: str | None = None,
    broker: str = "embedded",
    port: int = DEFAULT_PORT,
    policies: Mapping[str, Any] | None = None,
    authenticate: bool = True,
    open_endpoints: Sequence[str] = (),
    tls: bool = False,
    drain: float = 5.0,
    version: str = "",
    external: Mapping[str, External] | None = None,
) -> DeploymentPlan:
    """The plan of ``app`` deployed as ``mode`` (see :func:`plan` for groups, replicas and
    external services)."""
    name = deployment or app.name
    if not _NAME.match(name):
        raise DefinitionError(f"deployment {name!r} must be lower case letters, digits, '-' or '_'")
    return DeploymentPlan(
        app_ref=app_ref,
        app=app,
        deployment=name,
        mode=mode,
        processes=tuple(plan(app, mode, groups, replicas, external)),
        broker=broker,
        port=port,
        policies=dict(policies or {}),
        authenticate=authenticate,
        open_endpoints=tuple(open_endpoints),
        tls=tls,
        drain=drain,
        version=version,
        remote=reached_by_url(external or {}),
    )


def settings_plan(
    app_ref: str, app: App, settings: Settings, *, mode: Mode | None = None, **overrides: Any
) -> DeploymentPlan:
    """The plan that ``archipel.toml`` (``settings``) describes; keyword arguments override it."""
    chosen = mode or settings.mode
    if chosen not in MODES:
        raise DefinitionError(f"mode must be one of {', '.join(MODES)}, not {chosen!r}")
    arguments: dict[str, Any] = {
        "groups": settings.groups,
        "replicas": settings.replicas,
        "deployment": settings.deployment,
        "broker": settings.broker,
        "port": settings.port,
        "policies": settings.policies,
        "authenticate": settings.authenticate,
        "open_endpoints": settings.open_endpoints,
        "tls": bool(settings.tls.cert),
        "external": external_of(settings),
    }
    arguments.update({key: value for key, value in overrides.items() if value is not None})
    return deployment_plan(app_ref, app, mode=chosen, **arguments)


def called_services(app: App, services: Sequence[str]) -> set[str]:
    """The services that ``services`` call (their dependencies, optional ones included), but
    themselves."""
    called = {
        dependency.__service_name__ for s in services for dependency in app.specs[s].dependencies.values()
    }
    return called - set(services)


def external_of(settings: Settings) -> dict[str, External]:
    """The ``[external]`` table of the settings as placements."""
    found: dict[str, External] = {}
    for name, entry in settings.external.items():
        urls = [entry.url] if isinstance(entry.url, str) else list(entry.url or [])
        found[name] = External(
            url=tuple(u.rstrip("/") for u in urls),
            command=tuple(entry.command or ()),
            cwd=entry.cwd,
            image=entry.image,
        )
    return found
