"""Placement: which services share a process, and how many replicas each process has.

Placement is configuration (``archipel.toml`` or ``[tool.archipel]``), never service code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .._app import App
from .._errors import DefinitionError

Mode = Literal["monolith", "microservices"]
MODES: tuple[Mode, ...] = ("monolith", "microservices")


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
