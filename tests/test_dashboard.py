"""The live dashboard of `archipel run`: the call and event rates it computes from /metrics, its
refusals (a foreign Host or Origin, controls left off), its API on a running monolith, and in a
real browser the shop as microservices: every service and the edges between them after some
traffic, then the currency process paused from the page (unhealthy within seconds) and resumed.

Screenshots go to the test's tmp folder and to ``test-artifacts/dashboard/``."""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import msgspec
import pytest
from aiohttp import web

from archipel._dashboard.feed import KEEP, EventFeed
from archipel._dashboard.metrics import call_edges, event_rates, parse, quantile
from archipel._dashboard.server import local_request
from archipel._dashboard.traces import one_trace, recent
from archipel._events.bus import Envelope
from archipel._events.dispatch import DeadLetter
from tests.test_cli import ROOT, archipel

CHROMIUM = "/usr/bin/chromium"
# What docs/observability.md shows (free ports, the test's folders and --quiet added by _run).
SHOP = ["examples/boutique/boutique/app.py:app", "--mode", "microservices", "--broker", "embedded"]
SHOP_OPTIONS = [*SHOP[1:], "--port", "0", "--dashboard-controls"]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
T = TypeVar("T")

BEFORE = """\
# TYPE archipel_calls counter
archipel_calls_total{caller="frontend",method="get_product",outcome="ok",service="catalog"} 10.0
archipel_calls_total{caller="frontend",method="convert",outcome="ok",service="currency"} 4.0
archipel_calls_total{caller="frontend",method="convert",outcome="unavailable",service="currency"} 0.0
# TYPE archipel_call_duration_seconds histogram
archipel_call_duration_seconds_bucket{le="0.001",method="get_product",service="catalog"} 0.0
archipel_call_duration_seconds_bucket{le="0.01",method="get_product",service="catalog"} 10.0
archipel_call_duration_seconds_bucket{le="0.1",method="get_product",service="catalog"} 10.0
archipel_call_duration_seconds_bucket{le="+Inf",method="get_product",service="catalog"} 10.0
archipel_call_duration_seconds_count{method="get_product",service="catalog"} 10.0
archipel_call_duration_seconds_sum{method="get_product",service="catalog"} 0.05
# TYPE archipel_events_published counter
archipel_events_published_total{topic="orders/placed"} 1.0
"""
AFTER = """\
# TYPE archipel_calls counter
archipel_calls_total{caller="frontend",method="get_product",outcome="ok",service="catalog"} 110.0
archipel_calls_total{caller="frontend",method="convert",outcome="ok",service="currency"} 12.0
archipel_calls_total{caller="frontend",method="convert",outcome="unavailable",service="currency"} 2.0
# TYPE archipel_call_duration_seconds histogram
archipel_call_duration_seconds_bucket{le="0.001",method="get_product",service="catalog"} 0.0
archipel_call_duration_seconds_bucket{le="0.01",method="get_product",service="catalog"} 60.0
archipel_call_duration_seconds_bucket{le="0.1",method="get_product",service="catalog"} 110.0
archipel_call_duration_seconds_bucket{le="+Inf",method="get_product",service="catalog"} 110.0
archipel_call_duration_seconds_count{method="get_product",service="catalog"} 110.0
archipel_call_duration_seconds_sum{method="get_product",service="catalog"} 3.0
# TYPE archipel_events_published counter
archipel_events_published_total{topic="orders/placed"} 11.0
"""
HANDLER = """\
# TYPE archipel_events_handled counter
archipel_events_handled_total{handler="send_confirmation",outcome="ok",service="email"} 3.0
archipel_events_handled_total{handler="send_confirmation",outcome="dead",service="email"} 1.0
"""


