"""What one process holds: the keys of the calls it makes and takes, and its broker login.

Keys are per edge of the dependency graph: the key of ``checkout -> payment`` signs checkout's
calls to payment and nothing else. A caller holds the keys of its own dependencies; a callee the
keys of the services allowed to call it (and the operator's, for tools and tests). So a process
taken over can forge no call it could not already make.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec

from .._app import App
from .secrets import SecretError, derive, load_secrets, mqtt_password

KEYRING_VAR = "ARCHIPEL_KEYRING"  # JSON Keyring a supervisor hands to each of its processes
KEYRING_FILE_VAR = "ARCHIPEL_KEYRING_FILE"  # the same in a file: a mounted Kubernetes or Compose secret
OPERATOR = "operator"  # the identity of tools and tests holding the secret; may call any method


class Keyring(msgspec.Struct, kw_only=True, omit_defaults=True):
    # (caller, callee) -> keys, current first; base64. Signing: the local services' calls.
    signing: dict[str, list[str]] = msgspec.field(default_factory=dict)  # "caller>callee" -> keys
    verifying: dict[str, list[str]] = msgspec.field(default_factory=dict)  # "caller>callee" -> keys
    mqtt_username: str = ""
    mqtt_password: str = ""
    # SHA-256 (hex) of the deployment's scrape tokens: the static bearer a Prometheus sends for
    # /metrics and /openapi.json; the process can check one but not make it.
    scrape: list[str] = msgspec.field(default_factory=list)

    def __repr__(self) -> str:  # never the keys, wherever a keyring gets printed
        counts = f"{len(self.signing)} signing, {len(self.verifying)} verifying"
        return f"Keyring({counts}, {self.mqtt_username!r})"


def edge(caller: str, callee: str) -> str:
    return f"{caller}>{callee}"


def edge_key(secret: bytes, deployment: str, caller: str, callee: str) -> bytes:
    return derive(secret, "rpc", f"{deployment}/{edge(caller, callee)}")


def mqtt_username(deployment: str, process: str) -> str:
    """The broker login of one process (all its replicas): ``shop.checkout``."""
    return f"{deployment}.{process}"


def keyring_for(
    app: App,
    deployment: str,
    process: str,
    services: Iterable[str],
    secrets: Sequence[bytes],
    *,
    operator: bool = False,
) -> Keyring:
    """The keyring of process ``process`` hosting ``services``; ``operator`` adds the keys to call
    every service as the operator (tools and tests)."""
    local = set(services)
    edges_out = {
        (caller, dep.__service_name__)
        for caller in local
        for dep in app.specs[caller].dependencies.values()
        if dep.__service_name__ not in local
    }
    if operator:
        edges_out |= {(OPERATOR, name) for name in app.specs}
    edges_in = {(caller, callee) for callee in local for caller in (*app.callers_of(callee), OPERATOR)}

    def keys(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
        return {edge(c, t): [_b64(edge_key(s, deployment, c, t)) for s in secrets] for c, t in sorted(pairs)}

    username = mqtt_username(deployment, process)
    return Keyring(
        signing=keys(edges_out),
        verifying=keys(edges_in),
        mqtt_username=username,
        mqtt_password=mqtt_password(secrets[0], username),
        scrape=[hashlib.sha256(scrape_token(s, deployment).encode()).hexdigest() for s in secrets],
    )


def scrape_token(secret: bytes, deployment: str) -> str:
    """The static bearer token that reads /metrics and /openapi.json of every process of the
    deployment (``archipel token --scrape`` prints it, for Prometheus's ``authorization``)."""
    return _b64(derive(secret, "scrape", deployment))


def process_keyring(
    app: App, deployment: str, process: str, services: Iterable[str], env: Mapping[str, str] | None = None
) -> Keyring | None:
    """This process's keyring: the one handed over (``ARCHIPEL_KEYRING``, or the file that
    ``ARCHIPEL_KEYRING_FILE`` names), else derived from the secret in the environment, else None
    (no secret configured)."""
    env = os.environ if env is None else env
    handed = env.get(KEYRING_VAR)
    if not handed and env.get(KEYRING_FILE_VAR):
        try:
            handed = Path(env[KEYRING_FILE_VAR]).read_text()
        except OSError as exc:
            raise SecretError(f"{KEYRING_FILE_VAR}: cannot read {env[KEYRING_FILE_VAR]}: {exc}") from exc
    if handed:
        try:
            return msgspec.json.decode(handed, type=Keyring)
        except msgspec.DecodeError as exc:
            raise SecretError(f"{KEYRING_VAR}/{KEYRING_FILE_VAR}: not a keyring: {exc}") from exc
    secrets = load_secrets(env)
    if secrets is None:
        return None
    return keyring_for(app, deployment, process, services, secrets)


def decode_key(key: str) -> bytes:
    return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
