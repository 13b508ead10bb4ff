"""Placement is configuration: groups share a process, replicas share the work."""

from __future__ import annotations

import aiohttp
import pytest

from archipel import DefinitionError
from archipel._deploy.plan import ProcessPlan, plan
from archipel.testing import Topology, run_app
from tests.apps.shop import Checkout, Item, OrderPlaced, app
from tests.conftest import eventually


def test_plan_defaults_to_one_process_per_service() -> None:
    assert [p.name for p in plan(app, "microservices")] == ["currency", "checkout", "email", "ledger"]
    assert plan(app, "monolith") == [ProcessPlan("monolith", ("currency", "checkout", "email", "ledger"))]


def test_plan_groups_and_replicas() -> None:
    plans = plan(app, "microservices", {"orders": ["checkout", "currency"]}, {"ledger": 2})
    assert plans[0] == ProcessPlan("orders", ("checkout", "currency"))
    assert ProcessPlan("ledger", ("ledger",), 2) in plans


@pytest.mark.parametrize(
    ("groups", "replicas", "message"),
    [
        ({"g": ["nosuch"]}, {}, "group 'g' names 'nosuch'"),
        ({"a": ["email"], "b": ["email"]}, {}, "'email' is in two groups"),
        ({}, {"ghost": 2}, "unknown process"),
        ({}, {"ledger": 0}, "at least 1"),
    ],
)
def test_bad_placement_is_named(groups: dict[str, list[str]], replicas: dict[str, int], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        plan(app, "microservices", groups, replicas)


async def recorded_by(url: str, order: str, headers: dict[str, str]) -> bool:
    """Whether the ledger replica at ``url`` recorded ``order`` (asked directly, not round-robin)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/ledger/total_of", json={"order_id": order}, headers=headers) as r,
    ):
        return await r.json() is not None


async def test_grouped_services_share_a_process_and_replicas_share_events(
    archipel_mosquitto_url: str,
) -> None:
    async with run_app(
        app,
        Topology("microservices", archipel_mosquitto_url),
        groups={"orders": ["checkout", "currency"]},
        replicas={"ledger": 2},
    ) as running:
        assert running.pid_of("checkout") == running.pid_of("currency") != running.pid_of("ledger")
        checkout = running.client(Checkout)
        orders = [await checkout.place_order(f"u{i}", "a@b", [Item("a", 1)]) for i in range(20)]
        for order in orders:
            await running.events.wait_for(OrderPlaced, lambda e, order=order: e.order_id == order)
        urls = running.urls_of("ledger")
        assert len(urls) == 2

        async def owners() -> list[list[bool]] | None:
            operator = running.auth_headers("ledger")
            seen = [[await recorded_by(url, order, operator) for url in urls] for order in orders]
            return seen if all(any(row) for row in seen) else None

        seen = await eventually(owners)
        assert all(sum(row) == 1 for row in seen), seen  # each event handled by exactly one replica
        assert all(any(row[i] for row in seen) for i in range(2)), seen  # and both replicas took a share