def test_parse_reads_what_prometheus_client_reads_and_names_a_bad_line() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    text = AFTER + 'archipel_calls_total{caller="a\\"b\\\\c\\nd",method="m",outcome="ok",service="s"} 2.5e3\n'
    expected = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(
            ("archipel_calls_total", "archipel_call_duration_seconds_bucket", "archipel_events")
        )
    }
    assert parse(text, 0.0, ["a"]).samples == expected
    escaped = (("caller", 'a"b\\c\nd'), ("method", "m"), ("outcome", "ok"), ("service", "s"))
    assert expected[("archipel_calls_total", escaped)] == 2500.0  # the escapes undone
    with pytest.raises(ValueError, match="archipel_calls_total"):
        parse('archipel_calls_total{caller="a} 1\n', 0.0, ["a"])


def test_call_edges_from_two_scrapes_give_rate_error_rate_and_percentiles() -> None:
    before, after = parse(BEFORE, 100.0, ["frontend"]), parse(AFTER, 110.0, ["frontend"])
    catalog, currency = call_edges([(before, after)])
    # 100 calls in 10 s; of the 100 histogram observations, 50 took 1-10 ms and 50 took 10-100 ms.
    assert catalog["caller"] == "frontend" and catalog["service"] == "catalog"
    assert catalog["rate"] == 10.0 and catalog["error_rate"] == 0.0
    assert catalog["p50_ms"] == pytest.approx(10.0)
    assert catalog["p99_ms"] == pytest.approx(98.2)
    # 8 more ok and 2 failed in 10 s: 1 call a second, a fifth of them failed; no histogram.
    assert currency["service"] == "currency" and currency["rate"] == 1.0
    assert currency["error_rate"] == 0.2 and currency["p99_ms"] is None


def test_a_first_scrape_or_a_restart_is_no_rate() -> None:
    after = parse(AFTER, 110.0, ["frontend"])
    assert call_edges([(None, after)]) == []
    # A restarted process counts from zero: its counters are smaller than before.
    restarted = parse(BEFORE.replace("10.0", "3.0"), 120.0, ["frontend"])
    (catalog, _) = call_edges([(after, restarted)])
    assert catalog["rate"] == 0.3


def test_event_rates_per_topic_and_handler_with_dead_letters() -> None:
    emitter = (parse(BEFORE, 0.0, ["checkout"]), parse(AFTER, 5.0, ["checkout"]))
    consumer = (parse("", 0.0, ["email"]), parse(HANDLER, 5.0, ["email"]))
    rates = event_rates([emitter, consumer], {("email", "send_confirmation"): "orders/placed"})
    assert rates == {"orders/placed": {"published": 2.0, "handled:email": 0.6, "dead:email": 0.2}}


def test_quantile_follows_prometheus_histogram_quantile() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)
    assert quantile(0.5, {math.inf: 0.0}) is None
    assert quantile(0.99, {0.1: 0.0, math.inf: 4.0}) == 0.1  # beyond the last bound: that bound


def test_only_requests_naming_the_dashboard_itself_pass() -> None:
    assert local_request("127.0.0.1:8000", None, 8000) is None
    assert local_request("localhost:8000", "http://localhost:8000", 8000) is None
    assert "Host 'evil.example:8000'" in str(local_request("evil.example:8000", None, 8000))
    assert "Host" in str(local_request("127.0.0.1:9999", None, 8000))  # another port
    assert "no Host" in str(local_request(None, None, 8000))
    assert "Origin" in str(local_request("127.0.0.1:8000", "http://evil.example", 8000))
    assert "Origin" in str(local_request("127.0.0.1:8000", "https://127.0.0.1:8000", 8000))


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _span(span_id: str, parent: str | None, name: str, kind: str, start: int, end: int) -> dict[str, Any]:
    return {
        "trace_id": TRACE, "span_id": span_id, "parent_id": parent, "name": name, "kind": kind,
        "service": name.split(".")[0], "start_ns": start, "end_ns": end, "status": "ok", "attributes": {},
    }  # fmt: skip


