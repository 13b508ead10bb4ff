"""Changes to a running local cluster, one at a time: rolling updates and scaling.

A rollout replaces a process's replicas one by one: start a new replica (a fresh index, so a
fresh MQTT session beside the old one's), wait until it is ready and in the rotation, then retire
an old one: out of the rotation first, so callers stop choosing it, then SIGTERM, on which it
finishes its calls in progress and its running event handlers before it exits, and its session
ends. At every moment at least as many replicas take calls as before the rollout began.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from .children import Child
from .plan import DeploymentPlan, ProcessPlan

Progress = Callable[[str], None]
MAX_REPLICAS = 32


class ChangeRefused(ValueError):
    """The change names something the deployment does not have, or cannot be made now."""


class Cluster(Protocol):
    """What a change needs of the local supervisor (``_deploy.supervisor.Supervisor``)."""

    plan: DeploymentPlan
    children: list[Child]

    async def add_replica(self, process: ProcessPlan, timeout: float = 60.0) -> Child: ...

    async def retire(self, child: Child, settle: float | None = None) -> None: ...


class Changes:
    def __init__(self, supervisor: Cluster) -> None:
        self._supervisor = supervisor
        self._lock = asyncio.Lock()  # one change at a time: two rollouts would race for replicas

    def _process(self, service: str) -> ProcessPlan:
        plan = self._supervisor.plan
        if service in plan.process_names:
            return plan.process(service)
        try:
            return plan.process_of(service)
        except KeyError:
            names = sorted(set(plan.process_names) | set(plan.app.specs))
            choices = ", ".join(names)
            raise ChangeRefused(f"no service or process {service!r}; choose among {choices}") from None

    def _replicas(self, process: ProcessPlan) -> list[Child]:
        return [c for c in self._supervisor.children if c.name == process.name and not c.leaving]

    async def rollout(self, service: str, progress: Progress) -> dict[str, Any]:
        """Replace every replica of ``service``'s process with one running the code on disk now."""
        process = self._process(service)
        async with self._lock:
            olds = self._replicas(process)
            progress(f"rolling out {process.name}: {len(olds)} replica(s), one at a time")
            started = asyncio.get_running_loop().time()
            for old in olds:
                new = await self._supervisor.add_replica(process)
                progress(f"{new.label} ready at {new.url} (version {new.version}); draining {old.label}")
                await self._supervisor.retire(old)
                progress(f"{old.label} stopped (version {old.version})")
            seconds = asyncio.get_running_loop().time() - started
            progress(f"{process.name} rolled out in {seconds:.1f}s")
            return {"process": process.name, "replaced": len(olds), "seconds": round(seconds, 2)}

    async def scale(self, service: str, replicas: int, progress: Progress) -> dict[str, Any]:
        """Add or remove replicas of ``service``'s process until it has ``replicas``."""
        if not 1 <= replicas <= MAX_REPLICAS:
            raise ChangeRefused(f"replicas must be between 1 and {MAX_REPLICAS}, not {replicas}")
        process = self._process(service)
        async with self._lock:
            current = self._replicas(process)
            progress(f"scaling {process.name} from {len(current)} to {replicas} replica(s)")
            for _ in range(replicas - len(current)):
                child = await self._supervisor.add_replica(process)
                progress(f"{child.label} ready at {child.url}")
            # The newest go first: the oldest replicas have the warmest caches and connections.
            surplus = sorted(current, key=lambda c: c.replica)[replicas:]
            await asyncio.gather(*(self._supervisor.retire(child) for child in surplus))
            for child in surplus:
                progress(f"{child.label} stopped")
            return {"process": process.name, "replicas": len(self._replicas(process))}
