"""The default broker of ``archipel run``: a private Mosquitto that keeps sessions on disk.

The supervisor writes ``mosquitto.conf`` into the deployment's broker directory
(``.archipel/data/<deployment>/broker/`` by default) at every start and runs Mosquitto with that
directory as its working directory, so the database ``mosquitto.db`` lands next to it (and a path
with spaces needs no quoting in the config). Choices, measured in
docs/decisions/0005-default-broker.md:

- ``persistence true``: sessions and their queued QoS 1 messages survive a broker restart.
  Mosquitto 2.0 saves a session only if the client connected with clean start off, which is what a
  durable ``MqttBus`` does, and restores its plain subscriptions but not its shared ones: the
  supervisor subscribes each consumer's session again after every (re)start.
- ``autosave_interval 1``: Mosquitto always saves on SIGTERM/SIGINT, so a graceful restart loses
  nothing; after a SIGKILL what changed since the last save is lost. Mosquitto saves when more
  than the interval has passed, counted in whole seconds: the window is under 2 s. Each save
  rewrites the whole file (about 3 ms per 1,000 queued messages). The supervisor also asks for a
  save (SIGUSR1) once the processes' sessions exist, so those never fall in that window.
- ``max_queued_messages 100000`` per client, instead of 1000: beyond it Mosquitto drops new QoS 1
  messages for that client without telling anyone. 100,000 events of ~300 bytes take ~60 MB of
  broker memory and ~37 MB on disk.
- ``max_inflight_messages 100``: unacknowledged messages per client at once, matching the
  ``MqttBus`` bound on concurrent handlers (so a consumer's handlers are never idle for lack of
  messages), and what a crashed consumer may get twice.
- Logins: given a password file and an ACL file (``_deploy.acl``), ``allow_anonymous false``
  and each process may publish and read only its own topics; without them, ``allow_anonymous
  true`` on 127.0.0.1 only. Mosquitto 2.0 never refuses a SUBSCRIBE under an ACL file: it checks
  the read rules when delivering each message (docstring of ``_deploy.acl``).
- TLS: given a certificate and its key, the listener speaks TLS only (``mqtts://``); clients
  authenticate with their login, not with certificates (``require_certificate false``).
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from .._security.tls import TlsFiles

CONFIG_NAME = "mosquitto.conf"
DATABASE_NAME = "mosquitto.db"
MAX_QUEUED_MESSAGES = 100_000
MAX_INFLIGHT_MESSAGES = 100
AUTOSAVE_INTERVAL = 1  # seconds; the SIGKILL window is under twice this

_CONFIG = """\
# Written by archipel at each start of the deployment's broker; edits are overwritten.
listener {port} {host}
{access}persistence true
# Relative to Mosquitto's working directory, which the supervisor sets to this folder.
persistence_location ./
persistence_file {database}
autosave_interval {autosave}
max_queued_messages {max_queued}
max_inflight_messages {max_inflight}
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
log_type notice
connection_messages false
# As root, Mosquitto would switch to the user "mosquitto", who cannot write here; the switch would
# also clear the parent-death signal that stops it with the supervisor.
user {user}
"""


def find_mosquitto() -> str | None:
    """Path of the ``mosquitto`` binary (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def write_config(
    directory: Path,
    host: str,
    port: int,
    *,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    tls: TlsFiles | None = None,
) -> Path:
    """Write ``mosquitto.conf`` for a listener on ``host:port`` into ``directory``; return its path.

    With ``password_file`` (and usually ``acl_file``), only those logins may connect; with
    ``tls`` (its ``cert`` and ``key``; the deployment's, as for HTTPS), the listener speaks TLS.
    Without them, the anonymous plain listener of before."""
    if acl_file is not None and password_file is None:
        raise ValueError("an acl_file needs a password_file: anonymous clients get no rules in it")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_NAME
    path.write_text(
        _CONFIG.format(
            host=host,
            port=port,
            access=_tls_lines(tls) + _access_lines(password_file, acl_file),
            database=DATABASE_NAME,
            autosave=AUTOSAVE_INTERVAL,
            max_queued=MAX_QUEUED_MESSAGES,
            max_inflight=MAX_INFLIGHT_MESSAGES,
            user=pwd.getpwuid(os.geteuid()).pw_name,
        )
    )
    return path


def _access_lines(password_file: Path | None, acl_file: Path | None) -> str:
    if password_file is None:
        return "allow_anonymous true\n"
    lines = ["allow_anonymous false", f"password_file {_config_path(password_file)}"]
    if acl_file is not None:
        lines.append(f"acl_file {_config_path(acl_file)}")
    return "".join(line + "\n" for line in lines)


def _tls_lines(tls: TlsFiles | None) -> str:
    if tls is None:
        return ""
    if tls.cert is None or tls.key is None:
        raise ValueError("a TLS listener needs a certificate and its key")
    lines = [f"certfile {_config_path(Path(tls.cert))}", f"keyfile {_config_path(Path(tls.key))}"]
    if tls.ca is not None:  # sent along with the certificate chain; clients need no certificate
        lines.append(f"cafile {_config_path(Path(tls.ca))}")
    lines.append("require_certificate false")
    return "".join(line + "\n" for line in lines)


def _config_path(path: Path) -> str:
    # Absolute: Mosquitto's working directory is the broker folder, not the caller's. Mosquitto
    # takes the rest of the line as the path (spaces are fine), so only line breaks would break it.
    text = str(path.absolute())
    if "\n" in text or "\r" in text:
        raise ValueError(f"a Mosquitto config path cannot hold a line break: {text!r}")
    return text


def mosquitto_command(binary: str, config: Path) -> list[str]:
    return [binary, "-c", str(config)]
