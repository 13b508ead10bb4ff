"""Tracing: one checkout in the shop is one trace across every process it touches; /traces is
guarded like /metrics; spans leave by OTLP when OTEL_* says so; a bad traceparent starts a trace."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from archipel._deploy.supervisor import free_port
from archipel.testing import RunningApp, run_app

SHOP = Path(__file__).resolve().parents[1] / "examples" / "boutique"
if str(SHOP) not in sys.path:  # the shop imports as the package ``boutique`` (as tests/boutique has it)
    sys.path.insert(0, str(SHOP))

from boutique.app import app as shop_app  # noqa: E402

from tests.boutique.buyer import checkout_form  # noqa: E402
from tests.boutique.test_boutique_e2e import node_shipping  # noqa: E402
from tests.otlp import Collector, otlp_collector  # noqa: E402

pytestmark = pytest.mark.timeout(120)

DIARY = Path(__file__).parent / "apps" / "diary.py"
ORDER_ID_FIELD = re.compile(r'name="order_id" value="([0-9a-f]{16})"')
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"  # the span of whoever sent the first request (not recorded)
HEX32, HEX16 = re.compile(r"[0-9a-f]{32}"), re.compile(r"[0-9a-f]{16}")


async def gathered_trace(shop: RunningApp, trace_id: str) -> list[dict[str, Any]]:
    """The spans of ``trace_id`` from every process's /traces (each process once)."""
    spans: list[dict[str, Any]] = []
    seen: set[str] = set()
    async with httpx.AsyncClient(timeout=10) as http:
        for service in shop.app.specs:
            for url in shop.urls_of(service):
                if url in seen:
                    continue
                seen.add(url)
                answer = await http.get(
                    f"{url}/traces", params={"trace_id": trace_id}, headers=shop.auth_headers(service)
                )
                assert answer.status_code == 200, answer.text
                spans += answer.json()["spans"]
    return spans


def check_contract(span: dict[str, Any]) -> None:
    assert set(span) == {
        "trace_id", "span_id", "parent_id", "name", "kind", "service",
        "start_ns", "end_ns", "status", "attributes",
    }  # fmt: skip
    assert HEX32.fullmatch(span["trace_id"]) and HEX16.fullmatch(span["span_id"])
    assert span["parent_id"] is None or HEX16.fullmatch(span["parent_id"])
    assert span["kind"] in ("server", "client", "producer", "consumer", "internal")
    assert span["status"] in ("ok", "error") and 0 < span["start_ns"] <= span["end_ns"]
    assert all(isinstance(v, str | int | float | bool) for v in span["attributes"].values())


HANDLERS = {"email.send_confirmation", "shipping.ship_placed_order", "cart.empty_after_order"}
LATER = {"checkout.mark_shipped", "email.send_shipping_notice"}  # of OrderShipped, which shipping emits


