"""CPU seconds and peak memory of a deployment's processes, read from ``/proc`` (Linux)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used (its own, not its children's); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15


def peak_rss_mb(pid: int) -> float | None:
    """The peak resident set size of ``pid`` (VmHWM), in MiB; None if gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def cpu_of(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds of each named process still alive."""
    return {name: cpu for name, pid in pids.items() if (cpu := cpu_seconds(pid)) is not None}


def cpu_used(before: Mapping[str, float], after: Mapping[str, float]) -> float:
    """CPU seconds all processes used between two :func:`cpu_of` readings."""
    return sum(after[name] - before[name] for name in after if name in before)


def rss_of(pids: Mapping[str, int]) -> dict[str, float]:
    return {name: round(rss, 1) for name, pid in pids.items() if (rss := peak_rss_mb(pid)) is not None}


def total(values: Iterable[float]) -> float:
    return round(sum(values), 1)
