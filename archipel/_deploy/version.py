"""Which code a replica runs: a short fingerprint of the app's source files, taken at launch.

During a rollout, old and new replicas run side by side; ``archipel status`` tells them apart by
this fingerprint (or by ``ARCHIPEL_VERSION`` when the deployer sets one, e.g. an image tag).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from .._app import App


def source_files(app: App) -> list[Path]:
    """The Python files of the folders that hold the app's service classes."""
    folders: set[Path] = set()
    for spec in app.specs.values():
        module = sys.modules.get(spec.cls.__module__)
        filename = getattr(module, "__file__", None)
        if filename:
            folders.add(Path(filename).resolve().parent)
    return sorted(path for folder in folders for path in folder.glob("*.py"))


def code_version(app: App) -> str:
    """12 hex digits that change when any of :func:`source_files` changes on disk."""
    digest = hashlib.sha256()
    for path in source_files(app):
        digest.update(path.name.encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            continue  # removed since the app was loaded: the others still tell versions apart
    return digest.hexdigest()[:12]


SKIPPED = {"node_modules", "__pycache__", "target", "build", "dist"}  # dependencies and builds
MAX_FILES = 5000


def foreign_version(command: list[str], cwd: str | None) -> str:
    """The fingerprint of a process that is not the Python worker (an external service): the
    files of the folder it runs in, dependencies, builds and hidden folders left out; without a
    folder, the files its command names."""
    digest = hashlib.sha256()
    if cwd is None:
        files = sorted(Path(arg).resolve() for arg in command[1:] if Path(arg).is_file())
        base = Path("/")
    else:
        base = Path(cwd)
        files = []
        for folder, folders, names in os.walk(base):
            folders[:] = sorted(f for f in folders if f not in SKIPPED and not f.startswith("."))
            files += [Path(folder, name) for name in names if not name.startswith(".")]
            if len(files) > MAX_FILES:
                break
        files.sort()
    for path in files[:MAX_FILES]:
        digest.update(str(path.relative_to(base)).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            continue
    return digest.hexdigest()[:12]


SHAPE_VAR = "ARCHIPEL_SHAPE"  # the shape the local supervisor's credentials and broker ACL were made for

Shape = dict[str, dict[str, list[str]]]


def app_shape(app: App) -> Shape:
    """What the deployment's credentials and broker rules depend on: which services exist, whom
    each calls, which events each emits and handles. A rollout cannot change it."""
    return {
        name: {
            "calls": sorted({s.__service_name__ for s in spec.dependencies.values()} | set(spec.optional)),
            "emits": sorted(event.__topic__ for event in spec.emits),
            "handles": sorted({handler.topic for handler in spec.handlers}),
        }
        for name, spec in sorted(app.specs.items())
    }


def shape_changes(expected: Shape, actual: Shape) -> list[str]:
    """What ``actual`` changes from ``expected``, one line each ("checkout now calls fraud")."""
    changes = [f"service {name} is new" for name in sorted(set(actual) - set(expected))]
    changes += [f"service {name} is gone" for name in sorted(set(expected) - set(actual))]
    for name in sorted(set(actual) & set(expected)):
        for verb in ("calls", "emits", "handles"):
            added = sorted(set(actual[name][verb]) - set(expected[name][verb]))
            removed = sorted(set(expected[name][verb]) - set(actual[name][verb]))
            changes += [f"{name} now {verb} {', '.join(added)}"] if added else []
            changes += [f"{name} no longer {verb} {', '.join(removed)}"] if removed else []
    return changes
