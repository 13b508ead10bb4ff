"""``archipel deploy docker``: one image for every process of an app.

The image holds the app's package, Archipel and their dependencies, pinned by a lock
(``requirements.txt`` beside the Dockerfile). The lock is an input: it is written from the
environment the command runs in when it is missing or with ``--relock``, and kept otherwise, so
the Dockerfile is the same on every run and changes only when the lock or the app does. A
container runs ``python -m archipel.worker``; which process it is comes from ``ARCHIPEL_PROCESS``.

Hashes (``pip install --require-hashes``) would need every wheel's digest for the image's
platform, known only to the package index: the lock pins exact versions instead, installed with
``--no-deps --only-binary=:all:`` (nothing beyond the lock, nothing built), then ``pip check``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import archipel

from ..._errors import DefinitionError
from ..plan import DeploymentPlan
from .common import DATA_DIR, UID, Output, app_source, header, readiness_check

DOCKERFILE = "Dockerfile"
DOCKERIGNORE = "Dockerfile.dockerignore"  # what BuildKit reads for a Dockerfile of that name
LOCK = "requirements.txt"
BASE_IMAGE = "python:3.11.11-slim-bookworm"
_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+$")


@dataclass(frozen=True)
class ImageSource:
    """What the image copies, relative to the build context (the folder that holds it all)."""

    context: Path
    copies: tuple[tuple[str, str], ...]  # (path in the context, path in the image)
    local_archipel: bool  # Archipel comes from this source checkout, not from the lock


def image_source(plan: DeploymentPlan) -> ImageSource:
    """The app's top-level package (or module), and Archipel's package when it runs from a source
    checkout (a ``pyproject.toml`` naming it beside the package, as in this repository)."""
    root, top = app_source(plan.app)
    package = Path(archipel.__file__).resolve().parent
    pyproject = package.parent / "pyproject.toml"
    local = (
        pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"archipel"', pyproject.read_text()) is not None
    )
    sources = [top, package] if local else [top]
    context = Path(os.path.commonpath([root, package.parent])) if local else root
    if context == Path(context.anchor):
        raise DefinitionError(
            f"the app ({top}) and Archipel's source ({package}) share no folder but the root: "
            "put the app inside the checkout, or install Archipel from a package index"
        )
    copies = tuple(sorted((path.relative_to(context).as_posix(), f"/app/{path.name}") for path in sources))
    return ImageSource(context, copies, local)


def pins(requirements: Sequence[str], *, skip: Sequence[str] = ()) -> list[str]:
    """``name==version`` of every distribution ``requirements`` need in this environment (their
    closure, markers evaluated here), sorted; ``skip`` names distributions left out."""
    from packaging.requirements import Requirement  # development tooling: only to relock
    from packaging.utils import canonicalize_name

    found: dict[str, str] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(text) for text in requirements]
    while todo:
        wanted = todo.pop()
        name = canonicalize_name(wanted.name)
        if (name, frozenset(wanted.extras)) in done:
            continue
        done.add((name, frozenset(wanted.extras)))
        try:
            distribution = importlib.metadata.distribution(wanted.name)
        except importlib.metadata.PackageNotFoundError:
            raise DefinitionError(f"{wanted.name} is not installed here: install it, then --relock") from None
        if not wanted.specifier.contains(distribution.version, prereleases=True):
            raise DefinitionError(f"{wanted} is wanted but {distribution.version} is installed")
        found[name] = distribution.version
        for text in distribution.requires or []:
            needed = Requirement(text)
            extras = wanted.extras or {""}
            if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in extras):
                todo.append(needed)
    skipped = {canonicalize_name(name) for name in skip}
    return [f"{name}=={version}" for name, version in sorted(found.items()) if name not in skipped]


def lock_text(requirements: Sequence[str], locked: Sequence[str]) -> str:
    wanted = " ".join(f"--require '{text}'" for text in requirements)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return (
        f"# The image's Python dependencies, pinned by `archipel deploy docker --relock {wanted}`\n"
        f"# from the environment it ran in (Python {python}, {sys.platform}). `archipel deploy docker`\n"
        "# keeps this file and writes its pins into the Dockerfile; --relock writes it again.\n"
        + "".join(pin + "\n" for pin in locked)
    )


def parse_lock(text: str, where: str) -> list[str]:
    """The pins of a lock; raises DefinitionError naming the first line that is not ``name==version``."""
    locked = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not _PIN.match(line):
            raise DefinitionError(f"{where}:{number}: {line!r} is not name==version")
        locked.append(line)
    if not locked:
        raise DefinitionError(f"{where} pins nothing: run `archipel deploy docker --relock`")
    return locked


def docker_files(
    plan: DeploymentPlan,
    *,
    lock: str,
    image: str,
    command: str,
    source: str,
    settings_dir: Path,
    default_out: Path,
    base_image: str = BASE_IMAGE,
) -> list[Output]:
    """The Dockerfile, its .dockerignore and the lock, for ``plan``'s app."""
    found = image_source(plan)
    locked = parse_lock(lock, LOCK)
    context = Path(os.path.relpath(found.context, settings_dir)).as_posix()
    dockerfile = Path(os.path.relpath(default_out / DOCKERFILE, found.context)).as_posix()
    sources = " and ".join(path for path, _ in found.copies)
    install = " \\\n".join(f"        {pin}" for pin in locked)
    copies = "".join(f"COPY {path} {target}\n" for path, target in found.copies)
    healthcheck = json.dumps(["python", "-c", readiness_check("/healthz")])
    entrypoint = json.dumps(
        ["/bin/sh", "-c", 'export ARCHIPEL_INSTANCE="${ARCHIPEL_INSTANCE:-$HOSTNAME}"; exec "$@"', "worker"]
    )
    text = (
        "# syntax=docker/dockerfile:1\n"
        + header(command, source)
        + f"# One image for every process of {plan.app.name}: ARCHIPEL_PROCESS and the other ARCHIPEL_*\n"
        "# variables (compose.yaml, the Kubernetes manifests) choose what a container runs.\n"
        f"# Its build context is the folder holding {sources} ({context} from\n"
        f"# the folder of {source}); from there:\n"
        f"#   docker build -f {dockerfile} -t {image} .\n"
        f"# Docker reads {DOCKERIGNORE} beside this file: nothing else enters the context.\n"
        f"FROM {base_image}\n"
        "\n"
        "ENV PYTHONDONTWRITEBYTECODE=1 \\\n"
        "    PYTHONUNBUFFERED=1 \\\n"
        "    PIP_DISABLE_PIP_VERSION_CHECK=1 \\\n"
        "    PYTHONPATH=/app \\\n"
        f"    ARCHIPEL_DATA_DIR={DATA_DIR}\n"
        "\n"
        f"# Exactly the pins of {LOCK} (beside this file): nothing more, nothing built.\n"
        "RUN pip install --no-cache-dir --no-deps --only-binary=:all: \\\n"
        f"{install} \\\n"
        "    && pip check\n"
        "\n"
        f"RUN groupadd --system --gid {UID} archipel \\\n"
        f"    && useradd --system --uid {UID} --gid {UID} --no-create-home --home-dir /nonexistent \\\n"
        "        --shell /usr/sbin/nologin archipel \\\n"
        f"    && install -d -o {UID} -g {UID} -m 0700 {DATA_DIR}\n"
        "\n"
        f"{copies}"
        "RUN python -m compileall -q /app\n"
        "\n"
        f"USER {UID}:{UID}\n"
        f"WORKDIR {DATA_DIR}\n"
        "EXPOSE 8000\n"
        "HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \\\n"
        f"    CMD {healthcheck}\n"
        "# A replica's name (its MQTT client id, its outbox leases): ARCHIPEL_INSTANCE when set (the\n"
        "# pod's name on Kubernetes), else the container's host name.\n"
        f"ENTRYPOINT {entrypoint}\n"
        'CMD ["python", "-m", "archipel.worker"]\n'
    )
    ignore = (
        header(command, source)
        + "# The build context holds only what the image copies: never a virtual environment, a local\n"
        "# deployment's data (.archipel/ keeps its secret), generated secrets, tests or .git.\n"
        "*\n" + "".join(f"!{path}\n" for path, _ in found.copies) + "**/__pycache__\n"
        "**/*.pyc\n"
    )
    return [Output(DOCKERFILE, text), Output(DOCKERIGNORE, ignore), Output(LOCK, lock)]
