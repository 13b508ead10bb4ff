"""The deployment's secret, and the keys and passwords derived from it.

One secret per deployment, from the environment: ``ARCHIPEL_SECRET`` (several, comma-separated,
during a rotation: the first signs, every one is accepted) or ``ARCHIPEL_SECRET_FILE`` (a file
with one secret a line, as a mounted Kubernetes Secret gives). ``archipel run`` without either
makes a random one and keeps it, readable by its owner only, in the deployment's data directory.

Nothing uses the secret itself: each use gets its own key, ``HMAC-SHA256(secret, purpose/name)``,
so a key that leaks (one caller's key for one callee, a broker password) says nothing of the
others. Processes get only their own keys (``keyring``); the secret stays with the supervisor, or
with a process started on its own (a container) that derives its keys itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets as _random
from collections.abc import Mapping
from pathlib import Path

SECRET_VAR = "ARCHIPEL_SECRET"
SECRET_FILE_VAR = "ARCHIPEL_SECRET_FILE"
SECRET_FILE_NAME = "secret"  # in the deployment's data directory, when archipel run made it
MIN_SECRET_BYTES = 16


class SecretError(ValueError):
    """The secret is missing, unreadable or too short; the message says which and where."""


def load_secrets(env: Mapping[str, str] | None = None) -> list[bytes] | None:
    """The deployment's secrets, current first, or None when none is configured."""
    env = os.environ if env is None else env
    raw = env.get(SECRET_VAR)
    where = SECRET_VAR
    if not raw and env.get(SECRET_FILE_VAR):
        path = Path(env[SECRET_FILE_VAR])
        where = f"{SECRET_FILE_VAR}={path}"
        try:
            raw = path.read_text().replace("\n", ",")
        except OSError as exc:
            raise SecretError(f"{where}: cannot read it: {exc.strerror}") from None
    if not raw:
        return None
    found = [item.strip().encode() for item in raw.split(",") if item.strip()]
    if not found:
        raise SecretError(f"{where} is set but holds no secret")
    for index, secret in enumerate(found, 1):
        if len(secret) < MIN_SECRET_BYTES:
            # Never the value itself: it would land in a log.
            raise SecretError(
                f"{where}: secret #{index} has {len(secret)} characters; at least {MIN_SECRET_BYTES} "
                "are needed (make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
    return found


def new_secret() -> str:
    return _random.token_urlsafe(32)


def stored_secret(data_dir: Path) -> str:
    """The secret kept in ``data_dir`` (made on first use, mode 0600): a deployment restarted
    with the same data keeps its credentials, so the broker's stored sessions stay usable."""
    path = data_dir / SECRET_FILE_NAME
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = new_secret()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret


def derive(secret: bytes, purpose: str, name: str) -> bytes:
    """The key for one use of the secret: ``purpose`` ("rpc", "mqtt"...) and who uses it."""
    return hmac.new(secret, f"archipel/{purpose}/{name}".encode(), hashlib.sha256).digest()


def mqtt_password(secret: bytes, username: str) -> str:
    """The MQTT password of ``username``, derived from the secret: nothing to store or hand out
    but the secret, and the broker's password file can be written again from it at any time."""
    return base64.urlsafe_b64encode(derive(secret, "mqtt", username)).rstrip(b"=").decode()
