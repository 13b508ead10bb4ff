"""TLS for the HTTP hops: the server's certificate and key, and the CA that callers trust.

Configured by files, the way containers get them (a mounted Kubernetes Secret, a Compose secret):
``ARCHIPEL_TLS_CERT`` and ``ARCHIPEL_TLS_KEY`` make every process serve HTTPS; ``ARCHIPEL_TLS_CA``
is what callers (other processes, the supervisor's readiness checks, an ``mqtts://`` broker
connection) verify certificates against, instead of the system's store. ``archipel.toml``'s
``[tls]`` table sets the same (``cert``, ``key``, ``ca``).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CERT_VAR = "ARCHIPEL_TLS_CERT"
KEY_VAR = "ARCHIPEL_TLS_KEY"
CA_VAR = "ARCHIPEL_TLS_CA"


class TlsError(ValueError):
    """A TLS file is missing, unreadable, or the set is incomplete; the message names it."""


@dataclass(frozen=True)
class TlsFiles:
    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TlsFiles:
        env = os.environ if env is None else env
        files = cls(env.get(CERT_VAR) or None, env.get(KEY_VAR) or None, env.get(CA_VAR) or None)
        files.check()
        return files

    @property
    def serves_https(self) -> bool:
        return self.cert is not None

    @property
    def scheme(self) -> str:
        return "https" if self.serves_https else "http"

    def env(self) -> dict[str, str]:
        """The variables that hand these files to a process."""
        pairs = ((CERT_VAR, self.cert), (KEY_VAR, self.key), (CA_VAR, self.ca))
        return {name: str(Path(value).absolute()) for name, value in pairs if value}

    def check(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise TlsError(f"{CERT_VAR} and {KEY_VAR} go together: set both, or neither")
        for name, value in ((CERT_VAR, self.cert), (KEY_VAR, self.key), (CA_VAR, self.ca)):
            if value is not None and not os.access(value, os.R_OK):
                raise TlsError(f"{name}={value}: the file does not exist or is not readable")
        if self.cert is not None and self.key is not None:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.cert, self.key)
            except ssl.SSLError as exc:
                raise TlsError(
                    f"{CERT_VAR}/{KEY_VAR}: not a certificate and its key ({exc.reason})"
                ) from None

    def client_context(self) -> ssl.SSLContext | None:
        """What callers verify servers with: the CA when one is set, else None (the defaults)."""
        if self.ca is None:
            return None
        return ssl.create_default_context(cafile=self.ca)
