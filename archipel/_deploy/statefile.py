"""The state file of a running deployment, written by its supervisor and read by ``archipel status``.

The supervisor rewrites it whenever something changes (a process restarted, the broker's health),
atomically, so a reader never sees half a file. A supervisor killed with SIGKILL cannot remove it:
readers check that the recorded supervisor is still that very process (pid *and* start time, as
a pid can be reused), and a zombie counts as gone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace ``path`` with ``state`` as JSON: write a temporary file, then rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(state, indent=2))
    os.replace(temporary, path)


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stat(pid: int) -> list[str] | None:
    """Fields 3 and on of /proc/PID/stat (proc(5)); None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # the command name in parentheses may hold spaces


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, from /proc); None if unknown or not running."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):  # a zombie or dead process only waits to be reaped
        return None
    return int(fields[19])  # field 22 of proc(5)


def is_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP, Ctrl-Z): alive, but doing nothing until it continues."""
    fields = _stat(pid)
    return fields is not None and fields[0] in ("T", "t")


def pid_alive(pid: object, started: object = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, when ``started`` is given, is the same process."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if Path("/proc/self/stat").exists():
        start = process_start(pid)
        return start is not None and (not isinstance(started, int) or start == started)
    try:  # no /proc: signal 0 only says the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