@pytest.mark.parametrize("topology", ["monolith", "microservices", "microservices-node-shipping"])
async def test_a_checkout_is_one_trace_across_processes(
    topology: str, request: pytest.FixtureRequest
) -> None:
    # The third: shipping is its Node.js implementation, which records and serves spans the same way.
    shape = node_shipping(request) if topology == "microservices-node-shipping" else topology
    async with run_app(shop_app, shape) as shop:
        base = shop.url_of("frontend")
        async with httpx.AsyncClient(base_url=base, follow_redirects=True, timeout=10) as web_client:
            await web_client.post("/basket/add", data={"product_id": "camp-mug", "quantity": "2"})
            form = checkout_form("trace@example.com")
            no_id = await web_client.post("/order", data=form)
            found = ORDER_ID_FIELD.search(no_id.text)
            assert found, no_id.text
            placed = await web_client.post(
                "/order",
                data={**form, "order_id": found.group(1)},
                headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"},
            )
            assert placed.status_code == 200 and "your order is placed" in placed.text

        async with asyncio.timeout(30):  # handlers run after the page answered: wait for their spans
            while not {s["name"] for s in await gathered_trace(shop, TRACE_ID)} >= (HANDLERS | LATER):
                await asyncio.sleep(0.05)
            spans = await gathered_trace(shop, TRACE_ID)

    for span in spans:
        check_contract(span)
    assert {s["trace_id"] for s in spans} == {TRACE_ID}
    by_id = {s["span_id"]: s for s in spans}
    assert len(by_id) == len(spans)  # no span reported twice
    orphans = [s for s in spans if s["parent_id"] not in by_id]
    assert [(s["name"], s["kind"], s["service"], s["parent_id"]) for s in orphans] == [
        ("POST /order", "server", "frontend", CALLER_SPAN)
    ]  # the storefront's page is the root; every other span's parent is in the trace
    names = {(s["kind"], s["name"]) for s in spans}
    publish = next(s for s in spans if s["name"] == "publish orders/placed")
    assert publish["kind"] == "producer" and publish["service"] == "checkout"
    assert publish["attributes"]["messaging.destination.name"] == "orders/placed"
    for handler in HANDLERS:
        span = next(s for s in spans if s["name"] == handler)
        assert span["kind"] == "consumer" and span["parent_id"] == publish["span_id"]
        assert span["attributes"]["messaging.message.id"] == publish["attributes"]["messaging.message.id"]
        assert span["status"] == "ok"
    if topology == "monolith":
        # Local calls make no span: the page, the two publishes and the five handlings.
        assert {s["kind"] for s in spans} == {"server", "producer", "consumer"}
        assert len(spans) == 1 + 2 + len(HANDLERS | LATER)
        assert publish["parent_id"] == orphans[0]["span_id"]
        assert {s["attributes"]["messaging.system"] for s in spans if s["kind"] != "server"} == {"archipel"}
        return
    assert {("client", "checkout.place_order"), ("server", "checkout.place_order")} <= names
    assert {("client", "payment.charge"), ("server", "payment.charge")} <= names
    client = next(s for s in spans if s["name"] == "checkout.place_order" and s["kind"] == "client")
    server = next(s for s in spans if s["name"] == "checkout.place_order" and s["kind"] == "server")
    assert client["service"] == "frontend" and client["parent_id"] == orphans[0]["span_id"]
    assert server["service"] == "checkout" and server["parent_id"] == client["span_id"]
    assert server["attributes"]["rpc.system"] == "archipel"
    assert server["attributes"]["http.response.status_code"] == 200
    assert publish["parent_id"] == server["span_id"]
    charge = next(s for s in spans if s["name"] == "payment.charge" and s["kind"] == "server")
    assert charge["service"] == "payment" and by_id[charge["parent_id"]]["parent_id"] == server["span_id"]
    assert publish["attributes"]["messaging.system"] == "mqtt"
    assert {"frontend", "checkout", "payment", "email", "shipping", "cart"} <= {s["service"] for s in spans}
    quote = next(s for s in spans if s["name"] == "shipping.get_quote" and s["kind"] == "server")
    assert by_id[quote["parent_id"]]["kind"] == "client" and quote["status"] == "ok"
    shipped = next(s for s in spans if s["name"] == "publish orders/shipped")
    assert shipped["kind"] == "producer" and shipped["service"] == "shipping"
    assert by_id[shipped["parent_id"]]["name"] == "shipping.ship_placed_order"
    assert {by_id[s["parent_id"]]["name"] for s in spans if s["name"] in LATER} == {"publish orders/shipped"}


async def test_traces_is_guarded_like_metrics_and_checks_its_query() -> None:
    async with run_app(shop_app, "monolith") as shop:
        base = shop.url_of("frontend")
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            refused = await http.get("/traces")
            assert refused.status_code == 401 and "www-authenticate" in refused.headers
            assert (await http.get("/")).status_code == 200
            auth = shop.auth_headers("frontend")
            answer = await http.get("/traces", params={"limit": "3"}, headers=auth)
            assert answer.status_code == 200
            body = answer.json()
            assert isinstance(body["process"], str) and 1 <= len(body["spans"]) <= 3
            for span in body["spans"]:
                check_contract(span)
            assert body["spans"][-1]["name"] == "GET /"  # newest last
            bad = await http.get("/traces", params={"trace_id": "nope"}, headers=auth)
            assert bad.status_code == 400 and "trace_id must be 32 lower-case hex" in bad.text
            bad = await http.get("/traces", params={"limit": "-1"}, headers=auth)
            assert bad.status_code == 400 and "limit must be a whole number" in bad.text


async def test_open_endpoints_opens_traces() -> None:
    async with run_app(shop_app, "monolith", open_endpoints=["traces"]) as shop:
        http = httpx.AsyncClient(base_url=shop.url_of("frontend"), timeout=10)
        async with http:
            answer = await http.get("/traces", params={"limit": "0"})
            assert answer.status_code == 200 and answer.json()["spans"] == []
            assert (await http.get("/metrics")).status_code == 401  # only what was named


# --- One worker of the diary app, as a deployer starts it ---------------------------------------


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    async with otlp_collector() as kept:
        yield kept


def diary_worker(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIPEL_", "OTEL_"))}
    environment.update(
        ARCHIPEL_APP=f"{DIARY}:app",
        ARCHIPEL_PROCESS="diary",
        ARCHIPEL_HOST="127.0.0.1",
        ARCHIPEL_PORT=str(port),
        ARCHIPEL_DATA_DIR=str(tmp_path),
        **env,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "archipel.worker"], env=environment, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


async def ready(http: httpx.AsyncClient, url: str, process: subprocess.Popen[str]) -> None:
    async with asyncio.timeout(30):
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)  # the worker is starting: poll its readiness


