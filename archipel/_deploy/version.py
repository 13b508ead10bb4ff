"""Which code a replica runs: a short fingerprint of the app's source files, taken at launch.

During a rollout, old and new replicas run side by side; ``archipel status`` tells them apart by
this fingerprint (or by ``ARCHIPEL_VERSION`` when the deployer sets one, e.g. an image tag).
"""

from __future__ import annotations

import hashlib
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
