"""A deployment's secret as its supervisor holds it: where it comes from, the keyring each
process gets instead of it, and the operator's credentials for tools and tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from .._app import App
from .._security.keyring import OPERATOR, Keyring, keyring_for
from .._security.secrets import SECRET_FILE_NAME, SECRET_FILE_VAR, SECRET_VAR, load_secrets, stored_secret
from .._security.tokens import Signer, operator_headers


class DeploymentSecrets:
    def __init__(self, app: App, deployment: str, data_dir: Path, env: Mapping[str, str]) -> None:
        self._app, self._deployment, self._data_dir = app, deployment, data_dir
        self._given = load_secrets(env)
        self._stored: list[bytes] | None = None
        self._operator: Signer | None = None

    @property
    def source(self) -> str:
        """Where the deployment's secret comes from (never the secret): for the start-up table."""
        if self._given:
            return f"{SECRET_VAR} or {SECRET_FILE_VAR}"
        return str(self._data_dir / SECRET_FILE_NAME)

    @property
    def secrets(self) -> list[bytes]:
        """The deployment's secrets: given, else the one kept in the data directory, made on
        first use (after the start-up checks, so a refused start leaves no data directory)."""
        if self._given:
            return self._given
        if self._stored is None:
            self._stored = [stored_secret(self._data_dir).encode()]
        return self._stored

    def keyring(self, process: str, services: Iterable[str]) -> Keyring:
        """What one process gets instead of the secret: the keys of its own edges."""
        return keyring_for(self._app, self._deployment, process, services, self.secrets)

    def operator_keyring(self) -> Keyring:
        """Keys to call any service of this deployment as the operator (tools and tests)."""
        return keyring_for(self._app, self._deployment, OPERATOR, (), self.secrets, operator=True)

    def auth_headers(self, service: str) -> dict[str, str]:
        """The operator's credential for ``service``: its internal methods, and /metrics and
        /openapi.json of the processes hosting it."""
        if self._operator is None:
            self._operator = Signer(self.operator_keyring())
        return operator_headers(self._operator, service)
