"""pytest plugin (registered by the package's entry point): runs a test body in every topology.

``archipel_topology`` is parametrized over the monolith and microservices on the brokers:

- ``microservices-embedded``: the default of ``archipel run``, a private Mosquitto the supervisor
  starts for each run with its sessions on disk;
- ``microservices-rumqttd``: the pip-installable rumqttd, with clean sessions;
- ``microservices-mosquitto``: a Mosquitto shared by the test session, given by URL as an external
  broker is. Same broker as "embedded", so it runs only when asked for.

``ARCHIPEL_TOPOLOGIES`` (comma-separated ids) chooses others than the default three.

The session's Mosquitto is a private one started on a free port (the ``mosquitto`` binary must be
installed), so durable sessions left by other runs on a shared broker cannot take a share of this
run's events. ``ARCHIPEL_TEST_MQTT=mqtt://host:port`` uses an existing broker.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .._deploy.hygiene import die_with_parent
from .._deploy.mosquitto import find_mosquitto, mosquitto_command, write_config
from .._deploy.supervisor import EMBEDDED, free_port
from . import Topology

TOPOLOGY_IDS = ("monolith", "microservices-mosquitto", "microservices-embedded", "microservices-rumqttd")
DEFAULT_TOPOLOGIES = ("monolith", "microservices-embedded", "microservices-rumqttd")


def _selected() -> list[str]:
    wanted = os.environ.get("ARCHIPEL_TOPOLOGIES")
    if not wanted:
        return list(DEFAULT_TOPOLOGIES)
    chosen = [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = set(chosen) - set(TOPOLOGY_IDS)
    if unknown:
        raise pytest.UsageError(f"ARCHIPEL_TOPOLOGIES: unknown {', '.join(sorted(unknown))}")
    return chosen


@pytest.fixture(scope="session")
def archipel_rumqttd_broker() -> Iterator[str]:
    """URL of a rumqttd (the pip broker) that lives for the whole test session."""
    yield from _rumqttd()


@pytest.fixture(scope="session")
def archipel_embedded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the embedded broker, configured as ``archipel run`` does (Mosquitto keeping its
    sessions on disk), for the whole test session; rumqttd if Mosquitto is not installed."""
    if find_mosquitto() is None:
        yield from _rumqttd()
        return
    yield from embedded_mosquitto(tmp_path_factory.mktemp("embedded-broker"))


def embedded_mosquitto(folder: Path) -> Iterator[str]:
    """Mosquitto configured as ``archipel run`` configures it, its files in ``folder``, on a free
    port of 127.0.0.1; yields its URL and stops it after (a generator: wrap it in
    ``contextlib.contextmanager`` outside pytest, as the benchmarks do)."""
    binary = find_mosquitto()
    if binary is None:
        raise RuntimeError("the mosquitto binary is not installed")
    port = free_port()
    yield from _mosquitto(mosquitto_command(binary, write_config(folder, "127.0.0.1", port)), folder, port)


@pytest.fixture(scope="session")
def archipel_mosquitto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Mosquitto for this test session: ``ARCHIPEL_TEST_MQTT``, or a private one."""
    existing = os.environ.get("ARCHIPEL_TEST_MQTT")
    if existing:
        yield existing
        return
    binary = find_mosquitto() or "/usr/sbin/mosquitto"
    port = free_port()
    config = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
    # As root, Mosquitto would switch users, which clears the parent-death signal: keep the user.
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 100000\nlog_dest stderr\nlog_type error\n"
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
    )
    yield from _mosquitto([binary, "-c", str(config)], config.parent, port)


def _rumqttd() -> Iterator[str]:
    from .._deploy.broker import RumqttdBroker

    with RumqttdBroker() as broker:
        yield broker.url


def _mosquitto(command: list[str], folder: Path, port: int) -> Iterator[str]:
    log = folder / "mosquitto.log"  # a file, not a pipe nobody reads while the tests run
    with log.open("wb") as output:
        # Dies with this pytest process even when it is killed, instead of holding its port.
        process = subprocess.Popen(
            command, cwd=folder, stderr=output, preexec_fn=die_with_parent(os.getpid())
        )
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start: {log.read_text()!r}")
            time.sleep(0.02)  # waiting for the broker's port to open
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# A test module may add topologies of its own: ``ARCHIPEL_EXTRA_TOPOLOGIES = {id: factory}``, the
# factory taking the fixture request (to reach other fixtures) and returning a Topology. The shop's
# end-to-end tests add one with a service swapped for its Node.js implementation.
Extra = Callable[[pytest.FixtureRequest], Topology]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "archipel_topology" in metafunc.fixturenames:
        extra: dict[str, Extra] = getattr(metafunc.module, "ARCHIPEL_EXTRA_TOPOLOGIES", {})
        metafunc.parametrize("archipel_topology", [*_selected(), *extra], indirect=True)


@pytest.fixture
def archipel_topology(request: pytest.FixtureRequest) -> Topology:
    name: str = request.param
    extra: dict[str, Extra] = getattr(request.module, "ARCHIPEL_EXTRA_TOPOLOGIES", {})
    if name in extra:
        return extra[name](request)
    if name == "monolith":
        return Topology("monolith")
    if name == "microservices-mosquitto":
        return Topology("microservices", request.getfixturevalue("archipel_mosquitto_url"))
    if name == "microservices-embedded":
        return Topology("microservices", EMBEDDED)
    return Topology("microservices", request.getfixturevalue("archipel_rumqttd_broker"), durable=False)
