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
- ``allow_anonymous true`` on 127.0.0.1 only; authentication comes with a later change.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

CONFIG_NAME = "mosquitto.conf"
DATABASE_NAME = "mosquitto.db"
MAX_QUEUED_MESSAGES = 100_000
MAX_INFLIGHT_MESSAGES = 100
AUTOSAVE_INTERVAL = 1  # seconds; the SIGKILL window is under twice this

_CONFIG = """\
# Written by archipel at each start of the deployment's broker; edits are overwritten.
listener {port} {host}
allow_anonymous true
persistence true
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


def write_config(directory: Path, host: str, port: int) -> Path:
    """Write ``mosquitto.conf`` for a listener on ``host:port`` into ``directory``; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_NAME
    path.write_text(
        _CONFIG.format(
            host=host,
            port=port,
            database=DATABASE_NAME,
            autosave=AUTOSAVE_INTERVAL,
            max_queued=MAX_QUEUED_MESSAGES,
            max_inflight=MAX_INFLIGHT_MESSAGES,
            user=pwd.getpwuid(os.geteuid()).pw_name,
        )
    )
    return path


def mosquitto_command(binary: str, config: Path) -> list[str]:
    return [binary, "-c", str(config)]
