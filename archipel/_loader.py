"""Find an App from a reference: ``module:attribute``, ``path/to/file.py[:attribute]``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from ._app import App


class AppNotFound(LookupError):
    pass


def load_app(reference: str) -> App:
    module_part, _, attribute = reference.partition(":")
    if module_part.endswith(".py") or "/" in module_part:
        module_name = _import_path(Path(module_part))
    else:
        module_name = module_part
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppNotFound(f"cannot import {module_name!r} (from {reference!r}): {exc}") from exc
    if attribute:
        app = getattr(module, attribute, None)
        if not isinstance(app, App):
            raise AppNotFound(f"{reference!r}: {module_name}.{attribute} is not an archipel App")
        return app
    apps = [value for value in vars(module).values() if isinstance(value, App)]
    if len(apps) != 1:
        raise AppNotFound(f"{reference!r}: expected one App in {module_name}, found {len(apps)}; add ':name'")
    return apps[0]


def _import_path(path: Path) -> str:
    """Put the file's package root on sys.path and return its dotted module name, so relative
    imports inside the package keep working."""
    path = path.resolve()
    if not path.exists():
        raise AppNotFound(f"no such file: {path}")
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").exists():
        parts.insert(0, folder.name)
        folder = folder.parent
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return ".".join(parts)


def reference_of(app: App) -> str:
    """A reference that imports ``app`` again in another process."""
    module = sys.modules.get(app.module)
    if module is not None:
        for name, value in vars(module).items():
            if value is app:
                return f"{app.module}:{name}"
    raise AppNotFound(
        f"app {app.name!r} is not a module-level variable of an importable module ({app.module}); "
        "microservices need to import it again in each process"
    )