async def test_spans_are_exported_by_otlp_when_the_endpoint_is_set(
    tmp_path: Path, collector: tuple[Collector, str], workers: list[subprocess.Popen[str]]
) -> None:
    kept, endpoint = collector
    process, url = diary_worker(
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_BSP_SCHEDULE_DELAY="50",
        OTEL_SERVICE_NAME="diary-x",
    )
    workers.append(process)
    async with httpx.AsyncClient(timeout=10) as http:
        await ready(http, url, process)
        assert (await http.post(f"{url}/diary/note", json={"text": "hello"})).json() == "hello"
        await kept.wait_for("diary.note")
    assert {path for path, _, _ in kept.requests} == {"/v1/traces"}
    assert {kind for _, kind, _ in kept.requests} == {"application/x-protobuf"}
    message = ExportTraceServiceRequest.FromString(kept.requests[-1][2])
    resource = {a.key: a.value.string_value for a in message.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "diary-x"  # OTEL_SERVICE_NAME wins over ours
    assert resource["archipel.process"] == "diary" and resource["service.namespace"] == "diary"


async def test_a_malformed_traceparent_starts_a_new_trace(
    tmp_path: Path, workers: list[subprocess.Popen[str]]
) -> None:
    process, url = diary_worker(tmp_path)
    workers.append(process)
    async with httpx.AsyncClient(timeout=10) as http:
        await ready(http, url, process)
        for bad in ("00-zzz", f"00-{'0' * 32}-{CALLER_SPAN}-01", "garbage" * 20):
            answer = await http.post(f"{url}/diary/note", json={"text": "x"}, headers={"traceparent": bad})
            assert answer.status_code == 200
        good = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
        assert (
            await http.post(f"{url}/diary/note", json={"text": "y"}, headers={"traceparent": good})
        ).is_success
        spans = (await http.get(f"{url}/traces")).json()["spans"]
    notes = [s for s in spans if s["name"] == "diary.note"]
    assert len(notes) == 4
    fresh, joined = notes[:3], notes[3]
    assert all(s["parent_id"] is None and s["trace_id"] != TRACE_ID for s in fresh)
    assert len({s["trace_id"] for s in fresh}) == 3  # each a trace of its own
    assert (joined["trace_id"], joined["parent_id"], joined["kind"]) == (TRACE_ID, CALLER_SPAN, "server")


async def test_otel_sdk_disabled_keeps_no_spans(tmp_path: Path, workers: list[subprocess.Popen[str]]) -> None:
    process, url = diary_worker(tmp_path, OTEL_SDK_DISABLED="true")
    workers.append(process)
    async with httpx.AsyncClient(timeout=10) as http:
        await ready(http, url, process)
        assert (await http.post(f"{url}/diary/note", json={"text": "x"})).is_success
        answer = (await http.get(f"{url}/traces")).json()
    assert answer == {"process": "diary", "spans": []}


async def test_a_bad_otel_variable_is_named(tmp_path: Path, workers: list[subprocess.Popen[str]]) -> None:
    process, _ = diary_worker(tmp_path, OTEL_TRACES_EXPORTER="zipkin")
    workers.append(process)
    output = process.communicate(timeout=30)[0]
    assert process.returncode != 0 and "OTEL_TRACES_EXPORTER='zipkin': unknown zipkin" in output


# --- docs/observability.md, Tracing ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def tracing_section() -> str:
    return (ROOT / "docs" / "observability.md").read_text().split("## Tracing", 1)[1].split("\n## ", 1)[0]


def test_the_documented_traces_answer_keeps_the_contract() -> None:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", tracing_section(), re.S | re.M)
    answer = json.loads(next(text for language, text in blocks if language == "json"))
    assert set(answer) == {"process", "spans"}
    for span in answer["spans"]:
        check_contract(span)


def test_the_documented_benchmark_runs() -> None:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", tracing_section(), re.S | re.M)
    shell = [text for language, text in blocks if not language]
    commands = [shlex.split(line.split("#", 1)[0]) for line in shell[0].splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["python", "benchmarks/tracing.py"]] * 2
    quick = next(c for c in commands if "--quick" in c)
    result = subprocess.run(
        [sys.executable, *quick[1:], "--out", os.devnull],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| RPC calls/s, 16 callers |" in result.stdout and "| events/s, closed loop |" in result.stdout
    # The paired measure: both workers up at once, blocks of calls alternating between them.
    assert "| paired RPC CPU ms per call, the worker |" in result.stdout, result.stdout
    assert "| of which the consumer (CONSUMER spans) |" in result.stdout, result.stdout
    assert "failed:" not in result.stdout, result.stdout
