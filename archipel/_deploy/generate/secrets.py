"""``archipel deploy secrets``: the files the generated deployments take their credentials from.

From the deployment's secret, into one folder (directories 0700, files 0600), one subfolder per
Kubernetes Secret, named as the manifests reference it::

    DEPLOYMENT-PROCESS-keyring/keyring.json   a process's keyring: its edges' keys, its broker login
    DEPLOYMENT-broker-auth/passwords          the broker's logins, hashed (microservices only)
    DEPLOYMENT-broker-auth/acl                what each login may publish and read
    DEPLOYMENT-scrape-token/token             the bearer token Prometheus reads /metrics with

So ``kubectl create secret generic "$(basename DIR)" --from-file=DIR`` for each subfolder, or
Compose's ``secrets:`` (``compose.yaml`` names the same files). The secret itself is written
nowhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import msgspec

from ..._security.keyring import keyring_for, scrape_token
from ..acl import _write_private, broker_auth_files
from ..plan import DeploymentPlan
from .common import KEYRING, broker_secret, keyring_secret
from .prometheus import SCRAPE_KEY, scrape_secret


def write_secrets(plan: DeploymentPlan, secrets: Sequence[bytes], out: Path) -> list[Path]:
    """Write the credential files of ``plan`` into ``out``; return the folders written."""
    _private_dir(out)
    folders = []
    # Every process's keyring, and each external service's reached by URL: hand that one over.
    for name, services in plan.login_owners().items():
        folder = _private_dir(out / keyring_secret(plan, name))
        keyring = keyring_for(plan.app, plan.deployment, name, services, list(secrets))
        _write_private(folder / KEYRING, msgspec.json.encode(keyring).decode())
        folders.append(folder)
    if plan.uses_broker:
        folder = _private_dir(out / broker_secret(plan))
        broker_auth_files(plan.app, plan.deployment, plan.login_owners(), secrets[0], folder)
        folders.append(folder)
    # The current secret's token: the processes accept the tokens of every secret they are given.
    folder = _private_dir(out / scrape_secret(plan))
    _write_private(folder / SCRAPE_KEY, scrape_token(secrets[0], plan.deployment))
    folders.append(folder)
    return folders


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
