"""Checks a local cluster makes before it starts anything: its ports are free, and no other
deployment runs with the same state file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .children import PortInUse, StartupError, port_is_free
from .plan import ProcessPlan
from .statefile import pid_alive, read_state


def planned_ports(
    plans: Sequence[ProcessPlan], first_port: int, broker_port: int, shared: Sequence[str] = ()
) -> list[tuple[int, str]]:
    """The fixed ports a start will bind, each with what it is for (none when ports are picked);
    the replicas of a ``shared`` process all listen on its first port."""
    planned: list[tuple[int, str]] = []
    if first_port:
        for process in plans:
            for replica in range(1 if process.name in shared else process.replicas):
                label = process.name if replica == 0 else f"{process.name}#{replica}"
                planned.append((first_port + len(planned), label))
    if broker_port:
        planned.append((broker_port, "the broker"))
    return planned


def check_ports(host: str, planned: Sequence[tuple[int, str]]) -> None:
    owners: dict[int, str] = {}
    for port, owner in planned:
        if port in owners:
            raise PortInUse(f"port {port} is planned for both {owners[port]} and {owner}")
        owners[port] = owner
        if not port_is_free(host, port):
            raise PortInUse(
                f"port {port} on {host} is already in use (planned for {owner}); stop what "
                "uses it (another `archipel run`?) or choose other ports (0 picks free ones)"
            )


def check_state_file(state_file: Path | None) -> None:
    # One deployment per state file: a second one would overwrite what `archipel status` reads.
    other = read_state(state_file) if state_file is not None else None
    if other is not None and pid_alive(other.get("supervisor_pid"), other.get("supervisor_started")):
        raise StartupError(
            f"deployment {other.get('deployment')!r} already runs with its state in {state_file} "
            f"(supervisor pid {other.get('supervisor_pid')}); stop it, or use another state directory"
        )
