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
