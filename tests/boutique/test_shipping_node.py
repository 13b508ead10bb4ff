"""The shipping service written for Node.js (examples/boutique/shipping-node) against the Python one:
the same answers to the same calls (refusals included), the same credentials checks, the same
events over a real Mosquitto, seen by archipel's own bus and dispatcher, and /metrics that the
dashboard's own parser reads. Both run as real processes; its Dockerfile is read.

Needs node (>= 20) and the package's dependencies (``npm ci`` in examples/boutique/shipping-node,
done by scripts/setup.sh).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import msgspec
import pytest
from boutique.app import app
from boutique.shipping import tracking_id
from boutique.types import Address, CartItem, Money, OrderItem, OrderPlaced, OrderShipped
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from archipel._dashboard.metrics import event_rates, parse
from archipel._deploy.acl import broker_users, write_acl_file, write_password_file
from archipel._deploy.children import free_port
from archipel._deploy.environment import WorkerSpec, worker_environment
from archipel._deploy.mosquitto import find_mosquitto, write_config
from archipel._events.bus import Envelope
from archipel._events.dispatch import DeadLetter, Dispatcher
from archipel._events.mqtt import MqttBus
from archipel._model import HandlerSpec
from archipel._security.keyring import (
    KEYRING_VAR,
    Keyring,
    edge_key,
    keyring_for,
    mqtt_username,
    scrape_token,
)
from archipel._security.secrets import mqtt_password
from archipel._security.tokens import Signer, sign
from tests.otlp import otlp_collector

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "examples" / "boutique" / "shipping-node"
NODE = shutil.which("node")
SECRET = b"shipping-node-test-secret-0123456789"
WAIT = 20.0

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


@dataclass
class Service:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_until(condition: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def ready(url: str, process: subprocess.Popen[bytes], log: Path) -> Callable[[], bool]:
    def check() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            return httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    return check


def start(command: list[str], env: dict[str, str], log: Path, port: int) -> Service:
    with log.open("wb") as out:
        # stdin stays open: a Python worker that follows its supervisor stops at its EOF.
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(ready(url, process, log), what=f"{command[-1]} ready")
    except BaseException:
        process.kill()
        process.wait(10)
        raise
    return Service(url, process, log)


def stop(service: Service) -> None:
    if service.process.stdin is not None:
        service.process.stdin.close()
    if service.process.poll() is None:
        service.process.terminate()
        try:
            service.process.wait(15)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait(10)


def base_env(deployment: str, port: int, keyring: Keyring) -> dict[str, str]:
    """The variables a supervisor gives the shipping process, written by the same function
    (``worker_environment``), so both implementations are held to the one contract."""
    spec = WorkerSpec(
        app="boutique.app:app",
        name="shipping",
        services=["shipping"],
        host="127.0.0.1",
        port=port,
        deployment=deployment,
        version="v-test",
        drain=2.0,
        supervisor_pid=os.getpid(),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIPEL_")}
    env.update(worker_environment(spec), PYTHONPATH=str(ROOT / "examples" / "boutique"))
    env[KEYRING_VAR] = msgspec.json.encode(keyring).decode()
    return env


@pytest.fixture(scope="module")
def deployment() -> str:
    return f"shipnode{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def node_shipping(
    archipel_mosquitto_url: str, deployment: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    if not (PACKAGE / "node_modules" / "mqtt").is_dir():
        pytest.fail(f"{PACKAGE}/node_modules is missing: run scripts/setup.sh (npm ci there)")
    port = free_port()
    env = base_env(deployment, port, keyring_for(app, deployment, "shipping", ["shipping"], [SECRET]))
    env.update(ARCHIPEL_BROKER=archipel_mosquitto_url, ARCHIPEL_BROKER_LOGIN="0")
    log = tmp_path_factory.mktemp("node") / "shipping-node.log"
    service = start([str(NODE), str(PACKAGE / "src" / "main.js")], env, log, port)
    yield service
    stop(service)


@pytest.fixture(scope="module")
def python_shipping(deployment: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The Python shipping worker, without a broker: the reference for the RPC answers."""
    port = free_port()
    env = base_env(deployment, port, keyring_for(app, deployment, "shipping", ["shipping"], [SECRET]))
    env["ARCHIPEL_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    log = tmp_path_factory.mktemp("python") / "shipping-python.log"
    service = start([sys.executable, "-m", "archipel.worker"], env, log, port)
    yield service
    stop(service)


def headers_of(deployment: str, caller: str = "checkout") -> dict[str, str]:
    signer = Signer(keyring_for(app, deployment, caller, [caller], [SECRET]))
    header = signer.header(caller, "shipping")
    assert header is not None
    return {"authorization": header}


def answer(response: httpx.Response) -> tuple[int, Any]:
    return response.status_code, response.json()


# --- (a) the same answers, refusals included ----------------------------------------------------

BLANKS = "\t\n\x0b\x0c\r\x1c\x1f \x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
line = st.one_of(
    st.text(alphabet=st.sampled_from(BLANKS), max_size=3),
    st.text(st.characters(codec="utf-8"), max_size=12),
)
address = st.one_of(
    st.fixed_dictionaries(
        {
            "street_address": line,
            "city": line,
            "state": st.text(max_size=5).filter(lambda s: s.isprintable()),
            "country": line,
            "zip_code": line,
        }
    ),
    st.fixed_dictionaries({"street_address": line, "city": st.integers(0, 3)}),
    st.none(),
)
product_id = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=6),
    st.sampled_from(["", "a\x00b", "x" * 64, "x" * 65, "\U0001f600", "\uffff", "OLJCESPC7Z"]),
)
quantity = st.one_of(st.integers(-1, 102), st.sampled_from([1.0, 2.5, "3", True, None, 10**20]))
item = st.one_of(
    st.fixed_dictionaries({"product_id": product_id, "quantity": quantity}),
    st.fixed_dictionaries({"product_id": product_id}),
    st.integers(0, 1),
)
arguments = st.fixed_dictionaries(
    {"address": address, "items": st.lists(item, max_size=4)},
    optional={"order_id": st.one_of(st.text(max_size=16), st.integers(0, 9)), "extra": st.just([1])},
)


