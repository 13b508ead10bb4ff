"""The broker logins of a deployment and what each may do, as Mosquitto's password and ACL files.

One login per process (all its replicas), ``{deployment}.{process}``, whose password is derived
from the deployment's secret (``secrets.mqtt_password``), plus two fixed ones. What each may do,
with ``d`` the deployment and ``t`` an event topic:

==========================  ===============================================================
``d.{process}``             write ``d/t`` for each event its services emit (``emits=``);
                            read ``d/t`` for each topic its services handle (``@on``), and
                            write ``d/$dead/t`` (its dead letters). Nothing else: ``archipel
                            events replay`` hands a dead letter back to its handler inside
                            the consumer's process, not through the broker
``d.supervisor``            read and write ``archipel-probe/d.supervisor/#`` (its probes)
``d.observer``              read ``d/#``: tests, ``mosquitto_sub``-style watching; no writes
anonymous clients           nothing (``allow_anonymous false``, and no rules for them)
==========================  ===============================================================

The supervisor restores a consumer's shared subscriptions, and ends a retired replica's session,
logged in as *that consumer* (it holds the secret, so it derives any password): Mosquitto checks
the read rules of a session's messages against the user who last connected it, so a session
subscribed again as the supervisor would drop its consumer's events while it is away (pinned by
the tests).

What Mosquitto 2.0 (2.0.11 here) does with these files, measured on the real broker, "tested"
where tests/test_mqtt_acl.py pins it, by hand otherwise:

- A denied QoS 1 PUBLISH gets PUBACK reason 0x87 (not authorized) and reaches no subscriber
  (tested); a denied QoS 0 one is dropped silently (by hand). The connection stays up.
- A SUBSCRIBE is never refused under an ``acl_file``: SUBACK grants the QoS (tested), even to a
  user with no rules or against a ``topic deny`` rule (by hand). The read rules are checked on
  each delivery, against the message's topic: for ``$share/{group}/d/t`` that is ``d/t``, so
  ``topic read $share/...`` grants nothing (by hand) and ``topic read d/t`` is the rule that works
  (tested).
  ``subscribe`` patterns are therefore written as comments, for people and brokers that check them.
- Anonymous clients and wrong passwords get CONNACK 0x87, not 0x86 (tested).
- So a logged-in process can join another service's share group. Without read rights on the
  topic it swallows that group's share of the messages, delivered to no one (by hand); with them
  (two services handling one topic) it takes that share. Any login may also take over any client
  id's session (by hand). Both need a compromised process of the deployment; closing them needs
  an authorization plugin that checks subscriptions and client ids (not tried here).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets as _random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._app import App
from .._events.bus import DEAD_PREFIX
from .._events.mqtt import shared_filter, wire_topic
from .._security.keyring import mqtt_username
from .._security.secrets import mqtt_password
from .probe import PROBE_ROOT

SUPERVISOR = "supervisor"
OBSERVER = "observer"
PASSWORD_FILE = "passwords"
ACL_FILE = "acl"
# What mosquitto_passwd 2.0 writes. The passwords are 256-bit random keys, which no iteration
# count makes easier or harder to guess; more would only slow every CONNECT.
HASH_ITERATIONS = 101
_SALT_BYTES = 12
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")  # deployments and processes, as the supervisor requires


@dataclass
class BrokerUser:
    """One broker login: the topics it may publish, the filters it subscribes, what it may read."""

    username: str
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    read: list[str] = field(default_factory=list)


def supervisor_username(deployment: str) -> str:
    return mqtt_username(deployment, SUPERVISOR)


def observer_username(deployment: str) -> str:
    return mqtt_username(deployment, OBSERVER)


def broker_users(app: App, deployment: str, processes: Mapping[str, Sequence[str]]) -> list[BrokerUser]:
    """The logins of ``deployment``: one per process (process name -> its services), then the
    supervisor's and the observer's. Raises ValueError for an unknown service or a bad name."""
    _check_name("deployment", deployment)
    users = [_process_user(app, deployment, name, services) for name, services in processes.items()]
    probes = f"{PROBE_ROOT}/{supervisor_username(deployment)}/#"
    everything = wire_topic(deployment, "#")
    return [
        *users,
        BrokerUser(supervisor_username(deployment), [probes], [probes], [probes]),
        BrokerUser(observer_username(deployment), [], [everything], [everything]),
    ]


def _process_user(app: App, deployment: str, process: str, services: Sequence[str]) -> BrokerUser:
    _check_name("process", process)
    if process in (SUPERVISOR, OBSERVER):
        raise ValueError(f"process {process!r}: that name is the broker login of the {process}; rename it")
    unknown = [name for name in services if name not in app.specs]
    if unknown:
        named = ", ".join(repr(name) for name in unknown)
        raise ValueError(f"process {process!r}: {named} not a service of app {app.name!r}")
    specs = [app.specs[name] for name in services]
    emitted = {event.__topic__ for spec in specs for event in spec.emits}
    handled = {handler.topic for spec in specs for handler in spec.handlers}
    published = emitted | {DEAD_PREFIX + topic for topic in handled}
    return BrokerUser(
        mqtt_username(deployment, process),
        publish=sorted(wire_topic(deployment, topic) for topic in published),
        subscribe=sorted(
            {shared_filter(deployment, spec.name, h.topic) for spec in specs for h in spec.handlers}
        ),
        read=sorted(wire_topic(deployment, topic) for topic in handled),
    )


def _check_name(what: str, name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"{what} {name!r} must be lower case letters, digits, '-' or '_'")


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = HASH_ITERATIONS) -> str:
    """``$7$iterations$salt$hash``: PBKDF2-HMAC-SHA512, base64 salt (12 random bytes) and
    64-byte hash, as ``mosquitto_passwd`` writes for Mosquitto 2.0."""
    salt = _random.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """Write Mosquitto's ``password_file`` (username -> password) with hashed passwords, mode
    0600, replacing any file there at once; return its path."""
    lines = []
    for username, password in users.items():
        if not username or ":" in username or _breaks_line(username):
            raise ValueError(f"broker username {username!r} cannot be empty or hold ':' or a line break")
        lines.append(f"{username}:{mosquitto_hash(password)}\n")
    return _write_private(path, "".join(lines))


def write_acl_file(path: Path, users: Iterable[BrokerUser]) -> Path:
    """Write Mosquitto's ``acl_file`` for ``users``; anonymous clients get no rule. Mode 0600."""
    blocks = [
        "# Written by archipel (archipel._deploy.acl): who may publish and read which topics.\n"
        "# No rule comes before the first user line, so anonymous clients may do nothing.\n"
    ]
    blocks += [_acl_block(user) for user in users]
    return _write_private(path, "\n".join(blocks))