async def test_traces_are_grouped_across_processes_and_hops_are_marked() -> None:
    """Two processes serving /traces as the contract says, and one that has no /traces (404)."""
    spans = {
        "frontend": [
            _span("a" * 16, None, "frontend.home", "server", 0, 9_000_000),
            _span("b" * 16, "a" * 16, "catalog.list_products", "client", 1_000_000, 5_000_000),
        ],
        "catalog": [_span("c" * 16, "b" * 16, "catalog.list_products", "server", 2_000_000, 4_000_000)],
    }
    seen: list[str | None] = []

    def process(name: str) -> web.Application:
        async def traces(request: web.Request) -> web.Response:
            seen.append(request.headers.get("authorization"))
            wanted = request.query.get("trace_id")
            return web.json_response(
                {"process": name, "spans": [s for s in spans[name] if wanted in (None, s["trace_id"])]}
            )

        app = web.Application()
        app.router.add_get("/traces", traces)
        return app

    runners = [
        web.AppRunner(process("frontend")),
        web.AppRunner(process("catalog")),
        web.AppRunner(web.Application()),
    ]
    children = []
    for label, runner in zip(("frontend", "catalog", "old"), runners, strict=True):
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        children.append(
            SimpleNamespace(url=f"http://127.0.0.1:{port}", label=label, running=True, retired=False)
        )
    try:
        async with aiohttp.ClientSession() as session:
            collector: Any = SimpleNamespace(
                supervisor=SimpleNamespace(children=children),
                session=session,
                headers=lambda: {"authorization": "Bearer scrape"},
            )
            listed = await recent(collector)
            assert listed["available"] is True
            (trace,) = listed["traces"]
            assert trace["trace_id"] == TRACE and trace["name"] == "frontend.home" and trace["spans"] == 3
            assert trace["processes"] == ["catalog", "frontend"] and trace["duration_ms"] == 9.0
            detail = await one_trace(collector, TRACE)
            assert detail is not None
            assert [(s["process"], s["hop"], s["offset_ms"]) for s in detail["span_list"]] == [
                ("frontend", "http", 0.0),
                ("frontend", "http", 1.0),
                ("catalog", "http", 2.0),
            ]
            assert await one_trace(collector, "0" * 32) is None
            collector.supervisor.children = children[2:]  # only a process without /traces
            assert await recent(collector) == {"available": False, "traces": []}
        assert set(seen) == {"Bearer scrape"}  # /traces is guarded as /metrics is
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_the_feed_keeps_the_last_events_and_reads_dead_letters_reasons() -> None:
    feed = EventFeed(SimpleNamespace(broker_url=None))  # type: ignore[arg-type]
    for number in range(KEEP + 5):
        await feed._record(
            Envelope("orders/placed", "OrderPlaced", "/shop/checkout", payload=b"{}", id=str(number))
        )
    letter = DeadLetter(
        reason="BadEvent: no such order",
        topic="orders/placed",
        handler="email.send",
        event_id="7",
        payload="{}",
    )
    await feed._record(
        Envelope("$dead/orders/placed", "DeadLetter", "/shop/email", payload=msgspec.json.encode(letter))
    )
    assert len(feed.items) == KEEP and feed.items[0]["id"] == "6"  # the oldest went first
    dead = feed.items[-1]
    assert dead["dead"] and dead["reason"] == "BadEvent: no such order" and dead["handler"] == "email.send"
    assert feed.dead_letters == 1 and [i["seq"] for i in feed.since(dead["seq"] - 1)] == [dead["seq"]]
    assert "monolith" in feed.note  # no broker: nothing to watch, and the page says why


# -- a running deployment ------------------------------------------------------------------


def _run(state: Path, app: str, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "archipel", "run", app, "--port", "0", "--quiet", *options),
            *("--state-dir", str(state), "--data-dir", str(state / "data")),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(runner: subprocess.Popen[str]) -> str:
    if runner.poll() is None:
        runner.send_signal(signal.SIGINT)
    output, _ = runner.communicate(timeout=60)
    return output


