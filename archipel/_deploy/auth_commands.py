"""``archipel broker-auth``: the logins and access rules of a deployment, for an external Mosquitto.

Writes ``passwords`` (hashed, mode 0600), ``acl`` and a ``mosquitto.conf`` snippet into a folder.
The passwords derive from the deployment's secret (``ARCHIPEL_SECRET`` or ``ARCHIPEL_SECRET_FILE``),
which the processes hold too, so nothing else needs handing out; run it again after a change of
the app, the placement or the secret, then have Mosquitto reload (SIGHUP).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console

from .._errors import DefinitionError
from .._security.keyring import keyring_for
from .._security.secrets import SECRET_FILE_VAR, SECRET_VAR, SecretError, load_secrets
from .acl import _write_private, broker_auth_files
from .loading import command_app, command_settings, fail
from .plan import DeploymentPlan, settings_plan

broker_files = typer.Typer(add_completion=False, help="Broker logins and access rules.")
console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

CONFIG_SNIPPET = "mosquitto.conf"

_SNIPPET = """\
# Written by `archipel broker-auth` for deployment {deployment}: add these lines to the broker's
# configuration. Mosquitto must be able to read both files (they are mode 0600: chown them to
# the user it runs as, e.g. mosquitto). Rewrite them after a change of app, placement or secret,
# then reload Mosquitto (SIGHUP).
listener {port}{host}
allow_anonymous false
password_file {passwords}
acl_file {acl}
"""


def _secret() -> bytes:
    try:
        found = load_secrets()
    except SecretError as exc:  # its message names the variable, never the secret
        fail(str(exc))
    if not found:
        fail(
            f"no deployment secret: set {SECRET_VAR} or {SECRET_FILE_VAR} (the secret the "
            "deployment's processes get; the passwords are derived from it)"
        )
    return found[0]  # the current one, as the processes' keyrings use


@broker_files.command("broker-auth")
def broker_auth(
    out: Annotated[Path, typer.Option(help="the folder to write passwords, acl and mosquitto.conf into")],
    app: Annotated[str | None, typer.Argument(help="module:attribute or path/to/file.py[:attribute]")] = None,
    deployment: Annotated[
        str | None, typer.Option(help="the deployment name (topic root); default: the app's name")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="archipel.toml or pyproject.toml")] = None,
    port: Annotated[int, typer.Option(help="the broker's listener port, in the snippet")] = 1883,
    host: Annotated[str | None, typer.Option(help="the listener's address; default: every one")] = None,
) -> None:
    """Write the broker logins of APP's processes (one per process, from the placement in the
    settings' groups), the supervisor's and the observer's, and their access rules."""
    placement = _placement(app, deployment, config)
    the_app, name, processes = placement.app, placement.deployment, placement.login_owners()
    secret = _secret()
    folder = out.absolute()
    try:
        passwords, acl = broker_auth_files(the_app, name, processes, secret, folder)
    except ValueError as exc:
        fail(str(exc))
    snippet = folder / CONFIG_SNIPPET
    snippet.write_text(
        _SNIPPET.format(
            deployment=name, port=port, host=f" {host}" if host else "", passwords=passwords, acl=acl
        )
    )
    console.print(f"broker logins of deployment {name!r} ({len(processes)} process(es)) written to {folder}:")
    for path in (passwords, acl, snippet):
        console.print(f"  {path.name}")
    console.print(f"each process logs in as {name}.PROCESS, its password derived from the secret")


def _placement(app: str | None, deployment: str | None, config: Path | None) -> DeploymentPlan:
    """APP placed as the settings say, as microservices; ``deployment`` overrides its name."""
    settings = command_settings(config)
    reference, the_app = command_app(app, settings)
    try:
        return settings_plan(reference, the_app, settings, mode="microservices", deployment=deployment)
    except DefinitionError as exc:
        fail(str(exc))


@broker_files.command("keyring")
def keyring(
    service: Annotated[str, typer.Argument(help="the external service (or process) it is for")],
    out: Annotated[Path, typer.Option(help="the file to write (mode 0600)")],
    app: Annotated[str | None, typer.Option(help="module:attribute or path/to/file.py[:attribute]")] = None,
    deployment: Annotated[
        str | None, typer.Option(help="the deployment name (topic root); default: the app's name")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="archipel.toml or pyproject.toml")] = None,
) -> None:
    """Write the keyring of SERVICE: the keys that check its callers' credentials, sign its own
    calls, and its broker login. Hand it to an external service (ARCHIPEL_KEYRING_FILE) that runs
    elsewhere; it holds no more than that service needs, never the secret."""
    placement = _placement(app, deployment, config)
    owners, name = placement.login_owners(), placement.deployment
    if service not in owners:
        fail(f"no process or external service {service!r}; there are: {', '.join(owners)}")
    ring = keyring_for(placement.app, name, service, owners[service], [_secret()])
    _write_private(out.absolute(), msgspec.json.encode(ring).decode())
    console.print(f"keyring of {service!r} in deployment {name!r} written to {out} (mode 0600)")
    console.print(f"give it to the process as ARCHIPEL_KEYRING_FILE={out.absolute()}")