def _acl_block(user: BrokerUser) -> str:
    lines = [f"user {user.username}"]
    lines += [f"# subscribes {pattern}" for pattern in user.subscribe]
    for topic in sorted({*user.publish, *user.read}):
        writes, reads = topic in user.publish, topic in user.read
        lines.append(f"topic {'readwrite' if writes and reads else 'write' if writes else 'read'} {topic}")
    if any(_breaks_line(line) for line in lines):
        raise ValueError(f"broker user {user.username!r}: a name or topic holds a line break")
    return "".join(line + "\n" for line in lines)


def broker_auth_files(
    app: App,
    deployment: str,
    processes: Mapping[str, Sequence[str]],
    secret: bytes,
    directory: Path,
) -> tuple[Path, Path]:
    """Write ``passwords`` and ``acl`` into ``directory`` for the logins of :func:`broker_users`,
    passwords derived from ``secret``; return (password file, ACL file)."""
    users = broker_users(app, deployment, processes)
    directory.mkdir(parents=True, exist_ok=True)
    passwords = {user.username: mqtt_password(secret, user.username) for user in users}
    return (
        write_password_file(directory / PASSWORD_FILE, passwords),
        write_acl_file(directory / ACL_FILE, users),
    )


def _breaks_line(text: str) -> bool:
    return "\n" in text or "\r" in text


def _write_private(path: Path, text: str) -> Path:
    # Written beside, then renamed over: the broker never reads half a file, and the file is
    # never readable by others, not even for a moment.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
