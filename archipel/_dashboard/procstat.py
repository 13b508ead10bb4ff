"""CPU and memory of a local process, from /proc (proc(5)); nothing where there is no /proc."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time ``pid`` has used so far."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15


def rss_bytes(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class CpuMeter:
    """CPU % of each pid between two readings (100 % is one core busy)."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[float, float]] = {}

    def percent(self, pid: int, now: float) -> float | None:
        used = cpu_seconds(pid)
        if used is None:
            self._last.pop(pid, None)
            return None
        previous = self._last.get(pid)
        self._last[pid] = (now, used)
        if previous is None or now <= previous[0]:
            return None
        return round(100 * (used - previous[1]) / (now - previous[0]), 1)
