"""Placement (which services share a process, how many replicas each has) and the deployment plan.

Placement is configuration (``archipel.toml`` or ``[tool.archipel]``), never service code.
"""

from __future__ import annotations

import re
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


def plan(
    app: App,
    mode: Mode,
    groups: Mapping[str, Sequence[str]] | None = None,
    replicas: Mapping[str, int] | None = None,
) -> list[ProcessPlan]:
    """One process for the monolith; in microservices one per group, then one per service left."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    names = list(app.specs)
    replicas = dict(replicas or {})
    if mode == "monolith":
        return [ProcessPlan("monolith", tuple(names), replicas.get("monolith", 1))]
    plans: list[ProcessPlan] = []
    placed: dict[str, str] = {}
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
    plans += [ProcessPlan(n, (n,), replicas.get(n, 1)) for n in names if n not in placed]
    for process in plans:
        if process.replicas < 1:
            raise DefinitionError(f"process {process.name!r}: replicas must be at least 1")
    unknown = set(replicas) - {p.name for p in plans}
    if unknown:
        raise DefinitionError(f"replicas set for unknown process(es): {', '.join(sorted(unknown))}")
    return plans


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
        names = {self.process_of(caller).name for s in process.services for caller in self.app.callers_of(s)}
        return sorted(names - {process.name})

    def called_by(self, process: ProcessPlan) -> set[str]:
        """The services of other processes that ``process``'s services call: the peers it needs
        to know, and probe, and no others."""
        return called_services(self.app, process.services)

    def serves_pages(self, process: ProcessPlan) -> bool:
        """Whether ``process`` hosts a service with its own web routes (an edge of the system)."""
        return any(self.app.specs[s].cls.asgi_app is not Service.asgi_app for s in process.services)

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
) -> DeploymentPlan:
    """The plan of ``app`` deployed as ``mode`` (see :func:`plan` for groups and replicas)."""
    name = deployment or app.name
    if not _NAME.match(name):
        raise DefinitionError(f"deployment {name!r} must be lower case letters, digits, '-' or '_'")
    return DeploymentPlan(
        app_ref=app_ref,
        app=app,
        deployment=name,
        mode=mode,
        processes=tuple(plan(app, mode, groups, replicas)),
        broker=broker,
        port=port,
        policies=dict(policies or {}),
        authenticate=authenticate,
        open_endpoints=tuple(open_endpoints),
        tls=tls,
        drain=drain,
        version=version,
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
