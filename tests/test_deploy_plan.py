"""The deployment plan, the process contract (ARCHIPEL_* variables), the peers a process keeps
current, the drain at SIGTERM, and the control channel of a local cluster."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from archipel import Unavailable
from archipel._deploy.children import free_port
from archipel._deploy.control import ControlError, request, serve_control
from archipel._deploy.environment import (
    BadEnvironment,
    WorkerSpec,
    parse_peers,
    worker_environment,
    worker_spec,
)
from archipel._deploy.plan import deployment_plan
from archipel._deploy.settings import Settings
from archipel._errors import DefinitionError
from archipel._loader import load_app
from archipel._rpc.client import HttpTransport
from archipel._rpc.membership import Membership
from tests.test_cli import ROOT

SHOP = "tests.apps.shop:app"
BOUTIQUE = str(ROOT / "examples" / "boutique" / "boutique" / "app.py") + ":app"


# -- the plan ---------------------------------------------------------------------------------


def test_the_plan_knows_who_calls_whom_and_what_serves_pages() -> None:
    app = load_app(BOUTIQUE)
    plan = deployment_plan(
        BOUTIQUE, app, groups={"storefront": ["frontend", "ads"]}, replicas={"checkout": 2}
    )
    assert plan.callers(plan.process("payment")) == ["checkout"]
    assert plan.callers(plan.process("storefront")) == []
    assert plan.serves_pages(plan.process("storefront")) and not plan.serves_pages(plan.process("cart"))
    assert plan.process_of("ads").name == "storefront" and plan.process("checkout").replicas == 2
    monolith = deployment_plan(BOUTIQUE, app, mode="monolith")
    assert [p.name for p in monolith.processes] == ["monolith"] and not monolith.uses_broker


def test_a_worker_of_the_plan_gets_its_peers_but_not_itself() -> None:
    app = load_app(BOUTIQUE)
    plan = deployment_plan(BOUTIQUE, app, deployment="shop-eu", drain=2.0)
    peers = {s: [f"http://{s}:8000"] for s in app.specs}
    checkout = plan.process("checkout")
    spec = plan.worker(checkout, peers=peers, broker_url="mqtt://broker:1883", instance="c-1")
    assert "checkout" not in spec.peers and spec.peers["payment"] == ["http://payment:8000"]
    assert set(spec.peers) == {"cart", "catalog", "currency", "payment", "shipping"}  # whom it calls
    assert (spec.deployment, spec.drain, spec.broker, spec.instance) == (
        "shop-eu",
        2.0,
        "mqtt://broker:1883",
        "c-1",
    )
    assert spec.internal and spec.authenticate


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"deployment": "Shop EU"}, "deployment 'Shop EU'"),
        ({"groups": {"web": ["frontend", "nope"]}}, "'nope'"),
        ({"replicas": {"checkout": 0}}, "replicas must be at least 1"),
    ],
)
def test_a_bad_plan_is_refused_with_what_is_wrong(change: dict[str, object], named: str) -> None:
    with pytest.raises(DefinitionError, match=named):
        deployment_plan(BOUTIQUE, load_app(BOUTIQUE), **change)  # type: ignore[arg-type]


def test_settings_make_the_plan_and_options_override_them() -> None:
    from archipel._deploy.plan import settings_plan

    settings = Settings(groups={"web": ["frontend"]}, replicas={"web": 2}, port=0, broker="mqtt://b:1883")
    plan = settings_plan(BOUTIQUE, load_app(BOUTIQUE), settings, deployment="other")
    assert (plan.port, plan.broker, plan.deployment, plan.process("web").replicas) == (
        0,
        "mqtt://b:1883",
        "other",
        2,
    )


def test_a_start_resumes_the_replicas_of_the_previous_run() -> None:
    from archipel._deploy.plan import ProcessPlan
    from archipel._deploy.replica_set import replica_set

    plans = [ProcessPlan("web", ("frontend",), 2), ProcessPlan("checkout", ("checkout",), 2)]
    ports = iter(range(9000, 9100))
    previous = {"checkout": [3, 5, 4], "web": "junk"}  # after rollouts, and a damaged entry
    chosen, surplus = replica_set(
        plans, previous, first_port=0, pick_port=lambda: next(ports), shared=["web"]
    )
    assert chosen == {"web": {0: 9000, 1: 9000}, "checkout": {3: 9001, 4: 9002}}
    assert surplus == [("checkout", 5)]
    chosen, surplus = replica_set(plans, {"checkout": [7]}, first_port=8000, pick_port=lambda: 0)
    assert chosen == {"web": {0: 8000, 1: 8001}, "checkout": {7: 8002, 8: 8003}} and surplus == []


# -- the process contract ---------------------------------------------------------------------


def test_the_environment_says_everything_a_worker_spec_says() -> None:
    spec = WorkerSpec(
        app=SHOP,
        name="orders",
        services=["checkout", "currency"],
        host="10.0.0.2",
        port=9000,
        broker="mqtts://broker:8883",
        peers={"payment": ["http://a:1", "http://b:2"], "email": ["https://e:3"]},
        instance="orders-7f9",
        version="v2",
        drain=2.5,
        drain_delay=1.0,
        internal=False,
        open_endpoints=["metrics"],
        policies={"timeout": 3.0},
        durable=False,
    )
    env = worker_environment(spec)
    assert all(key.startswith("ARCHIPEL_") and isinstance(value, str) for key, value in env.items())
    assert worker_spec(env) == spec
    minimal = worker_environment(WorkerSpec(app=SHOP, name="currency", services=["currency"]))
    assert minimal == {"ARCHIPEL_APP": SHOP, "ARCHIPEL_PROCESS": "currency"}  # defaults left out


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("ARCHIPEL_PORT", "eighty", "ARCHIPEL_PORT='eighty'"),
        ("ARCHIPEL_PORT", "70000", "expected a port number"),
        ("ARCHIPEL_PEERS", "cart", "not service=url"),
        ("ARCHIPEL_PEERS", "cart=cart:8000", "must start with http://"),
        ("ARCHIPEL_BROKER", "http://broker", "expected mqtt://"),
        ("ARCHIPEL_DRAIN", "-1", "ARCHIPEL_DRAIN"),
        ("ARCHIPEL_AUTHENTICATE", "maybe", "expected 1 or 0"),
        ("ARCHIPEL_POLICIES", "[1]", "expected a JSON object"),
    ],
)
def test_a_bad_variable_is_named_with_its_value(variable: str, value: str, named: str) -> None:
    env = {"ARCHIPEL_APP": SHOP, "ARCHIPEL_PROCESS": "currency", variable: value}
    with pytest.raises(BadEnvironment, match=named.replace("(", r"\(").replace("[", r"\[")):
        worker_spec(env)


def test_peers_accept_several_lines_and_urls() -> None:
    text = "cart=http://c1:8000, http://c2:8000/\n payment=https://p:8443;;"
    assert parse_peers(text) == {"cart": ["http://c1:8000", "http://c2:8000"], "payment": ["https://p:8443"]}


def test_the_container_entry_point_refuses_a_missing_app_by_name() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIPEL_")} | {"ARCHIPEL_PROCESS": "x"}
    result = subprocess.run(
        [sys.executable, "-m", "archipel.worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "ARCHIPEL_APP is not set" in result.stderr


async def test_a_draining_worker_takes_no_connection_and_sheds_the_ones_it_has(tmp_path: Path) -> None:
    """SIGTERM with a drain delay: the port stops taking connections at once; on a connection it
    already has, the worker still answers, /readyz with 503, each answer closing the connection;
    then it exits, after the delay."""
    port = free_port()
    spec = WorkerSpec(app=SHOP, name="currency", services=["currency"], host="127.0.0.1", port=port)
    spec.drain_delay, spec.drain = 1.5, 1.0
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIPEL_")}
    env |= worker_environment(spec) | {"ARCHIPEL_SECRET": "s" * 32, "ARCHIPEL_DATA_DIR": str(tmp_path)}
    env["PYTHONPATH"] = str(ROOT)
    worker = await asyncio.create_subprocess_exec(sys.executable, "-m", "archipel.worker", env=env)
    try:
        async with aiohttp.ClientSession() as http:
            assert await _status_until(http, f"http://127.0.0.1:{port}/readyz", 200) == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # kept alive
        assert (await _get(reader, writer, "/healthz"))[0] == 200
        worker.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        await _until(lambda: not _accepts(port))
        status, headers, body = await _get(reader, writer, "/readyz")
        assert status == 503 and json.loads(body)["draining"] is True
        assert headers.get("connection") == "close" and await reader.read() == b""
        writer.close()
        code = await asyncio.wait_for(worker.wait(), 15)
        assert time.monotonic() - sent >= 1.4 and code == 0
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[int, dict[str, str], bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:  # chunked
        body = b""
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    return int(head[0].split()[1]), headers, body


async def _status_until(http: aiohttp.ClientSession, url: str, wanted: int, within: float = 30) -> int:
    deadline = time.monotonic() + within
    while True:
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                if response.status == wanted or time.monotonic() > deadline:
                    return response.status
        except aiohttp.ClientError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)  # the worker is starting: poll it


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


# -- membership -------------------------------------------------------------------------------


class Replica:
    """A real HTTP server on 127.0.0.1 that answers /readyz as told."""

    def __init__(self) -> None:
        self.ready = True
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def readyz(_: web.Request) -> web.Response:
            await self.thawed.wait()  # a frozen process answers nothing
            return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)

        async def convert(_: web.Request) -> web.Response:
            await self.thawed.wait()
            return web.json_response({"currency": "USD", "units": 2, "nanos": 0})

        app = web.Application()
        app.router.add_get("/readyz", readyz)
        app.router.add_post("/currency/convert", convert)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def _until(condition: object, within: float = 10.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.02)  # membership changes at its probe interval: poll it


async def test_probes_take_a_replica_out_while_not_ready_and_back_when_ready() -> None:
    one, two = Replica(), Replica()
    await one.start()
    await two.start()
    membership = Membership({"cart": [one.url, two.url]}, interval=0.1)
    async with aiohttp.ClientSession() as session:
        membership.start(session)
        try:
            two.ready = False  # draining or starting
            await _until(lambda: membership.healthy("cart") == [one.url])
            two.ready = True
            await _until(lambda: membership.healthy("cart") == [one.url, two.url])
            back: list[str] = []
            membership.on_back(back.append)
            await one.stop()  # gone: nothing listens
            await _until(lambda: membership.healthy("cart") == [two.url])
            await one.start()  # restarted: announced to the breakers as back in rotation
            await _until(lambda: back == [one.url])
            await one.stop()
            await _until(lambda: membership.healthy("cart") == [two.url])
            await two.stop()
            await _until(lambda: membership.is_down(two.url))
            assert membership.healthy("cart") == [one.url, two.url]  # none healthy: try them all
        finally:
            await membership.close()


async def test_replicas_still_starting_are_not_announced_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """A deployment coming up: peers not ready yet are a DEBUG detail, not a line per peer; once
    a replica has been ready, its leaving and coming back are INFO, and so is one added later."""
    starting, later = Replica(), Replica()
    starting.ready = False
    await starting.start()
    membership = Membership({"cart": [starting.url]}, interval=0.05)
    caplog.set_level(logging.DEBUG, logger="archipel.membership")

    def said(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == level]

    async with aiohttp.ClientSession() as session:
        membership.start(session)
        try:
            await _until(lambda: f"replica {starting.url} is not ready yet" in said(logging.DEBUG))
            starting.ready = True
            await _until(lambda: f"replica {starting.url} is ready: in rotation" in said(logging.DEBUG))
            assert said(logging.INFO) == []
            starting.ready = False
            await _until(
                lambda: f"replica {starting.url} is out of rotation: not ready" in said(logging.INFO)
            )
            starting.ready = True
            await _until(lambda: f"replica {starting.url} is back in rotation" in said(logging.INFO))
            await later.start()
            membership.replace({"cart": [starting.url, later.url]})  # scaled up while running
            await _until(lambda: f"replica {later.url} joins the rotation" in said(logging.INFO))
        finally:
            await membership.close()
            await starting.stop()
            await later.stop()


async def test_the_peers_file_replaces_the_peers_and_a_bad_one_is_ignored(tmp_path: Path) -> None:
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"cart": ["http://a:1"], "checkout": ["http://self:2"]}))
    membership = Membership({"cart": ["http://old:1"]}, peers_file=str(peers), only=["cart"])
    assert membership.endpoints("cart") == ["http://a:1"] and membership.endpoints("checkout") == []
    peers.write_text('{"cart": "http://not-a-list"}')
    membership._read_file()
    assert membership.endpoints("cart") == ["http://a:1"]
    peers.write_text(json.dumps({"cart": ["http://a:1", "http://b:1"]}))
    os.utime(peers, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    membership._read_file()
    assert membership.endpoints("cart") == ["http://a:1", "http://b:1"]


async def test_a_refused_connection_takes_the_replica_out_at_once() -> None:
    from tests.apps.shop import Currency, Money

    live = Replica()
    await live.start()
    dead = f"http://127.0.0.1:{free_port()}"
    transport = HttpTransport({"currency": [dead]})
    spec = load_app(SHOP).spec_of(Currency)
    try:
        with pytest.raises(Unavailable) as caught:
            await transport.proxy(spec).convert(Money("EUR", 1), "USD")
        assert caught.value.never_sent and transport.membership.is_down(dead)
    finally:
        await transport.close()
        await live.stop()


async def test_calls_waiting_on_a_replica_that_stops_answering_its_probes_move_on() -> None:
    """A frozen replica (or a host cut off) holds the calls sent to it; once it fails two probes
    while another replica is healthy, they fail with Unavailable, long before their deadline, so
    the retry policy can send an idempotent one elsewhere."""
    from tests.apps.shop import Currency, Money

    frozen, healthy = Replica(), Replica()
    await frozen.start()
    await healthy.start()
    membership = Membership({"currency": [frozen.url, healthy.url]}, interval=0.2)
    transport = HttpTransport({"currency": [frozen.url, healthy.url]}, membership=membership)
    await transport.start()
    proxy = transport.proxy(load_app(SHOP).spec_of(Currency))
    try:
        for _ in range(2):  # round-robin: one call each; the next goes to the first, then frozen
            assert await proxy.convert(Money("EUR", 1), "USD") == Money("USD", 2)
        frozen.thawed.clear()
        started = time.monotonic()
        with pytest.raises(Unavailable, match="stopped answering its health probes"):
            await proxy.convert(Money("EUR", 1), "USD")
        assert time.monotonic() - started < 2.0  # two probes of 0.2 s, not the 30 s timeout
        assert await proxy.convert(Money("EUR", 1), "USD") == Money("USD", 2)  # the healthy one
    finally:
        frozen.thawed.set()
        await transport.close()
        await frozen.stop()
        await healthy.stop()


# -- the control channel ----------------------------------------------------------------------


async def test_the_control_socket_is_private_and_answers_bad_requests_clearly(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"

    async def handle(message: dict[str, object], progress: object) -> dict[str, object]:
        assert callable(progress)
        progress("working")
        if message.get("command") != "ok":
            raise ValueError(f"unknown command {message.get('command')!r}")
        return {"done": True}

    server = await serve_control(path, handle)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        seen: list[str] = []
        assert await request(path, {"command": "ok"}, seen.append) == {"done": True}
        assert seen == ["working"]
        with pytest.raises(ControlError, match="unknown command 'nope'"):
            await request(path, {"command": "nope"}, seen.append)
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"not json\n")
        assert "bad request" in json.loads(await reader.readline())["error"]
        writer.close()
    finally:
        server.close()
    with pytest.raises(ControlError, match="no running deployment"):
        await request(tmp_path / "none.sock", {}, print)