@pytest.mark.timeout(300)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["get_quote", "ship_order"]), args=arguments)
def test_answers_equal_the_python_service(
    node_shipping: Service, python_shipping: Service, deployment: str, method: str, args: dict[str, Any]
) -> None:
    body = json.dumps(args, ensure_ascii=False).encode()
    headers = {**headers_of(deployment), "content-type": "application/json"}
    expected = answer(httpx.post(f"{python_shipping.url}/shipping/{method}", content=body, headers=headers))
    got = answer(httpx.post(f"{node_shipping.url}/shipping/{method}", content=body, headers=headers))
    assert got == expected, body


@pytest.mark.timeout(120)
def test_tracking_ids_and_quotes_are_those_of_shipping_py(node_shipping: Service, deployment: str) -> None:
    where = Address("1 Rue de la Paix", "Paris", "", "France", "75002")
    items = [CartItem("b\u00e9", 2), CartItem("\U0001f600", 1), CartItem("\uffff", 3), CartItem("a", 1)]
    args = {"address": msgspec.to_builtins(where), "items": msgspec.to_builtins(items), "order_id": "0123"}
    got = httpx.post(f"{node_shipping.url}/shipping/ship_order", json=args, headers=headers_of(deployment))
    assert got.status_code == 200 and got.json() == tracking_id(where, items, "0123")
    got = httpx.post(f"{node_shipping.url}/shipping/get_quote", json=args, headers=headers_of(deployment))
    assert msgspec.convert(got.json(), Money) == Money("USD", 9, 490_000_000)


@pytest.mark.timeout(60)
def test_probes_report_the_process(node_shipping: Service) -> None:
    readyz = httpx.get(f"{node_shipping.url}/readyz").json()
    assert readyz == {
        "ready": True,
        "draining": False,
        "version": "v-test",
        "services": ["shipping"],
        "pid": node_shipping.process.pid,
    }
    assert httpx.get(f"{node_shipping.url}/healthz").json() == {"status": "ok"}
    wrong = httpx.get(f"{node_shipping.url}/shipping/get_quote")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


# --- (b) credentials ------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_credentials_are_checked_as_archipel_checks_them(
    node_shipping: Service, python_shipping: Service, deployment: str
) -> None:
    args = {"address": {"street_address": "s", "city": "c", "state": "", "country": "FR", "zip_code": "1"}}
    args["items"] = [{"product_id": "p", "quantity": 1}]  # type: ignore[assignment]
    expiry = int(time.time()) + 60
    checkout = edge_key(SECRET, deployment, "checkout", "shipping")
    cases = {
        "checkout": headers_of(deployment, "checkout"),
        "frontend": headers_of(deployment, "frontend"),
        "none": {},
        "basic": {"authorization": "Basic xyz"},
        "other callee": {"authorization": "Bearer " + sign(checkout, "checkout", "payment", expiry)},
        "forged": {"authorization": "Bearer " + sign(b"k" * 32, "checkout", "shipping", expiry)},
        "expired": {"authorization": "Bearer " + sign(checkout, "checkout", "shipping", expiry - 200)},
        "too long": {"authorization": "Bearer " + sign(checkout, "checkout", "shipping", expiry + 600)},
        "stranger": {
            "authorization": "Bearer "
            + sign(edge_key(SECRET, deployment, "ads", "shipping"), "ads", "shipping", expiry)
        },
    }
    statuses = {}
    for name, headers in cases.items():
        node = httpx.post(f"{node_shipping.url}/shipping/get_quote", json=args, headers=headers)
        python = httpx.post(f"{python_shipping.url}/shipping/get_quote", json=args, headers=headers)
        assert answer(node) == answer(python), name
        assert node.headers.get("www-authenticate") == python.headers.get("www-authenticate"), name
        statuses[name] = node.status_code
    assert statuses == {
        "checkout": 200,
        "frontend": 200,
        "none": 401,
        "basic": 401,
        "other callee": 401,
        "forged": 401,
        "expired": 401,
        "too long": 401,
        "stranger": 403,
    }


# --- (b2) paths of the shop's other services ----------------------------------------------------


