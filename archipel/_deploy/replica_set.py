"""Which replicas a local cluster starts: their indices, which name their MQTT sessions, and
their ports.

Indices carry over from the previous run (the supervisor keeps them in ``replicas.json``): after
a rollout the replicas are not 0..n-1, and a durable session nobody resumes would keep the
events queued for it. Previous replicas beyond the plan's count are returned, to end their
sessions."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from .plan import ProcessPlan


def replica_set(
    plans: Sequence[ProcessPlan],
    previous: Mapping[str, Any],
    *,
    first_port: int,
    pick_port: Callable[[], int],
    shared: Collection[str] = (),
) -> tuple[dict[str, dict[int, int]], list[tuple[str, int]]]:
    """Per process, ``{index: port}``; and the ``(process, index)`` of surplus previous replicas.
    Ports are consecutive from ``first_port``, or picked when it is 0; the replicas of a
    ``shared`` process all take its first replica's port."""
    chosen: dict[str, dict[int, int]] = {}
    surplus: list[tuple[str, int]] = []
    next_port = first_port
    for process in plans:
        listed = previous.get(process.name, [])
        saved = (
            sorted({i for i in listed if isinstance(i, int) and i >= 0}) if isinstance(listed, list) else []
        )
        kept, fresh = saved[: process.replicas], max(saved, default=-1) + 1
        kept += range(fresh, fresh + process.replicas - len(kept))
        surplus += [(process.name, i) for i in saved[process.replicas :]]
        ports: dict[int, int] = {}
        for n, index in enumerate(kept):
            if n and process.name in shared:
                ports[index] = ports[kept[0]]
            elif first_port:
                ports[index], next_port = next_port, next_port + 1
            else:
                ports[index] = pick_port()
        chosen[process.name] = ports
    return chosen, surplus