def _dashboard_of(
    state: Path, runner: subprocess.Popen[str], within: float = 60
) -> tuple[str, dict[str, Any]]:
    """The dashboard URL `archipel status --json` names, once the deployment is up."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert runner.poll() is None, runner.stdout.read() if runner.stdout else ""
        result = archipel("status", "--json", "--state-dir", str(state))
        if result.returncode == 0:
            status: dict[str, Any] = json.loads(result.stdout)
            assert status["dashboard"].startswith("http://127.0.0.1:"), status
            table = archipel("status", "--state-dir", str(state)).stdout
            assert f"dashboard: {status['dashboard']}" in table
            return status["dashboard"], status
        time.sleep(0.2)  # the state file appears once every process is ready
    raise AssertionError("archipel run never reported ready")


async def _until(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], within: float) -> T:
    async with asyncio.timeout(within):
        while not done(value := await probe()):
            await asyncio.sleep(0.1)  # state in other processes: poll it
    return value


@pytest.fixture
def monolith(tmp_path: Path) -> Iterator[str]:
    runner = _run(tmp_path, "tests.apps.shop:app", "--mode", "monolith")
    try:
        url, _ = _dashboard_of(tmp_path, runner)
        yield url
    finally:
        _stop(runner)


@pytest.mark.timeout(90)
async def test_a_monolith_shows_local_edges_refuses_strangers_and_calls_as_the_operator(
    monolith: str,
) -> None:
    async with aiohttp.ClientSession() as web:
        async with web.get(monolith + "api/snapshot") as response:
            snapshot = await response.json()
        assert snapshot["mode"] == "monolith" and snapshot["controls"] is False
        (process,) = snapshot["processes"]
        assert process["health"] == "ready" and process["rss_bytes"] > 0
        assert {s["name"] for s in snapshot["services"]} == set(process["services"])
        edges = {(c["caller"], c["service"]): c for c in snapshot["calls"]}
        assert edges[("checkout", "currency")]["local"] is True  # one process: direct calls
        assert snapshot["feed"]["note"]  # no broker to watch, and the page says why

        for headers in ({"Host": "attacker.example"}, {"Origin": "http://attacker.example"}):
            async with web.get(monolith + "api/snapshot", headers=headers) as response:
                assert response.status == 403, headers
                assert "refused" in (await response.json())["error"]
        control = {"process": "monolith", "action": "pause"}
        async with web.post(monolith + "api/control", json=control) as response:
            assert response.status == 403
            assert "--dashboard-controls" in (await response.json())["error"]

        call = {"service": "checkout", "method": "echo", "body": {"value": {"a": 1}}}
        async with web.post(monolith + "api/call", json=call) as response:
            answer = await response.json()
        assert answer["status"] == 200 and answer["answer"] == {"a": 1}, answer
        assert len(answer["trace_id"]) == 32 and answer["duration_ms"] > 0
        async with web.post(monolith + "api/call", json={"service": "nowhere", "method": "x"}) as response:
            assert response.status == 404 and "nowhere" in (await response.json())["error"]
        async with web.post(monolith + "api/call", data="{") as response:
            assert response.status == 400

        async with web.get(monolith + "api/catalog") as response:
            catalog = {s["name"]: s for s in (await response.json())["services"]}
        echo = next(m for m in catalog["checkout"]["methods"] if m["name"] == "echo")
        assert echo["request"]["type"] == "object" and "value" in echo["request"]["properties"]
        async with web.get(monolith + "api/traces") as response:
            assert (await response.json())["traces"] is not None


# -- in a browser --------------------------------------------------------------------------


async def _shop_traffic(storefront: str) -> None:
    """A few page loads and one checkout through the storefront, as a buyer makes them."""
    form = {
        "email": "dashboard@example.org",
        "street_address": "12 Harbour Lane",
        "zip_code": "PO1 3AX",
        "city": "Portsmouth",
        "state": "",
        "country": "United Kingdom",
        "card_number": "4111 1111 1111 1111",
        "card_month": "12",
        "card_year": "2099",
        "card_cvv": "123",
        "order_id": secrets.token_hex(8),
    }
    steps = [("GET", "/", None), ("GET", "/product/camp-mug", None), ("GET", "/", None)]
    steps += [("POST", "/basket/add", {"product_id": "camp-mug", "quantity": "1"}), ("POST", "/order", form)]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as web:
        for method, path, data in steps:
            async with web.request(method, storefront + path, data=data) as response:
                assert response.status == 200, (path, await response.text())


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"no Chromium at {CHROMIUM}")
async def test_the_shop_in_the_dashboard_then_currency_paused_and_resumed(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    runner = _run(tmp_path, SHOP[0], *SHOP[1:], "--dashboard-controls")
    try:
        url, status = _dashboard_of(tmp_path, runner)
        services = {s for p in status["processes"] for s in p["services"]}
        (storefront,) = [p["url"] for p in status["processes"] if p["name"] == "frontend"]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            try:
                page = await browser.new_page(viewport={"width": 1500, "height": 1000})
                page.set_default_timeout(15_000)
                await page.goto(url)
                for service in services:
                    await expect(page.locator(f'#graph g.node[data-service="{service}"]')).to_have_count(1)
                await _shop_traffic(storefront)
                # The calls the traffic made are drawn as active edges, with their rate.
                for edge in ("frontend->catalog", "frontend->currency", "checkout->payment"):
                    await expect(
                        page.locator(f'#graph path.edge.call.active[data-edge="{edge}"]')
                    ).to_have_count(1)
                await expect(
                    page.locator('#graph path.edge.event[data-edge="checkout->orders/placed"]')
                ).to_have_count(1)
                await _shot(page, tmp_path, "dashboard.png")

                row = page.locator('#processes tr[data-process="currency"]')
                await row.locator("button.pause").click()
                await expect(row.locator("td.health")).to_have_text("paused", timeout=5_000)
                await expect(page.locator('#graph g.node[data-service="currency"]')).to_have_attribute(
                    "data-health", "bad"
                )
                await _shot(page, tmp_path, "currency-paused.png")
                await row.locator("button.resume").click()
                await expect(row.locator("td.health")).to_have_text("ready", timeout=5_000)
                # Stop is SIGTERM: the supervisor restarts the process as after a crash.
                ads = page.locator('#processes tr[data-process="ads"]')
                await ads.locator("button.stop").click()
                await expect(ads.locator("td.restarts")).to_have_text("1", timeout=15_000)
                await expect(ads.locator("td.health")).to_have_text("ready", timeout=15_000)

                await page.click('nav button[data-tab="events"]')
                await expect(page.locator("#event-list tbody tr").first).to_be_visible()
                await _shot(page, tmp_path, "events.png")
                await page.click('nav button[data-tab="catalog"]')
                await page.click('details.service[data-service="currency"] summary')
                method = page.locator('[data-method="currency.supported_currencies"]')
                await method.locator("button.call").click()
                await expect(method.locator("pre.result")).to_contain_text("200 in")
                await _shot(page, tmp_path, "catalog.png")
                trace_id = await method.locator("pre.result a").inner_text()
                await method.locator("pre.result a").click()  # to the trace view of that call
                await expect(page.locator("#waterfall")).to_contain_text(trace_id)
                # The order's trace: from the storefront over HTTP, then its events over MQTT.
                await page.locator("#trace-list a", has_text="POST /order").first.click()
                await expect(page.locator("#waterfall .bar.http").first).to_be_visible()
                await expect(page.locator("#waterfall .bar.mqtt").first).to_be_visible()
                await _shot(page, tmp_path, "trace.png")
            finally:
                await browser.close()
    finally:
        _stop(runner)


async def _shot(page: Any, tmp_path: Path, name: str) -> None:
    await page.screenshot(path=str(tmp_path / name), full_page=True)
    shutil.copy(tmp_path / name, ARTIFACTS / name)


def test_the_commands_the_docs_show_are_the_ones_this_module_runs() -> None:
    section = (ROOT / "docs" / "observability.md").read_text().split("## Dashboard", 1)[1]
    block = section.split("```", 2)[1].strip().splitlines()
    run, status = (shlex.split(line.split("#", 1)[0]) for line in block)
    assert run[:3] == ["archipel", "run", SHOP[0]] and sorted(run[3:]) == sorted(SHOP_OPTIONS)
    assert status == ["archipel", "status", "--json"]  # as _dashboard_of runs it
    assert (ROOT / "docs" / "img" / "dashboard.png").stat().st_size > 10_000


# -- a service in another language --------------------------------------------------------

NODE_SHIPPING = ROOT / "examples" / "boutique" / "shipping-node"


@pytest.fixture
def node_shop(tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """`archipel run` of the shop with shipping run by Node.js (``[external.shipping]``): the
    dashboard's URL and the status, once every process is ready."""
    node = shutil.which("node")
    assert node and (NODE_SHIPPING / "node_modules").is_dir(), "run scripts/setup.sh (Node.js, npm ci)"
    (tmp_path / "archipel.toml").write_text(
        f'app = "{ROOT / SHOP[0]}"\nmode = "microservices"\nbroker = "embedded"\nport = 0\n'
        f'[external.shipping]\ncommand = ["{node}", "src/main.js"]\ncwd = "{NODE_SHIPPING}"\n'
    )
    state = tmp_path / "state"
    runner = subprocess.Popen(
        [sys.executable, "-m", "archipel", "run", "--quiet", "--state-dir", str(state),
         "--data-dir", str(state / "data")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url, status = _dashboard_of(state, runner)
        (shipping,) = [p for p in status["processes"] if p["name"] == "shipping"]
        assert Path(f"/proc/{shipping['pid']}/exe").resolve().name.startswith("node")
        yield url, status
    finally:
        output = _stop(runner)
    assert runner.returncode == 0, output


@pytest.mark.timeout(120)
async def test_a_service_in_another_language_is_in_the_catalog_callable_and_traced(
    node_shop: tuple[str, dict[str, Any]],
) -> None:
    """The catalog shows the Node.js shipping's methods and events from the app's declarations (it
    serves no documents), a call from the catalog reaches it, and the call's trace holds the span
    the Node.js process recorded."""
    url, _ = node_shop
    async with aiohttp.ClientSession() as web:
        async with web.get(url + "api/catalog") as response:
            catalog = {s["name"]: s for s in (await response.json())["services"]}
        assert catalog["shipping"]["documents"] == "declared"
        assert catalog["checkout"]["documents"] == "served"
        methods = {m["name"]: m for m in catalog["shipping"]["methods"]}
        assert set(methods) == {"get_quote", "ship_order"}
        assert {"address", "items"} <= set(methods["get_quote"]["request"]["properties"])
        channels = {(e["action"], e["channel"]) for e in catalog["shipping"]["events"]}
        assert {("receive", "boutique/orders/placed"), ("send", "boutique/orders/shipped")} <= channels

        address = {
            "street_address": "1 Quai",
            "city": "Lyon",
            "state": "",
            "country": "FR",
            "zip_code": "69002",
        }
        body = {"address": address, "items": [{"product_id": "camp-mug", "quantity": 2}]}
        call = {"service": "shipping", "method": "get_quote", "body": body}
        async with web.post(url + "api/call", json=call) as response:
            answer = await response.json()
        assert answer["status"] == 200 and answer["answer"]["currency_code"] == "USD", answer

        async def trace() -> dict[str, Any]:
            async with web.get(url + f"api/traces/{answer['trace_id']}") as response:
                return dict(await response.json()) if response.status == 200 else {}

        found = await _until(trace, lambda t: bool(t.get("span_list")), 10)
        (span,) = found["span_list"]
        assert (span["name"], span["kind"], span["process"]) == (
            "shipping.get_quote",
            "server",
            "shipping",
        )