@pytest.mark.timeout(60)
def test_paths_of_other_services_are_answered_as_archipel_answers_them(
    node_shipping: Service, python_shipping: Service, deployment: str
) -> None:
    """A path naming another service of the app is 'not served by this process'; one of shipping
    that is no endpoint, or no app service at all, gets archipel's own 404s and 405."""
    cases = [
        ("POST", "/cart/get_cart"),
        ("GET", "/cart/get_cart"),
        ("POST", "/checkout/place_order/"),
        ("POST", "/frontend/home"),
        ("POST", "/cart/nothing"),
        ("POST", "/shipping/nothing"),
        ("POST", "/shipping/nothing/"),
        ("POST", "/shipping/get_quote/"),
        ("DELETE", "/shipping/get_quote"),
        ("POST", "/cart"),
        ("POST", "/cart/get_cart/x"),
        ("POST", "/shop/get_cart"),
        ("POST", "/metrics"),
        ("GET", "/"),
    ]
    headers = headers_of(deployment)
    got = {}
    for method, path in cases:
        node = httpx.request(method, node_shipping.url + path, json={}, headers=headers)
        python = httpx.request(method, python_shipping.url + path, json={}, headers=headers)
        assert answer(node) == answer(python), (method, path)
        assert node.headers.get("allow") == python.headers.get("allow"), (method, path)
        got[method, path] = node.json()["error"]["message"]
    assert got["POST", "/cart/get_cart"] == "service 'cart' is not served by this process"
    assert got["DELETE", "/shipping/get_quote"] == "use POST for /shipping/get_quote"


# --- (b3) /metrics ---------------------------------------------------------------------------------

SERVED = ("archipel_rpc_requests", "archipel_rpc_duration_seconds", "archipel_process_info")
PROCESS = ("process_cpu_seconds", "process_resident_memory_bytes", "process_start_time_seconds")


def families(text: str) -> dict[str, tuple[str, set[frozenset[str]], set[str]]]:
    """By family: its type, the label names of its samples (bucket bounds aside), and its bounds."""
    out = {}
    for family in text_string_to_metric_families(text):
        labels = {frozenset(sample.labels) - {"le"} for sample in family.samples}
        bounds = {sample.labels["le"] for sample in family.samples if "le" in sample.labels}
        out[family.name] = (family.type, labels, {str(float(b)) for b in bounds})
    return out


@pytest.mark.timeout(60)
def test_metrics_are_guarded_as_archipel_guards_them(
    node_shipping: Service, python_shipping: Service, deployment: str
) -> None:
    expiry = int(time.time()) + 60

    def token(caller: str, callee: str) -> dict[str, str]:
        key = edge_key(SECRET, deployment, caller, callee)
        return {"authorization": "Bearer " + sign(key, caller, callee, expiry)}

    cases = {
        "scrape": {"authorization": "Bearer " + scrape_token(SECRET, deployment)},
        "operator": token("operator", "shipping"),
        "none": {},
        "other deployment": {"authorization": "Bearer " + scrape_token(SECRET, deployment + "x")},
        "operator of payment": token("operator", "payment"),
        "checkout": token("checkout", "shipping"),
        "basic": {"authorization": "Basic " + scrape_token(SECRET, deployment)},
    }
    statuses = {}
    for name, headers in cases.items():
        node = httpx.get(f"{node_shipping.url}/metrics", headers=headers)
        python = httpx.get(f"{python_shipping.url}/metrics", headers=headers)
        assert node.status_code == python.status_code, name
        if node.status_code != 200:
            assert node.json() == python.json(), name
            assert node.headers["www-authenticate"] == python.headers["www-authenticate"], name
        statuses[name] = node.status_code
    assert statuses == {
        "scrape": 200,
        "operator": 200,
        "none": 401,
        "other deployment": 401,
        "operator of payment": 401,
        "checkout": 401,
        "basic": 401,
    }


