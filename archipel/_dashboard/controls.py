"""Teaching controls on the local cluster (``archipel run --dashboard-controls``): stop, pause and
resume one replica. The supervisor sends the signals, never the browser: stop is SIGTERM, after
which the supervisor restarts the process as after a crash; pause is SIGSTOP (the process holds
its port and its broker session but answers nothing), resume SIGCONT."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._deploy.children import Child
    from .._deploy.supervisor import Supervisor

ACTIONS = ("stop", "pause", "resume")


class ControlRefused(ValueError):
    """A control the dashboard will not send: unknown action, or no such running replica."""


class Controls:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.paused: set[int] = set()  # pids we stopped: continued when the dashboard stops

    def find(self, label: str) -> Child:
        for child in self.supervisor.children:
            if child.label == label and not child.retired:
                if not child.running or child.process is None:
                    raise ControlRefused(f"{label} is not running")
                return child
        names = ", ".join(c.label for c in self.supervisor.children)
        raise ControlRefused(f"no replica {label!r} in this deployment (there are: {names})")

    def apply(self, label: str, action: str) -> dict[str, object]:
        if action not in ACTIONS:
            raise ControlRefused(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
        child = self.find(label)
        assert child.process is not None
        pid = child.process.pid
        if action == "pause":
            child.process.send_signal(signal.SIGSTOP)
            self.paused.add(pid)
        else:
            # A stopped process cannot act on SIGTERM: it is continued either way.
            if action == "stop":
                child.process.send_signal(signal.SIGTERM)
            child.process.send_signal(signal.SIGCONT)
            self.paused.discard(pid)
        return {"process": label, "action": action, "pid": pid}

    def release(self) -> None:
        """Continue every process paused from the dashboard, so the cluster can stop in order."""
        for child in self.supervisor.children:
            if child.process is not None and child.process.returncode is None and child.pid in self.paused:
                child.process.send_signal(signal.SIGCONT)
        self.paused.clear()
