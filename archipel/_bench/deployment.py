"""One placement of an app, started with ``archipel run`` on free ports and stopped again.

The supervisor runs in its own process (as in production, it is not the load generator);
``archipel run`` writes its state file once every process is ready, which gives the start-up
time, the processes' pids and the edge's URL (the process serving the app's pages).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._app import App
from .._model import Service

STATE_FILE = "state.json"  # what `archipel run --state-dir` writes


@dataclass(frozen=True)
class Placement:
    """``groups``: services sharing a process; the others get one each (microservices), or
    everything in one process (``monolith``)."""

    name: str
    mode: str = "microservices"
    groups: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def config(self) -> str:
        """The archipel.toml that places the app so (one replica of everything)."""
        lines = [f'mode = "{self.mode}"', "", "[groups]"]
        lines += [f"{name} = {json.dumps(list(members))}" for name, members in self.groups.items()]
        return "\n".join(lines) + "\n"


MONOLITH = Placement("monolith", "monolith")
MICROSERVICES = Placement("microservices")


class PlacementError(ValueError):
    pass


def parse_placement(text: str, app: App) -> Placement:
    """``NAME=a+b,c+d``: services a and b share a process, c and d another, the rest alone."""
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise PlacementError(f"--placement {text!r}: expected NAME=service+service,service+service")
    groups: dict[str, list[str]] = {}
    for group in spec.split(","):
        members = [m.strip() for m in group.split("+") if m.strip()]
        unknown = [m for m in members if m not in app.specs]
        if unknown:
            raise PlacementError(
                f"--placement {name}: {', '.join(unknown)} is not a service of {app.name!r} "
                f"(services: {', '.join(app.specs)})"
            )
        if members:
            groups["-".join(members)[:40].replace("_", "-")] = members
    return Placement(name, "microservices", groups)


def edge_services(app: App) -> list[str]:
    """The services with their own web routes: where visitors' requests go."""
    return [name for name, spec in app.specs.items() if spec.cls.asgi_app is not Service.asgi_app]


class StartFailed(RuntimeError):
    pass


class Deployment:
    """``archipel run APP`` in ``placement``; :meth:`start` returns once every process is ready."""

    def __init__(self, app_ref: str, app: App, placement: Placement, workdir: Path) -> None:
        self.app_ref, self.app, self.placement = app_ref, app, placement
        self.dir = workdir / placement.name
        self.process: asyncio.subprocess.Process | None = None
        self.state: dict[str, Any] = {}
        self.startup_s: float | None = None
        self.log = self.dir / "run.log"

    async def start(self, timeout: float = 60.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "archipel.toml"
        config.write_text(self.placement.config())
        state_dir, data_dir = self.dir / "state", self.dir / "data"
        command = [
            sys.executable, "-m", "archipel", "run", self.app_ref,
            "--mode", self.placement.mode, "--config", str(config), "--port", "0",
            "--state-dir", str(state_dir), "--data-dir", str(data_dir), "--quiet",
            "--no-dashboard",  # its observer would receive every event of the measured run
        ]  # fmt: skip
        started = time.perf_counter()
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *command, stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True
            )
        state_file = state_dir / STATE_FILE
        deadline = started + timeout
        while True:
            if self.process.returncode is not None:
                raise StartFailed(f"archipel run exited with {self.process.returncode}: {self._tail()}")
            state = _read_json(state_file)
            if state and state.get("processes") and all(p.get("ready") for p in state["processes"]):
                self.startup_s = time.perf_counter() - started
                self.state = state
                return
            if time.perf_counter() > deadline:
                await self.stop()
                raise StartFailed(f"not ready after {timeout:.0f} s: {self._tail()}")
            await asyncio.sleep(0.05)

    def _tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " / ".join(text[-lines:])

    @property
    def pids(self) -> dict[str, int]:
        """The deployment's processes (each replica, and the broker when it is ours) by label."""
        found = {
            f"{p['name']}-{p['replica']}" if p.get("replica") else str(p["name"]): int(p["pid"])
            for p in self.state.get("processes", [])
            if p.get("pid")
        }
        if self.state.get("broker_pid"):
            found["broker"] = int(self.state["broker_pid"])
        return found

    @property
    def supervisor_pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def edge_url(self) -> str:
        edges = set(edge_services(self.app))
        if not edges:
            raise StartFailed(f"app {self.app.name!r} has no service with web routes to load")
        for process in self.state.get("processes", []):
            if edges & set(process.get("services", [])):
                return str(process["url"])
        raise StartFailed(f"no process serves {', '.join(sorted(edges))}")

    async def stop(self, timeout: float = 30.0) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