@pytest.mark.timeout(60)
def test_metric_families_are_those_of_the_python_worker(
    node_shipping: Service, python_shipping: Service, deployment: str
) -> None:
    """The same names, types, label names and buckets for what both serve, and the process
    metrics under the names of Python's client."""
    headers = {"authorization": "Bearer " + scrape_token(SECRET, deployment)}
    args = {"address": msgspec.to_builtins(PARIS), "items": [{"product_id": "p", "quantity": 1}]}
    for service in (node_shipping, python_shipping):
        call = httpx.post(f"{service.url}/shipping/get_quote", json=args, headers=headers_of(deployment))
        assert call.status_code == 200
    node = families(httpx.get(f"{node_shipping.url}/metrics", headers=headers).text)
    python = families(httpx.get(f"{python_shipping.url}/metrics", headers=headers).text)
    for name in SERVED:
        assert node.get(name) == python.get(name), name
    for name in PROCESS:
        assert node[name][0] == python[name][0], name
    assert node["archipel_rpc_duration_seconds"][2] == {
        str(float(b)) for b in (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
    } | {"inf"}
    for name in ("archipel_events_handled", "archipel_events_published", "archipel_events_acked"):
        assert node.get(name, ("counter",))[0] == "counter", name
    assert "archipel_calls" not in node  # the callers' series: shipping calls no one


@pytest.mark.timeout(90)
async def test_metrics_count_what_happened(archipel_mosquitto_url: str, tmp_path: Path) -> None:
    """After a few calls and one OrderPlaced, the dashboard's own parser reads in /metrics the
    counts that happened, and its event rates show shipping handling orders/placed."""
    deployment = f"shipmet{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = base_env(deployment, port, keyring_for(app, deployment, "shipping", ["shipping"], [SECRET]))
    env.update(ARCHIPEL_BROKER=archipel_mosquitto_url, ARCHIPEL_BROKER_LOGIN="0")
    command = [str(NODE), str(PACKAGE / "src" / "main.js")]
    service = await asyncio.to_thread(start, command, env, tmp_path / "node.log", port)
    scrape_headers = {"authorization": "Bearer " + scrape_token(SECRET, deployment)}
    checkout = MqttBus(archipel_mosquitto_url, deployment, f"{deployment}-checkout", durable=False)
    await checkout.start()
    try:
        async with httpx.AsyncClient(base_url=service.url, headers=headers_of(deployment)) as http:

            async def scrape() -> str:
                response = await http.get("/metrics", headers=scrape_headers)
                assert response.status_code == 200, response.text
                return response.text

            before = parse(await scrape(), time.monotonic(), ["shipping"])
            args = {"address": msgspec.to_builtins(PARIS), "items": [{"product_id": "p", "quantity": 1}]}
            for _ in range(3):
                assert (await http.post("/shipping/get_quote", json=args)).status_code == 200
            assert (await http.post("/shipping/ship_order", json=args)).status_code == 200
            assert (await http.post("/shipping/ship_order", json={"items": []})).status_code == 422
            refused = await http.post("/shipping/get_quote", json=args, headers={"authorization": ""})
            assert refused.status_code == 401
            await checkout.publish(
                Envelope(
                    topic="orders/placed",
                    type="OrderPlaced",
                    source="/boutique/checkout",
                    event=placed("3333333333333333"),
                )
            )
            handled = ("archipel_events_acked_total", (("topic", "orders/placed"),))
            text = await scrape()
            deadline = time.monotonic() + WAIT
            while parse_all(text).get(handled, 0) < 1:  # acknowledged: handled and published before
                assert time.monotonic() < deadline, text
                await asyncio.sleep(0.05)
                text = await scrape()
            after = parse(text, time.monotonic(), ["shipping"])

        samples = parse_all(text)
        requests = {
            (labels["method"], labels["status"]): value
            for (name, key), value in samples.items()
            if name == "archipel_rpc_requests_total"
            for labels in [dict(key)]
        }
        assert requests == {
            ("get_quote", "200"): 3,
            ("get_quote", "401"): 1,
            ("ship_order", "200"): 1,
            ("ship_order", "422"): 1,
        }
        counts = {
            dict(key)["method"]: value
            for (name, key), value in samples.items()
            if name == "archipel_rpc_duration_seconds_count"
        }
        assert counts == {"get_quote": 3, "ship_order": 1}  # reached the handler
        handler = (("handler", "ship_placed_order"), ("service", "shipping"))
        assert {
            labels: value
            for (name, labels), value in after.samples.items()
            if name == "archipel_events_handled_total"
        } == {
            (*handler[:1], ("outcome", "dead"), *handler[1:]): 0,
            (*handler[:1], ("outcome", "ok"), *handler[1:]): 1,
            (*handler[:1], ("outcome", "retried"), *handler[1:]): 0,
        }
        assert after.samples[("archipel_events_published_total", (("topic", "orders/shipped"),))] == 1
        assert not any(name.startswith("archipel_call") for name, _ in after.samples)
        rates = event_rates([(before, after)], {("shipping", "ship_placed_order"): "orders/placed"})
        assert rates["orders/placed"]["handled:shipping"] > 0
        assert rates["orders/placed"]["dead:shipping"] == 0
        assert rates["orders/shipped"]["published"] > 0
        for name in ("process_cpu_seconds_total", *PROCESS[1:]):
            assert samples[(name, ())] > 0, name

        # No credential, or one for another service: 401.
        key = edge_key(SECRET, deployment, "operator", "payment")
        other = {"authorization": "Bearer " + sign(key, "operator", "payment", int(time.time()) + 60)}
        async with httpx.AsyncClient(base_url=service.url) as bare:
            refusals = [await bare.get("/metrics"), await bare.get("/metrics", headers=other)]
        for response in refusals:
            assert response.status_code == 401
            assert response.json() == {
                "error": {
                    "kind": "unauthenticated",
                    "message": "this endpoint needs the scrape token or an operator credential",
                }
            }
    finally:
        await checkout.stop()
        stop(service)


def parse_all(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition (prometheus_client's parser: it also checks the
    whole text is well formed)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# --- (c) events -----------------------------------------------------------------------------------

PARIS = Address("1 Rue de la Paix", "Paris", "", "France", "75002")


def placed(order_id: str, where: Address = PARIS) -> OrderPlaced:
    usd = Money("USD", 10, 0)
    items = [OrderItem("OLJCESPC7Z", "Sunglasses", 2, usd), OrderItem("66VCHSJNUP", "Tank top", 1, usd)]
    return OrderPlaced(order_id, "user-1", "buyer@example.com", items, usd, usd, where, "tx-1")


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s"
        await asyncio.sleep(0.02)


@pytest.mark.timeout(90)
async def test_order_placed_yields_order_shipped(
    node_shipping: Service, archipel_mosquitto_url: str, deployment: str
) -> None:
    shipped: list[tuple[OrderShipped, Envelope]] = []
    refused: list[DeadLetter] = []
    dead: list[Envelope] = []

    async def got(event: OrderShipped) -> None:
        shipped.append((event, current[0]))

    current: list[Envelope] = []

    async def on_dead(envelope: Envelope, letter: DeadLetter) -> None:
        refused.append(letter)

    async def no_publish(envelope: Envelope) -> None:
        return None

    # An archipel subscriber of OrderShipped that checks source, type, time and payload (the
    # email service's view: only shipping may emit it).
    dispatcher = Dispatcher(no_publish, [], allowed_sources=app.emitters(), on_dead=on_dead)
    spec = HandlerSpec(service="email", name="got", event_type=OrderShipped)
    handle = dispatcher.handler(SimpleNamespace(got=got), spec)  # type: ignore[arg-type]

    async def receive(envelope: Envelope) -> None:
        current[:] = [envelope]
        await handle(envelope)

    async def observe(envelope: Envelope) -> None:
        if envelope.topic.startswith("$dead/"):
            dead.append(envelope)

    consumer = MqttBus(
        archipel_mosquitto_url, deployment, f"{deployment}-probe-{uuid.uuid4().hex[:6]}", durable=False
    )
    consumer.subscribe("email", "orders/shipped", receive)
    consumer.observe(observe)
    checkout = MqttBus(archipel_mosquitto_url, deployment, f"{deployment}-checkout-test", durable=False)
    await consumer.start()
    await checkout.start()
    try:
        order = placed("0123456789abcdef")
        traceparent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
        await checkout.publish(
            Envelope(
                topic="orders/placed",
                type="OrderPlaced",
                source="/boutique/checkout",
                traceparent=traceparent,
                event=order,
            )
        )
        await until(lambda: len(shipped) >= 1 or bool(refused))
        assert not refused, refused
        event, envelope = shipped[0]
        items = [CartItem(i.product_id, i.quantity) for i in order.items]
        assert event == OrderShipped(
            order.order_id, order.email, tracking_id(PARIS, items, order.order_id), PARIS
        )
        assert (envelope.type, envelope.source) == ("OrderShipped", "/boutique/shipping")
        assert (
            envelope.traceparent is not None
            and envelope.traceparent.split("-")[1] == traceparent.split("-")[1]
        )
        assert len(envelope.id) == 32

        # Refused events go to the dead letters, and the process goes on.
        blank = placed("fedcba9876543210", Address(" ", "Paris", "", "France", "75002"))
        await checkout.publish(
            Envelope(topic="orders/placed", type="OrderPlaced", source="/boutique/checkout", event=blank)
        )
        await checkout.publish(
            Envelope(topic="orders/placed", type="OrderPlaced", source="/boutique/email", event=order)
        )
        await checkout.publish(
            Envelope(
                topic="orders/placed", type="OrderPlaced", source="/boutique/checkout", payload=b"{not json"
            )
        )
        await until(lambda: len(dead) >= 3)
        letters = [msgspec.json.decode(d.payload or b"", type=DeadLetter) for d in dead]
        reasons = sorted(letter.reason for letter in letters)
        assert reasons[0] == "InvalidArgument: address is missing: street_address", reasons
        assert reasons[1].startswith("invalid payload: "), reasons
        assert "may not publish on topic 'orders/placed'" in reasons[2], reasons
        assert {(d.type, d.source) for d in dead} == {("DeadLetter", "/boutique/shipping")}
        assert {letter.handler for letter in letters} == {"shipping.ship_placed_order"}
        assert node_shipping.process.poll() is None

        # Still shipping after them.
        again = placed("00000000000000aa")
        await checkout.publish(
            Envelope(topic="orders/placed", type="OrderPlaced", source="/boutique/checkout", event=again)
        )
        await until(lambda: any(e.order_id == again.order_id for e, _ in shipped))
    finally:
        await checkout.stop()
        await consumer.stop()


@pytest.mark.timeout(90)
async def test_order_placed_while_down_is_shipped_on_return(
    archipel_mosquitto_url: str, tmp_path: Path
) -> None:
    """A durable session: an OrderPlaced sent while the service is down is shipped once it is back."""
    deployment = f"shipdur{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = base_env(deployment, port, keyring_for(app, deployment, "shipping", ["shipping"], [SECRET]))
    env.update(ARCHIPEL_BROKER=archipel_mosquitto_url, ARCHIPEL_BROKER_LOGIN="0")
    command = [str(NODE), str(PACKAGE / "src" / "main.js")]
    shipped: list[str] = []

    async def got(envelope: Envelope) -> None:
        shipped.append(msgspec.json.decode(envelope.payload or b"", type=OrderShipped).order_id)

    consumer = MqttBus(archipel_mosquitto_url, deployment, f"{deployment}-probe", durable=False)
    consumer.subscribe("email", "orders/shipped", got)
    checkout = MqttBus(archipel_mosquitto_url, deployment, f"{deployment}-checkout", durable=False)
    await consumer.start()
    await checkout.start()
    first = await asyncio.to_thread(start, command, env, tmp_path / "first.log", port)
    try:
        stop(first)  # its durable session stays subscribed while it is away
        order = placed("1111111111111111")
        await checkout.publish(
            Envelope(topic="orders/placed", type="OrderPlaced", source="/boutique/checkout", event=order)
        )
        second = await asyncio.to_thread(start, command, env, tmp_path / "second.log", port)
        try:
            await until(lambda: order.order_id in shipped)
        finally:
            stop(second)
    finally:
        await checkout.stop()
        await consumer.stop()


@contextlib.contextmanager
def private_mosquitto(
    folder: Path, password_file: Path, acl_file: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Mosquitto with logins and the ACL file given (SIGHUP re-reads it), until the block ends."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    config = write_config(folder, "127.0.0.1", port, password_file=password_file, acl_file=acl_file)
    with (folder / "mosquitto.log").open("wb") as log:
        process = subprocess.Popen([binary, "-c", str(config)], cwd=folder, stdout=log, stderr=log)
    try:
        wait_until(lambda: _listening(port), what="mosquitto listening")
        yield f"mqtt://127.0.0.1:{port}", process
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@pytest.mark.timeout(120)
async def test_order_placed_is_acknowledged_only_once_order_shipped_is(tmp_path: Path) -> None:
    """With its broker login, under archipel's ACL: while the broker refuses shipping's OrderShipped
    the OrderPlaced stays unacknowledged, so a service killed meanwhile gets it again after its
    restart, and ships it once the broker takes OrderShipped."""
    deployment = "shipack"
    processes = {"shipping": ["shipping"], "checkout": ["checkout"]}
    users = broker_users(app, deployment, processes)
    shipped_topic = f"{deployment}/orders/shipped"
    refusing = [
        replace(u, publish=[t for t in u.publish if t != shipped_topic])
        if u.username == mqtt_username(deployment, "shipping")
        else u
        for u in users
    ]
    passwords = write_password_file(
        tmp_path / "passwords", {u.username: mqtt_password(SECRET, u.username) for u in users}
    )
    acl = write_acl_file(tmp_path / "acl", refusing)
    command = [str(NODE), str(PACKAGE / "src" / "main.js")]
    with private_mosquitto(tmp_path, passwords, acl) as (url, broker):
        port = free_port()
        env = base_env(deployment, port, keyring_for(app, deployment, "shipping", ["shipping"], [SECRET]))
        env["ARCHIPEL_BROKER"] = url  # logs in as shipack.shipping, the keyring's login

        shipped: list[str] = []

        async def got(envelope: Envelope) -> None:
            if envelope.topic == "orders/shipped":
                shipped.append(msgspec.json.decode(envelope.payload or b"", type=OrderShipped).order_id)

        def bus(process: str) -> MqttBus:
            name = mqtt_username(deployment, process)
            password = mqtt_password(SECRET, name)
            return MqttBus(
                url, deployment, f"test-{process}", durable=False, username=name, password=password
            )

        observer = bus("observer")
        observer.observe(got)
        checkout = bus("checkout")
        await observer.start()
        await checkout.start()
        first = await asyncio.to_thread(start, command, env, tmp_path / "first.log", port)
        try:
            order = placed("2222222222222222")
            await checkout.publish(
                Envelope(topic="orders/placed", type="OrderPlaced", source="/boutique/checkout", event=order)
            )
            await until(lambda: "failed on event" in first.output())  # the broker refused OrderShipped
            assert shipped == []
            first.process.kill()  # mid-handling: the OrderPlaced was not acknowledged
            first.process.wait(10)
            write_acl_file(acl, users)  # shipping may publish OrderShipped again
            broker.send_signal(signal.SIGHUP)  # Mosquitto re-reads its ACL file
            second = await asyncio.to_thread(start, command, env, tmp_path / "second.log", port)
            try:
                await until(lambda: order.order_id in shipped)  # lost if acknowledged before
            finally:
                stop(second)
        finally:
            stop(first)
            await checkout.stop()
            await observer.stop()


# --- (d) the process contract ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_sigterm_drains_and_exits_zero(archipel_mosquitto_url: str, tmp_path: Path) -> None:
    deployment = f"shipterm{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = base_env(deployment, port, keyring_for(app, deployment, "shipping", ["shipping"], [SECRET]))
    env.update(ARCHIPEL_BROKER=archipel_mosquitto_url, ARCHIPEL_BROKER_LOGIN="0", ARCHIPEL_DRAIN_DELAY="1")
    service = start([str(NODE), str(PACKAGE / "src" / "main.js")], env, tmp_path / "node.log", port)
    try:
        service.process.send_signal(signal.SIGTERM)
        draining = httpx.get(f"{service.url}/readyz", timeout=2.0)  # within the drain delay
        assert draining.status_code == 503 and draining.json()["draining"] is True
        assert service.process.wait(10) == 0
        assert "stopped" in service.output()
    finally:
        stop(service)


@pytest.mark.timeout(60)
def test_bad_configuration_exits_naming_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIPEL_")}
    for extra, variable in [({}, "ARCHIPEL_KEYRING"), ({"ARCHIPEL_PORT": "http"}, "ARCHIPEL_PORT")]:
        done = subprocess.run(
            [str(NODE), str(PACKAGE / "src" / "main.js")],
            env={**env, **extra},
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert done.returncode != 0 and variable in done.stdout.decode(), done


@pytest.mark.timeout(60)
def test_exits_when_its_supervisor_is_gone(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    port = free_port()
    env = base_env("shipsup", port, Keyring())
    env.update(ARCHIPEL_AUTHENTICATE="0", ARCHIPEL_SUPERVISOR_PID=str(parent.pid))
    service = start([str(NODE), str(PACKAGE / "src" / "main.js")], env, tmp_path / "node.log", port)
    try:
        parent.kill()
        parent.wait(10)
        assert service.process.wait(10) == 0
        assert "supervisor" in service.output()
    finally:
        stop(service)


# --- (e) its image --------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments): comments out, continuations joined."""
    text = (PACKAGE / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.strip().partition(" ") for line in joined.splitlines() if line.strip())
    ]


@pytest.mark.timeout(60)
def test_dockerfile_builds_a_pinned_unprivileged_image_that_gets_its_signals(node_shipping: Service) -> None:
    """No Docker daemon here: the file is read, and its health check run against the service."""
    steps = dockerfile()
    kinds = [kind for kind, _ in steps]
    bases = [args for kind, args in steps if kind == "FROM"]
    assert len(bases) == 1 and bases[0].startswith("node:20") and bases[0].endswith("-slim"), bases
    run = " ".join(args for kind, args in steps if kind == "RUN")
    assert "npm ci --omit=dev" in run and "npm install" not in run, run
    copies = [args for kind, args in steps if kind == "COPY"]
    assert copies[0].split()[:-1] == ["package.json", "package-lock.json"], copies  # lock before npm ci
    users = [args for kind, args in steps if kind == "USER"]
    assert users == ["node"]  # the image's unprivileged user, for what runs after it
    assert kinds.index("USER") < kinds.index("CMD") and kinds.index("RUN") < kinds.index("USER")
    assert [json.loads(args) for kind, args in steps if kind == "CMD"] == [["node", "src/main.js"]]
    assert [args for kind, args in steps if kind == "EXPOSE"] == ["8000"]
    checks = [args for kind, args in steps if kind == "HEALTHCHECK"]
    assert len(checks) == 1 and " CMD [" in checks[0], checks
    probe = json.loads(checks[0].split(" CMD ", 1)[1])
    assert probe[:2] == ["node", "-e"] and "/healthz" in probe[2]
    ignored = (PACKAGE / ".dockerignore").read_text().split()
    assert "node_modules" in ignored and "test" in ignored

    # The health check, run as the image runs it: 0 while the service answers, 1 when nothing does.
    def health(port: str) -> int:
        env = {**os.environ, "ARCHIPEL_PORT": port}
        done = subprocess.run(probe, cwd=PACKAGE, env=env, capture_output=True, timeout=20, check=False)
        return done.returncode

    assert health(node_shipping.url.rsplit(":", 1)[1]) == 0
    assert health(str(free_port())) == 1


# --- (f) the package's own tests ------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_node_unit_tests_pass() -> None:
    done = subprocess.run(
        [str(NODE), "--test", "test/"], cwd=PACKAGE, capture_output=True, timeout=110, check=False
    )
    assert done.returncode == 0, done.stdout.decode()[-4000:]


def _hostile(url: str, head: bytes, timeout: float = 20.0) -> tuple[bytes, float]:
    """What the server at ``url`` answers a client that sends ``head`` and then nothing more,
    and after how many seconds it closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic() - started


def test_hostile_clients_meet_the_limits_of_the_python_worker(
    node_shipping: Service, python_shipping: Service, deployment: str
) -> None:
    credential = headers_of(deployment)["authorization"].encode()
    head = b"POST /shipping/get_quote HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n"
    trickle = head + b"authorization: " + credential + b"\r\n\r\n{"
    stranger = head + b"\r\n{"  # no credential: refused at once, the rest of its body unread
    huge = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-filler: " + b"a" * 20_000 + b"\r\n\r\n"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        slow = {name: pool.submit(_hostile, s.url, trickle) for name, s in
                (("node", node_shipping), ("python", python_shipping))}  # fmt: skip
        big = {name: pool.submit(_hostile, s.url, huge) for name, s in
               (("node", node_shipping), ("python", python_shipping))}  # fmt: skip
        for name, service in (("node", node_shipping), ("python", python_shipping)):
            answer, seconds = _hostile(service.url, stranger)
            assert answer.startswith(b"HTTP/1.1 401") and seconds < 2.0, (name, seconds, answer[:200])
        for name in ("node", "python"):
            answer, seconds = slow[name].result()
            assert answer.startswith(b"HTTP/1.1 408"), (name, answer[:200])
            assert 9.0 < seconds < 13.0, (name, seconds)  # cut off after the worker's 10 s
            answer, seconds = big[name].result()
            assert answer.startswith(b"HTTP/1.1 431"), (name, answer[:200])
            assert seconds < 2.0, (name, seconds)


# --- (e) traces to an OpenTelemetry collector -----------------------------------------------------

IMPLEMENTATIONS = {
    "node": [str(NODE), str(PACKAGE / "src" / "main.js")],
    "python": [sys.executable, "-m", "archipel.worker"],
}


def otel_env(deployment: str, port: int, data: Path, **otel: str) -> dict[str, str]:
    env = base_env(deployment, port, keyring_for(app, deployment, "shipping", ["shipping"], [SECRET]))
    # Started by the test alone: no supervisor to follow (a Python worker would stop at stdin's EOF).
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_") and k != "ARCHIPEL_SUPERVISOR_PID"}
    env.update(ARCHIPEL_DATA_DIR=str(data), **otel)
    return env


def _value(value: Any) -> object:
    return getattr(value, value.WhichOneof("value"))


@pytest.mark.timeout(120)
async def test_spans_go_to_an_otlp_collector_as_the_python_workers_send_them(
    deployment: str, tmp_path: Path
) -> None:
    parent_trace, parent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with otlp_collector() as (kept, endpoint):
        started: dict[str, Service] = {}
        try:
            for name, command in IMPLEMENTATIONS.items():
                port = free_port()
                env = otel_env(
                    deployment, port, tmp_path / name, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                    OTEL_BSP_SCHEDULE_DELAY="50", OTEL_RESOURCE_ATTRIBUTES=f"implementation={name}",
                )  # fmt: skip
                started[name] = await asyncio.to_thread(start, command, env, tmp_path / f"{name}.log", port)
            headers = {**headers_of(deployment), "traceparent": f"00-{parent_trace}-{parent_span}-01"}
            body = {"address": msgspec.to_builtins(PARIS), "items": [{"product_id": "a", "quantity": 1}]}
            async with httpx.AsyncClient(timeout=10) as http:
                for service in started.values():
                    answer = await http.post(f"{service.url}/shipping/get_quote", json=body, headers=headers)
                    assert answer.status_code == 200, answer.text

            def exported() -> dict[str, tuple[dict[str, str], Any]]:
                return {
                    resource["implementation"]: (resource, span)
                    for resource, span in kept.spans()
                    if span.name == "shipping.get_quote" and "implementation" in resource
                }

            async with asyncio.timeout(20):
                while set(exported()) != set(IMPLEMENTATIONS):
                    await kept.arrived.wait()
                    kept.arrived.clear()
        finally:
            for service in started.values():
                await asyncio.to_thread(stop, service)
    assert {kind for _, kind, _ in kept.requests} == {"application/x-protobuf"}
    seen = {}
    for name, (resource, span) in exported().items():
        assert (span.trace_id.hex(), span.parent_span_id.hex()) == (parent_trace, parent_span), name
        ours = {key: resource[key] for key in ("service.name", "service.namespace", "archipel.process")}
        assert ours == {
            "service.name": f"{deployment}.shipping",
            "service.namespace": deployment,
            "archipel.process": "shipping",
        }, name
        seen[name] = (
            span.kind,
            span.status.code,
            {a.key: _value(a.value) for a in span.attributes},
            resource["service.instance.id"],
        )
    assert seen["node"] == seen["python"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("otel", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin': unknown zipkin"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='grpc': archipel exports spans over http/protobuf only",
        ),
    ],
)
def test_a_bad_otel_variable_stops_both_naming_it(
    deployment: str, tmp_path: Path, otel: dict[str, str], named: str
) -> None:
    for name, command in IMPLEMENTATIONS.items():
        env = otel_env(deployment, free_port(), tmp_path / name, **otel)
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert done.returncode != 0 and named in done.stdout + done.stderr, (name, done.stdout, done.stderr)


@pytest.mark.timeout(90)
def test_a_collector_that_is_down_costs_no_call_and_is_reported_once(deployment: str, tmp_path: Path) -> None:
    port = free_port()
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = otel_env(
        deployment, port, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=nowhere, OTEL_BSP_SCHEDULE_DELAY="50"
    )
    service = start(IMPLEMENTATIONS["node"], env, tmp_path / "node.log", port)
    try:
        body = {"address": msgspec.to_builtins(PARIS), "items": [{"product_id": "a", "quantity": 1}]}
        with httpx.Client(timeout=10) as http:
            for _ in range(200):  # several batches, each failing to leave
                answer = http.post(
                    f"{service.url}/shipping/get_quote", json=body, headers=headers_of(deployment)
                )
                assert answer.status_code == 200, answer.text
            # The exporter tries again for a while before it gives a batch up: then the log says so.
            wait_until(
                lambda: "OpenTelemetry: Error: connect ECONNREFUSED" in service.output(), 40, "reported"
            )
            assert service.process.poll() is None
            answer = http.post(f"{service.url}/shipping/get_quote", json=body, headers=headers_of(deployment))
            assert answer.status_code == 200
    finally:
        stop(service)
    assert service.process.returncode == 0, service.output()
    assert service.output().count("OpenTelemetry:") == 1, service.output()  # not a line a batch
