"""pytest plugin (registered by the package's entry point): runs a test body in every topology.

``archipel_topology`` is parametrized over the monolith, microservices on Mosquitto and
microservices on the embedded broker. ``ARCHIPEL_TOPOLOGIES`` (comma-separated ids) narrows the set.

The Mosquitto is a private one started for the test session on a free port (the ``mosquitto``
binary must be installed), so durable sessions left by other runs on a shared broker cannot take
a share of this run's events. ``ARCHIPEL_TEST_MQTT=mqtt://host:port`` uses an existing broker.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from .._deploy.supervisor import free_port
from . import Topology

TOPOLOGY_IDS = ("monolith", "microservices-mosquitto", "microservices-embedded")


def _selected() -> list[str]:
    wanted = os.environ.get("ARCHIPEL_TOPOLOGIES")
    if not wanted:
        return list(TOPOLOGY_IDS)
    chosen = [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = set(chosen) - set(TOPOLOGY_IDS)
    if unknown:
        raise pytest.UsageError(f"ARCHIPEL_TOPOLOGIES: unknown {', '.join(sorted(unknown))}")
    return chosen


@pytest.fixture(scope="session")
def archipel_embedded_broker() -> Iterator[str]:
    """URL of an embedded MQTT 5 broker that lives for the whole test session."""
    from .._deploy.broker import EmbeddedBroker

    broker = EmbeddedBroker()
    broker.start()
    try:
        yield broker.url
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def archipel_mosquitto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Mosquitto for this test session: ``ARCHIPEL_TEST_MQTT``, or a private one."""
    existing = os.environ.get("ARCHIPEL_TEST_MQTT")
    if existing:
        yield existing
        return
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    config = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 100000\nlog_dest stderr\nlog_type error\n"
    )
    process = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mosquitto did not start: {process.stderr.read() if process.stderr else ''!r}"
                )
            time.sleep(0.02)  # waiting for the broker's port to open
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "archipel_topology" in metafunc.fixturenames:
        metafunc.parametrize("archipel_topology", _selected(), indirect=True)


@pytest.fixture
def archipel_topology(request: pytest.FixtureRequest) -> Topology:
    name: str = request.param
    if name == "monolith":
        return Topology("monolith")
    if name == "microservices-mosquitto":
        return Topology("microservices", request.getfixturevalue("archipel_mosquitto_url"))
    return Topology("microservices", request.getfixturevalue("archipel_embedded_broker"), durable=False)
