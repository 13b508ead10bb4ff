"""pytest plugin (registered by the package's entry point): runs a test body in every topology.

``archipel_topology`` is parametrized over the monolith, microservices on the Mosquitto at
``ARCHIPEL_TEST_MQTT`` (default ``mqtt://127.0.0.1:1883``) and microservices on an embedded
broker shared by the session. ``ARCHIPEL_TOPOLOGIES`` (comma-separated ids) narrows the set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

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
    from .._broker import EmbeddedBroker

    broker = EmbeddedBroker()
    broker.start()
    try:
        yield broker.url
    finally:
        broker.stop()


@pytest.fixture
def archipel_mosquitto_url() -> str:
    return os.environ.get("ARCHIPEL_TEST_MQTT", "mqtt://127.0.0.1:1883")


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
