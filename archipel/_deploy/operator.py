"""``archipel call``, ``archipel token`` and ``archipel broker-login``: talk to a running
deployment as its operator.

Both read the deployment from the state ``archipel run`` keeps (``--state-dir``), and its secret
from ``ARCHIPEL_SECRET``/``ARCHIPEL_SECRET_FILE`` or from the deployment's data directory. The
secret itself is never printed; ``token`` prints a credential that expires within minutes.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer

from .._security.keyring import OPERATOR, edge_key, scrape_token
from .._security.secrets import SECRET_FILE_NAME, SECRET_FILE_VAR, SECRET_VAR, SecretError, load_secrets
from .._security.tokens import MAX_TTL, TOKEN_TTL, sign
from .statefile import pid_alive, read_state

STATE_FILE = "state.json"
StateDir = Annotated[Path, typer.Option(help="Where the running deployment keeps its state.")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _deployment(state_dir: Path) -> dict[str, Any]:
    data = read_state(state_dir / STATE_FILE)
    if data is None or not pid_alive(data.get("supervisor_pid"), data.get("supervisor_started")):
        _fail(f"no running deployment keeps its state in {state_dir} (start one with `archipel run`)")
    assert data is not None
    return data


def _secret(data: dict[str, Any]) -> bytes:
    try:
        secrets = load_secrets()
    except SecretError as exc:
        _fail(str(exc))
        raise
    if secrets:
        return secrets[0]
    stored = Path(str(data.get("data_dir") or "")) / SECRET_FILE_NAME
    try:
        return stored.read_text().strip().encode()
    except OSError:
        _fail(f"no secret: set {SECRET_VAR} or {SECRET_FILE_VAR} as the deployment does (no {stored})")
        raise


def operator_header(data: dict[str, Any], service: str, ttl: float = TOKEN_TTL) -> str:
    key = edge_key(_secret(data), data["deployment"], OPERATOR, service)
    return "Bearer " + sign(key, OPERATOR, service, int(time.time() + ttl))


def token(
    service: Annotated[str | None, typer.Argument(help="the service to call (omit with --scrape)")] = None,
    scrape: Annotated[bool, typer.Option(help="the deployment's static token for /metrics")] = False,
    ttl: Annotated[float, typer.Option(help=f"seconds the credential lives (at most {MAX_TTL})")] = TOKEN_TTL,
    state_dir: StateDir = Path(".archipel"),
) -> None:
    """Print an `authorization` header value: the operator's credential for SERVICE, or --scrape."""
    data = _deployment(state_dir)
    if scrape:
        typer.echo("Bearer " + scrape_token(_secret(data), data["deployment"]))
        return
    if service is None:
        _fail("name the service the credential is for, or pass --scrape")
    assert service is not None
    if not 0 < ttl <= MAX_TTL:
        _fail(f"--ttl must be between 0 and {MAX_TTL} seconds; services refuse longer-lived credentials")
    if not _urls(data, service):
        _fail(f"deployment {data['deployment']!r} has no service {service!r}")
    typer.echo(operator_header(data, service, ttl))


def call(
    target: Annotated[str, typer.Argument(help="SERVICE.METHOD")],
    arguments: Annotated[str, typer.Argument(help="the arguments as a JSON object")] = "{}",
    state_dir: StateDir = Path(".archipel"),
) -> None:
    """Call SERVICE.METHOD of the running deployment as the operator and print the JSON answer."""
    data = _deployment(state_dir)
    service, _, method = target.partition(".")
    if not service or not method:
        _fail(f"{target!r}: expected SERVICE.METHOD, e.g. cart.get_cart")
    try:
        body = json.loads(arguments)
    except json.JSONDecodeError as exc:
        _fail(f"the arguments are not JSON: {exc}")
    if not isinstance(body, dict):
        _fail("the arguments must be a JSON object of the parameters by name")
    urls = _urls(data, service)
    if not urls:
        _fail(f"deployment {data['deployment']!r} has no service {service!r}")
    request = urllib.request.Request(
        f"{urls[0]}/{service}/{method}",
        json.dumps(body).encode(),
        {"content-type": "application/json", "authorization": operator_header(data, service)},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            typer.echo(response.read().decode())
    except urllib.error.HTTPError as exc:
        typer.echo(exc.read().decode(), err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        _fail(f"{urls[0]} did not answer: {exc}")


def broker_login(state_dir: StateDir = Path(".archipel")) -> None:
    """Print mosquitto_sub's options to watch the running deployment's events (read-only login):
    mosquitto_sub -V 5 $(archipel broker-login) -t 'DEPLOYMENT/#' -v"""
    from .._events.mqtt import broker_tls, parse_broker_url
    from .._security.secrets import mqtt_password
    from .._security.tls import CA_VAR
    from .acl import observer_username

    data = _deployment(state_dir)
    url = str(data.get("broker") or "")
    if not url:
        _fail(
            f"deployment {data['deployment']!r} runs without a broker (a monolith's events stay in-process)"
        )
    host, port = parse_broker_url(url)
    username = observer_username(data["deployment"])
    options = ["-h", host, "-p", str(port), "-u", username, "-P", mqtt_password(_secret(data), username)]
    if broker_tls(url):
        options += (
            ["--cafile", os.environ[CA_VAR]] if os.environ.get(CA_VAR) else ["--capath", "/etc/ssl/certs"]
        )
    typer.echo(" ".join(options))


def _urls(data: dict[str, Any], service: str) -> list[str]:
    """Where ``service`` of the running deployment answers: its processes, or its external URLs."""
    urls = [p["url"] for p in data["processes"] if service in p["services"]]
    return urls or list(data.get("external", {}).get(service, []))
