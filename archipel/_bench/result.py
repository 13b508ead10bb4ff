"""The result file: one JSON file per scenario run, the same schema for every scenario::

    {"scenario": str, "started": iso8601,
     "machine": {"cpus": int, "model": str, "python": str, "platform": str},
     "versions": {package: version}, "parameters": {...},
     "rows": [{"name": str, "p50_ms": float|null, "p99_ms": float|null, "throughput": float|null,
               "cpu_s_per_1000": float|null, "rss_mb": float|null, "startup_s": float|null,
               "errors": int, "failure": str|null, "extra": {...}}],
     "samples": {row_name: [latency_ms, ...]}}

A row whose system could not run has ``failure`` set to the error and nulls elsewhere.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

DEFAULT_PACKAGES = ("archipel", "aiohttp", "uvicorn", "msgspec", "starlette")


class Machine(msgspec.Struct, forbid_unknown_fields=True):
    cpus: int
    model: str
    python: str
    platform: str


class Row(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    name: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None
    cpu_s_per_1000: float | None = None
    rss_mb: float | None = None
    startup_s: float | None = None
    errors: int = 0
    failure: str | None = None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)

    @classmethod
    def failed(cls, name: str, failure: str, **extra: Any) -> Row:
        return cls(name, failure=failure, extra=extra)


class Result(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    scenario: str
    started: str
    machine: Machine
    versions: dict[str, str]
    parameters: dict[str, Any]
    rows: list[Row] = msgspec.field(default_factory=list)
    samples: dict[str, list[float]] = msgspec.field(default_factory=dict)

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def this_machine() -> Machine:
    return Machine(
        cpus=os.cpu_count() or 1,
        model=cpu_model(),
        python=sys.version.split()[0],
        platform=platform.platform(),
    )


def versions(packages: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str]:
    found: dict[str, str] = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def new_result(
    scenario: str, parameters: dict[str, Any], packages: Iterable[str] = DEFAULT_PACKAGES
) -> Result:
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return Result(scenario, started, this_machine(), versions(packages), parameters)


def write(result: Result, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    return path


def read(path: Path) -> Result:
    return msgspec.json.decode(path.read_bytes(), type=Result)
