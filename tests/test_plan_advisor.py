"""The placement advisor: its rules on synthetic measurements, what it reads from ``/metrics``,
and ``archipel plan`` on the shop end to end."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from archipel._bench import result
from archipel._bench.advisor import OPTIONAL, AdviceError, Edge, Rules, ServiceInfo, advise, hop_cpu_estimate
from archipel._bench.deployment import parse_placement
from archipel._bench.observe import parse, traits
from archipel._loader import load_app

ROOT = Path(__file__).resolve().parents[1]
SHOP = "examples/boutique/boutique/app.py:app"


def svc(name: str, cpu: float = 1.0, **traits: bool) -> ServiceInfo:
    return ServiceInfo(name, cpu_ms_per_visit=cpu, messages_per_visit=1.0, **traits)


def edge(caller: str, callee: str, per_visit: float, wait_ms: float = 1.0, serve_ms: float = 0.0) -> Edge:
    return Edge(caller, callee, "m", per_visit, wait_ms, serve_ms)


RULES = Rules(rate=10.0, hop_cpu_ms=0.5)


def test_a_chatty_pair_is_merged_and_its_gain_is_what_its_hops_cost() -> None:
    services = [svc("front", edge=True), svc("prices"), svc("quiet")]
    edges = [edge("front", "prices", 3.0, wait_ms=2.0, serve_ms=0.5)]
    advice = advise(services, edges, RULES)
    (group,) = advice.groups
    assert group.services == ("front", "prices") and group.name == "front-prices"
    assert group.hops_per_visit == 3.0
    assert group.latency_ms_per_visit == pytest.approx(3 * 1.5)  # the wait less the handler's time
    assert group.cpu_ms_per_visit == pytest.approx(3 * 0.5)
    assert group.cpu_cores == pytest.approx((2.0 - 1.5) * 10 / 1000)
    assert advice.alone == ("quiet",) and "quiet" not in advice.reasons  # nothing refused: no link
    assert advice.placement() == "suggested=front+prices"


def test_the_heaviest_link_is_merged_first_and_the_rest_follow() -> None:
    services = [svc("a", edge=True), svc("b"), svc("c"), svc("d")]
    edges = [edge("a", "b", 1.0), edge("a", "c", 5.0), edge("c", "d", 2.0)]
    advice = advise(services, edges, RULES)
    assert [g.services for g in advice.groups] == [("a", "b", "c", "d")]
    assert advice.groups[0].hops_per_visit == 8.0


def test_a_stateful_service_keeps_its_process_unless_its_edges_dominate() -> None:
    services = [svc("front", edge=True), svc("cart", stateful=True), svc("catalog"), svc("currency")]
    edges = [edge("front", "cart", 1.0), edge("front", "catalog", 1.0), edge("front", "currency", 1.0)]
    advice = advise(services, edges, RULES)
    assert [g.services for g in advice.groups] == [("front", "catalog", "currency")]
    assert advice.alone == ("cart",)
    assert advice.reasons["cart"].startswith("has state (collections): its link to")
    assert "33% of the hop cost, below 50%" in advice.reasons["cart"]
    # The same service, when most of the app's hops are to it, joins.
    heavy = [edge("front", "cart", 4.0), edge("front", "catalog", 1.0)]
    advice = advise(services[:3], heavy, RULES)
    assert [g.services for g in advice.groups] == [("front", "cart", "catalog")]


def test_an_event_consumer_keeps_its_process_too() -> None:
    services = [svc("front", edge=True), svc("shipping", consumer=True), svc("catalog")]
    edges = [edge("front", "shipping", 1.0), edge("front", "catalog", 2.0)]
    advice = advise(services, edges, RULES)
    assert advice.alone == ("shipping",) and "has event handlers" in advice.reasons["shipping"]


def test_an_optional_dependency_stays_apart_however_chatty() -> None:
    services = [svc("front", edge=True), svc("ads", optional=True), svc("catalog")]
    edges = [edge("front", "ads", 50.0), edge("front", "catalog", 1.0)]
    advice = advise(services, edges, RULES)
    assert [g.services for g in advice.groups] == [("front", "catalog")]
    assert advice.reasons["ads"] == OPTIONAL


def test_no_group_is_allowed_past_the_cpu_bound() -> None:
    services = [svc("front", cpu=20.0, edge=True), svc("b", cpu=20.0), svc("c", cpu=20.0)]
    edges = [edge("front", "b", 2.0), edge("front", "c", 1.0)]
    rules = Rules(rate=10.0, cpu_bound=0.5, hop_cpu_ms=0.0)  # each alone: 0.2 cores at 10 visits/s
    advice = advise(services, edges, rules)
    assert [g.services for g in advice.groups] == [("front", "b")]
    assert advice.groups[0].cpu_cores == pytest.approx(0.4) and advice.groups[0].cpu_cores < rules.cpu_bound
    assert advice.reasons["c"] == "b+c+front would use 0.60 cores, not below 0.5"
    # A lower bound keeps everything apart; a higher one lets all three share.
    assert not advise(services, edges, Rules(10.0, cpu_bound=0.3, hop_cpu_ms=0.0)).groups
    assert advise(services, edges, Rules(10.0, cpu_bound=1.0, hop_cpu_ms=0.0)).groups[0].services == (
        "front",
        "b",
        "c",
    )


def test_two_groups_serving_pages_are_not_merged() -> None:
    services = [svc("shop", edge=True), svc("admin", edge=True), svc("catalog")]
    edges = [edge("shop", "catalog", 2.0), edge("admin", "catalog", 1.0)]
    advice = advise(services, edges, RULES)
    assert [g.services for g in advice.groups] == [("shop", "catalog")]
    assert "front doors" in advice.reasons["admin"]


def test_the_advice_does_not_depend_on_the_order_of_the_measurements() -> None:
    services = [svc(n) for n in "abcdef"] + [svc("web", edge=True), svc("db", stateful=True)]
    edges = [edge("web", n, 1.0) for n in "abcdef"] + [edge("web", "db", 0.5)]
    edges += [edge("a", "b", 1.0), edge("d", "e", 1.0), edge("e", "f", 1.0)]
    expected = advise(services, edges, Rules(10.0, cpu_bound=0.045, hop_cpu_ms=0.0))
    # Four services fit under the bound; equal links are taken in the order of names.
    assert [g.services for g in expected.groups] == [("web", "a", "b", "c"), ("d", "e", "f")]
    shuffler = random.Random(7)
    for _ in range(10):
        shuffler.shuffle(services)
        shuffler.shuffle(edges)
        assert advise(services, edges, Rules(10.0, cpu_bound=0.045, hop_cpu_ms=0.0)) == expected


def test_the_hop_cost_is_estimated_from_the_services_without_pages() -> None:
    services = [
        ServiceInfo("web", cpu_ms_per_visit=50.0, messages_per_visit=1.0, edge=True),
        ServiceInfo("a", cpu_ms_per_visit=1.0, messages_per_visit=2.0),
        ServiceInfo("b", cpu_ms_per_visit=3.0, messages_per_visit=2.0),
        ServiceInfo("c", cpu_ms_per_visit=8.0, messages_per_visit=1.0),
        ServiceInfo("idle", cpu_ms_per_visit=0.2),
    ]
    assert hop_cpu_estimate(services) == 1.5  # the median of 0.5, 1.5 and 8
    assert advise(services, [], Rules(10.0)).hop_cpu_ms == 1.5
    assert hop_cpu_estimate(services[:1]) == 0.0


@pytest.mark.parametrize(
    ("services", "edges", "rules", "message"),
    [
        (
            [svc("a")],
            [edge("a", "nope", 1.0)],
            RULES,
            "edge a -> nope.m: 'nope' is not a measured service (a)",
        ),
        ([svc("a"), svc("b")], [edge("a", "b", -1.0)], RULES, "edge a -> b.m: per_visit must be a number"),
        (
            [svc("a"), svc("b")],
            [edge("a", "b", 1.0, wait_ms=math.nan)],
            RULES,
            "edge a -> b.m: wait_ms must be a number at least 0, got nan",
        ),
        ([svc("a"), svc("a")], [], RULES, "service 'a' is measured twice"),
        ([svc("a", cpu=-1.0)], [], RULES, "service a: cpu_ms_per_visit must be a number at least 0"),
        ([svc("a")], [], Rules(rate=0.0), "rate must be a positive number"),
        ([svc("a")], [], Rules(rate=1.0, cpu_bound=-1.0), "cpu_bound must be a positive number"),
        ([svc("a")], [], Rules(rate=1.0, dominance=2.0), "dominance must be a share between 0 and 1"),
    ],
)
def test_measurements_it_cannot_use_are_refused_by_name(
    services: list[ServiceInfo], edges: list[Edge], rules: Rules, message: str
) -> None:
    with pytest.raises(AdviceError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        advise(services, edges, rules)


def test_the_counters_are_read_from_a_metrics_page() -> None:
    registry = CollectorRegistry()
    calls = Counter("archipel_calls", "", ["caller", "service", "method", "outcome"], registry=registry)
    waits = Histogram("archipel_call_duration_seconds", "", ["service", "method"], registry=registry)
    served = Counter("archipel_rpc_requests", "", ["service", "method", "status"], registry=registry)
    calls.labels("frontend", "cart", "get_cart", "ok").inc(3)
    calls.labels("frontend", "cart", "get_cart", "unavailable").inc(1)
    for seconds in (0.001, 0.002, 0.003):
        waits.labels("cart", "get_cart").observe(seconds)
    served.labels("cart", "get_cart", "200").inc(5)
    before = parse(generate_latest(registry).decode())
    calls.labels("frontend", "cart", "get_cart", "ok").inc(2)
    waits.labels("cart", "get_cart").observe(0.004)
    found = parse(generate_latest(registry).decode())
    assert found.calls[("frontend", "cart", "get_cart")] == 6
    assert found.served[("cart", "get_cart")] == 5
    assert found.wait[("cart", "get_cart")] == [pytest.approx(0.010), 4.0]
    delta = found.minus(before)
    assert delta.calls[("frontend", "cart", "get_cart")] == 2
    assert delta.wait[("cart", "get_cart")] == [pytest.approx(0.004), 1.0]


def test_what_the_shop_declares_about_its_services() -> None:
    found = traits(load_app(SHOP))
    assert found["frontend"] == {"stateful": False, "consumer": False, "optional": False, "edge": True}
    assert found["cart"]["stateful"] and found["cart"]["consumer"]
    assert found["payment"]["stateful"] and not found["payment"]["consumer"]
    assert found["shipping"]["consumer"] and not found["shipping"]["stateful"]
    assert found["ads"]["optional"] and found["recommendation"]["optional"]
    assert not any(found["catalog"].values()) and not any(found["currency"].values())


def _plan(*args: str, timeout: float = 140) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archipel", "plan", SHOP, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip


@pytest.mark.timeout(150)
def test_archipel_plan_quick_suggests_a_placement_bench_accepts_and_verifies_it(tmp_path: Path) -> None:
    done = _plan("--quick", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    (json_file,) = tmp_path.glob("plan-boutique-*.json")
    assert json_file.with_suffix(".md").is_file()
    the_result = result.read(json_file)
    advice = the_result.parameters["advice"]
    placement = advice["placement"]
    assert placement is not None and placement.startswith("suggested=")
    suggested = parse_placement(placement, load_app(SHOP))  # what archipel bench --placement takes
    grouped = [s for members in suggested.groups.values() for s in members]
    assert "frontend" in grouped
    assert not {"ads", "recommendation"} & set(grouped)  # optional: kept apart
    assert advice["alone"]["ads"] and advice["observed"]["visits"] > 0 and advice["observed"]["edges"]
    assert [r.name for r in the_result.rows] == ["monolith 10/s", "microservices 10/s", "suggested 10/s"]
    for row in the_result.rows:
        assert row.failure is None and row.extra["completed"] > 0, row
    assert f"`--placement {placement}`" in done.stdout
    assert "| CPU ms saved |" in done.stdout and "| suggested 10/s |" in done.stdout
    json.loads(json_file.read_text())  # plain JSON for other tools


def test_archipel_plan_names_what_it_cannot_use(tmp_path: Path) -> None:
    done = _plan("--rate", "0", "--out", str(tmp_path))
    assert done.returncode == 2 and "--rate, --duration and --cpu-bound must be positive" in done.stderr
    done = _plan("--mix", str(tmp_path / "missing.py"), "--out", str(tmp_path))
    assert done.returncode == 2 and "missing.py not found" in done.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.timeout(90)
def test_archipel_plan_no_verify_writes_the_advice_alone(tmp_path: Path) -> None:
    done = _plan("--quick", "--no-verify", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    (json_file,) = tmp_path.glob("plan-boutique-*.json")
    the_result = result.read(json_file)
    assert the_result.rows == [] and the_result.parameters["advice"]["observed"]["visits"] > 0
    assert "Placement:" in done.stdout and "verifying" not in done.stderr
