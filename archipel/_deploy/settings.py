"""Deployment settings from ``archipel.toml`` or ``[tool.archipel]`` in ``pyproject.toml``.

::

    app = "shop.app:app"          # what to run
    mode = "microservices"        # or "monolith"
    broker = "embedded"           # private Mosquitto; or "rumqttd", or "mqtt://host:1883"
    deployment = "shop-staging"   # MQTT topic root and client-id prefix (default: the app's name)
    data_dir = ".archipel/data/shop-staging"   # the embedded broker's files (default shown)
    host = "127.0.0.1"
    port = 8000                   # first port; 0 picks free ports
    [groups]                      # services that share a process (default: one per process)
    storefront = ["frontend", "catalog"]
    [replicas]                    # processes per group or service
    checkout = 2
    open_endpoints = ["metrics"]  # served without a credential: metrics, openapi, asyncapi, traces
    authenticate = true           # false serves internal methods to anyone: development only
    [tls]                         # HTTPS between processes (and mqtts:// with the embedded broker)
    cert = "certs/server.pem"
    key = "certs/server-key.pem"
    ca = "certs/ca.pem"           # what callers trust; default: the system's store
    [policies]                    # resilience policies (archipel._resilience.policies)
    timeout = 5.0
    [external.shipping]           # a service implemented elsewhere, under the same contracts:
    command = ["node", "shipping-node/src/main.js"]   # started by `archipel run` (from this folder)
    image = "shop/shipping-node:1"                    # what Compose and Kubernetes run
    # url = "http://shipping.example:8000"            # or: reached there, started by someone else
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec


class TlsSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    cert: str | None = None  # the processes' certificate (PEM): they serve HTTPS
    key: str | None = None  # its private key (PEM)
    ca: str | None = None  # what callers verify certificates with (PEM), instead of the system's


class ExternalSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str | list[str] | None = None  # reached at this address (or these replicas)
    command: list[str] | None = None  # started by `archipel run` with the ARCHIPEL_* variables
    cwd: str | None = None  # where the command runs, relative to the settings file (default: its folder)
    image: str | None = None  # the container image `archipel deploy` writes for it


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    app: str | None = None
    mode: str = "microservices"
    broker: str = "embedded"
    deployment: str | None = None
    data_dir: str | None = None  # relative to the settings file; default .archipel/data/<deployment>
    host: str = "127.0.0.1"
    port: int = 8000
    groups: dict[str, list[str]] = msgspec.field(default_factory=dict)
    replicas: dict[str, int] = msgspec.field(default_factory=dict)
    # resilience policies, checked against the app by archipel._resilience.policies
    policies: dict[str, Any] = msgspec.field(default_factory=dict)
    open_endpoints: list[Literal["metrics", "openapi", "asyncapi", "traces"]] = msgspec.field(
        default_factory=list
    )
    authenticate: bool = True
    tls: TlsSettings = msgspec.field(default_factory=TlsSettings)
    external: dict[str, ExternalSettings] = msgspec.field(default_factory=dict)
    source: str | None = None  # the file the settings came from


class ConfigError(ValueError):
    pass


def find_settings(start: Path | None = None) -> Settings:
    """Settings from the nearest ``archipel.toml`` or ``pyproject.toml`` with ``[tool.archipel]``."""
    folder = (start or Path.cwd()).resolve()
    for candidate in [folder, *folder.parents]:
        toml = candidate / "archipel.toml"
        if toml.is_file():
            return load_settings(toml)
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file() and "archipel" in _table(_read(pyproject), "tool"):
            return load_settings(pyproject)
    return Settings()


def load_settings(path: Path) -> Settings:
    data = _read(path)
    if path.name == "pyproject.toml":
        data = _table(_table(data, "tool"), "archipel")
    try:
        settings = msgspec.convert(data, type=Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    settings.source = str(path)
    for name in ("cert", "key", "ca"):  # files are relative to the settings file
        value = getattr(settings.tls, name)
        if value:
            setattr(settings.tls, name, str((path.parent / value).resolve()))
    for entry in settings.external.values():
        if entry.command is not None:
            entry.cwd = str((path.parent / (entry.cwd or ".")).resolve())
    if settings.data_dir:
        settings.data_dir = str((path.parent / settings.data_dir).resolve())
    if settings.app and (".py" in settings.app or "/" in settings.app):
        # A file reference is relative to the settings file, not to the working directory.
        module, _, attribute = settings.app.partition(":")
        resolved = str((path.parent / module).resolve())
        settings.app = f"{resolved}:{attribute}" if attribute else resolved
    return settings


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    return value if isinstance(value, dict) else {}


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
