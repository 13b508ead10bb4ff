"""The shop on three hosts with addresses of their own, and one host cut off the network.

Linux network namespaces on a bridge (``tests/netns.py``) make the hosts:

- host A: the MQTT broker, Mosquitto with the production settings of the embedded broker
  (``_deploy.mosquitto``) and the deployment's logins and ACL, written by ``archipel broker-auth``;
- host B: the storefront and a replica of every other process of the shop;
- host C: a second replica of every process but the storefront.

Each process starts as a container would: ``python -m archipel.worker`` inside its host's
namespace, with only the variables its manifest would give it (``DeploymentPlan.worker`` and
``worker_environment``), its keyring, and where its state lives. Replicas on two hosts share
their state: the processes whose services keep some (collections, an outbox, an inbox) use the
PostgreSQL of the root namespace, reached through a relay on the bridge's address; the others
keep SQLite files on their host.

The test places orders through the storefront's pages (a product page, the basket, the checkout
form, the mail about the order), then pulls host C's cable (the bridge side of its veth set
down) while customers keep arriving at a steady pace, then plugs it back. It prints (``-s``)
and records as the test's properties (``--junitxml``):

- ``failover_s``: from the cut until the first customer who arrived after it was served (order
  accepted, every page answered); ``every_checkout_succeeds_from_s``: every customer arriving this
  long after the cut, or later, was; asserted within one call's deadline (B's callers left C);
- the checkouts that failed during the failover, by the step that failed, and what B's callers
  logged meanwhile (their membership's verdicts, the errors that ended requests);
- the orders accepted, published (seen by the deployment's observer login on the broker) and
  delivered (their ``OrderPlaced`` handled: the confirmation and the shipping mail sent), while C
  is cut off and in the end; asserted: every accepted order delivered once C is back. While C is
  cut off only part of them are: events the broker hands to C's consumers wait for them in their
  sessions (the broker sees their connections alive until its keep-alive runs out);
- ``rejoin_s``: from the cable back until every replica of C served requests again; asserted
  within 15 s, with no visit failing meanwhile. Reported too: when each of C's event consumers
  handled events again (its broker connection, silent during the cut, resumes at TCP's next
  retransmission, which backs off exponentially while the cable is out).

Runs as root (CI); skipped otherwise. As root, namespaces that cannot be made fail the test.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from archipel._deploy.acl import observer_username
from archipel._events.bus import Envelope
from archipel._events.mqtt import MqttBus
from archipel._resilience.policies import DEFAULT as DEFAULT_POLICY
from archipel._security.secrets import mqtt_password
from tests.conftest import MEASURED
from tests.multihost_shop import (
    BROKER_PORT,
    PG_URL,
    PROBE_INTERVAL,
    Process,
    Shop,
    app,
    build_shop,
    ready,
    running,
    shop_database,
    started,
    three_hosts,
    until,
)
from tests.netns import Host, Network, TcpRelay

DEADLINE = DEFAULT_POLICY.timeout  # every call's deadline (no [policies] here): 10 s
ARRIVAL = 0.2  # seconds between two customers arriving at the shop (open loop: 5 checkouts/s)
CUT_AFTER = 10  # orders accepted in the stream before host C is cut off
STEADY = 15  # checkouts in a row, all successful, that say the callers have moved to host B
REJOIN_CALLS = 3  # requests a replica of C serves after its cable is back: calls reach it again
PRODUCTS = ("camp-mug", "notebook", "beanie", "planter", "tote-bag", "desk-lamp")

pytestmark = [
    pytest.mark.timeout(110),
    pytest.mark.skipif(
        sys.platform != "linux" or os.geteuid() != 0,
        reason="network namespaces need Linux and root (CI runs as root)",
    ),
]


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with shop_database() as name:
        yield name


# -- customers ---------------------------------------------------------------------------------------


@dataclass
class Visit:
    """One customer's visit: a product page, the product into the basket, the checkout form, then
    the mail about the order. Every process of the shop but the storefront serves some of it."""

    order_id: str
    started: float
    finished: float = 0.0
    placed: bool = False  # the checkout form was answered with the order: accepted
    ok: bool = False  # every page of the visit answered
    failed_at: str = ""  # the step that failed: "product", "basket", "order", "mail"
    reason: str = ""


async def shop_visit(http: aiohttp.ClientSession, storefront: str, number: int) -> Visit:
    from tests.boutique.buyer import checkout_form  # the shop's types import once the app is loaded

    visit = Visit(secrets.token_hex(8), time.monotonic())  # the id the rendered form carries
    cookie = {"cookie": f"shop_session={secrets.token_hex(16)}"}  # a new visitor
    product = PRODUCTS[number % len(PRODUCTS)]
    form = {**checkout_form(f"buyer-{visit.order_id}@example.org"), "order_id": visit.order_id}
    steps: list[tuple[str, str, str, dict[str, str] | None, int]] = [
        ("product", "GET", f"/product/{product}", None, 200),
        ("basket", "POST", "/basket/add", {"product_id": product, "quantity": "1"}, 303),
        ("order", "POST", "/order", form, 200),
        ("mail", "GET", f"/mail?order={visit.order_id}", None, 200),
    ]
    for step, method, path, data, expected in steps:
        visit.failed_at = step
        try:
            async with http.request(
                method,
                storefront + path,
                data=data,
                headers=cookie,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=3 * DEADLINE),
            ) as response:
                body = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            visit.reason = f"{step}: {exc!r}"
            break
        if status != expected:
            visit.reason = f"{step}: HTTP {status}"
            break
        if step == "order":
            if f'data-testid="order-id">{visit.order_id}<' not in body:
                visit.reason = "order: the confirmation page does not show the order"
                break
            visit.placed = True
    else:
        visit.ok, visit.failed_at = True, ""
    visit.finished = time.monotonic()
    return visit


class Stream:
    """Customers arriving at a steady pace (an open loop: a slow answer delays no one else)."""

    def __init__(self, http: aiohttp.ClientSession, storefront: str, numbered_from: int) -> None:
        self._http = http
        self._storefront = storefront
        self._next = numbered_from
        self.visits: list[Visit] = []
        self._tasks: list[asyncio.Task[Visit]] = []
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            task = asyncio.create_task(shop_visit(self._http, self._storefront, self._next))
            task.add_done_callback(lambda done: self.visits.append(done.result()))
            self._tasks.append(task)
            self._next += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), ARRIVAL)  # the arrival rate, not a wait

    async def stop(self) -> list[Visit]:
        """No new customer; the ones in the shop finish (each bounded by its requests' timeouts)."""
        self._stop.set()
        if self._runner is not None:
            await self._runner
        await asyncio.gather(*self._tasks)
        return sorted(self.visits, key=lambda v: v.started)

    def accepted(self) -> int:
        return sum(v.placed for v in self.visits)

    def steady_since(self, moment: float) -> bool:
        """The last STEADY finished visits (by arrival), all after ``moment``, all without a failure."""
        done = sorted((v for v in self.visits if v.started > moment), key=lambda v: v.started)
        return len(done) >= STEADY and all(v.ok for v in done[-STEADY:])


# -- what the shop did -----------------------------------------------------------------------------


async def rpc(
    http: aiohttp.ClientSession, shop: Shop, process: Process, method: str, args: dict[str, Any]
) -> Any:
    """``process``'s first service's ``method``, as the operator; None when it does not answer 200."""
    service = process.services[0]
    try:
        async with http.post(
            f"{process.url}/{service}/{method}",
            json=args,
            headers=shop.headers(service),
            timeout=aiohttp.ClientTimeout(total=5),
        ) as response:
            return await response.json() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


async def mails(
    http: aiohttp.ClientSession, shop: Shop, email: Process, orders: set[str]
) -> dict[str, set[str]]:
    """The kinds of mail sent about each order (as the email replica ``email`` reads the shared store)."""
    limit = asyncio.Semaphore(16)

    async def kinds(order_id: str) -> set[str]:
        async with limit:
            sent = await rpc(http, shop, email, "list_sent", {"order_id": order_id, "limit": 10})
        return {mail["kind"] for mail in sent or ()}

    found = await asyncio.gather(*(kinds(order) for order in orders))
    return dict(zip(orders, found, strict=True))


async def wait_delivered(
    http: aiohttp.ClientSession, shop: Shop, email: Process, orders: set[str], within: float
) -> dict[str, set[str]]:
    """Poll until every order of ``orders`` is delivered, or ``within`` passed; the mail of each.

    Delivered: its OrderPlaced was handled, which the mail shows: email sent the confirmation
    (email handled it) and the shipping notice (shipping handled it, then email the OrderShipped)."""
    sent: dict[str, set[str]] = {}
    deadline = time.monotonic() + within
    while True:
        sent |= await mails(http, shop, email, orders - delivered(sent))
        if not orders - delivered(sent) or time.monotonic() > deadline:
            return sent
        await asyncio.sleep(0.25)


def delivered(sent: dict[str, set[str]]) -> set[str]:
    return {order for order, kinds in sent.items() if {"confirmation", "shipped"} <= kinds}


async def activity(http: aiohttp.ClientSession, shop: Shop, process: Process) -> tuple[float, float] | None:
    """What a replica did: the RPC requests it served and the events it handled, from its
    /metrics (as the operator). None while it does not answer."""
    service = process.services[0]
    try:
        async with http.get(
            process.url + "/metrics", headers=shop.headers(service), timeout=aiohttp.ClientTimeout(total=1)
        ) as response:
            if response.status != 200:
                return None
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None

    def total(metric: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric))

    return total("archipel_rpc_requests_total{"), total("archipel_events_handled_total{")


@dataclass
class Observer:
    """The deployment's read-only broker login, watching every event (as archipel.testing does)."""

    placed: dict[str, float] = field(default_factory=dict)  # order id -> when its OrderPlaced passed
    shipped: dict[str, float] = field(default_factory=dict)

    async def record(self, envelope: Envelope) -> None:
        seen = {"orders/placed": self.placed, "orders/shipped": self.shipped}.get(envelope.topic)
        if seen is not None:
            order_id = json.loads(envelope.payload or b"{}").get("order_id", "")
            seen.setdefault(order_id, time.monotonic())


def log_summary(lines: list[str], host: Host) -> dict[str, int]:
    """What a caller logged: its membership's verdicts on ``host``'s replicas, and the errors
    that ended its requests (the call that failed), counted."""
    found = []
    for line in lines:
        if "archipel.membership" in line and f"//{host.address}:" in line:
            found.append(re.sub(r"http://\S+", "<replica>", line.split(": ", 1)[-1]))
        elif line.startswith("archipel._errors."):
            found.append(re.sub(r"\d+(\.\d+)?s\b", "Ns", line.removeprefix("archipel._errors.")))
    return _count(found)


# -- the test ----------------------------------------------------------------------------------------


async def test_three_hosts_one_cut_off_callers_move_to_the_other_host_and_no_accepted_order_is_lost(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with three_hosts() as network:
        await cut_off_and_back(network, database, tmp_path, request)


async def cut_off_and_back(
    network: Network, database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    a, b, c = (network.hosts[name] for name in "abc")
    server = urlsplit(PG_URL)
    relay = TcpRelay(network.gateway, server.hostname or "127.0.0.1", server.port or 5432)
    relay_port = relay.start()
    login = server.netloc.rpartition("@")[0] or "postgres"
    store_url = server._replace(netloc=f"{login}@{network.gateway}:{relay_port}", path=f"/{database}")
    shop = build_shop(network, store_url.geturl(), tmp_path)
    observer = Observer()
    bus = MqttBus(
        f"mqtt://{a.address}:{BROKER_PORT}",
        shop.deployment,
        client_id=f"{shop.deployment}-test-observer-{os.getpid()}",
        durable=False,
        username=observer_username(shop.deployment),
        password=mqtt_password(shop.secret.encode(), observer_username(shop.deployment)),
    )
    bus.observe(observer.record)
    storefront = shop.replica("frontend", b).url
    email_b = shop.replica("email", b)  # the mail store is shared: B's replica reads all of it
    callers = [shop.replica("frontend", b), shop.replica("checkout", b)]  # B's callers of C
    c_workers = shop.on(c)
    report: dict[str, object] = {}
    try:
        async with aiohttp.ClientSession() as http, running(shop, http), started(bus):
            print(
                f"\nmultihost: broker on A {a.address}; storefront and {len(shop.on(b)) - 1} processes "
                f"on B {b.address}; {len(c_workers)} on C {c.address}; "
                f"PostgreSQL via {network.gateway}:{relay_port}"
            )

            # Orders through B's storefront, whose calls go to the replicas of B and C.
            warm = await asyncio.gather(*(shop_visit(http, storefront, n) for n in range(8)))
            assert all(v.ok for v in warm), [v.reason for v in warm if not v.ok]
            warm_orders = {v.order_id for v in warm}
            assert delivered(await wait_delivered(http, shop, email_b, warm_orders, 30)) == warm_orders

            # Customers keep arriving; host C's cable is pulled in the middle of the stream.
            stream = Stream(http, storefront, numbered_from=100)
            stream.start()

            async def accepted_some() -> bool:
                return stream.accepted() >= CUT_AFTER

            await until(accepted_some, 30, f"{CUT_AFTER} orders accepted before the cut")
            logged = {w.label: w.log_size() for w in callers}
            network.cut(c)
            cut_at = time.monotonic()

            async def steady() -> bool:
                waited = time.monotonic() - cut_at > DEADLINE + 2 * PROBE_INTERVAL  # the stuck ones ended
                return waited and stream.steady_since(cut_at)

            with contextlib.suppress(AssertionError):  # judged below, with the numbers
                await until(steady, DEADLINE + 12, "the stream steady again after the cut")
            visits = await stream.stop()
            after = [v for v in visits if v.started >= cut_at]
            failed = [v for v in visits if not v.ok and v.finished >= cut_at]
            # From when on every customer got their order: the callers had left C's replicas.
            recovered = next((v.started for i, v in enumerate(after) if all(w.ok for w in after[i:])), None)
            recovery = recovered - cut_at if recovered is not None else float("inf")
            accepted = warm_orders | {v.order_id for v in visits if v.placed}
            report |= {
                "failover_s": round(
                    min((v.finished - cut_at for v in after if v.ok), default=float("inf")), 2
                ),
                "every_checkout_succeeds_from_s": round(recovery, 2),
                "checkouts_started_during_cut": len(after),
                "failed_checkouts_during_failover": len(failed),
                "failed_checkouts_by_step": _count(_short(v.reason) for v in failed),
                "slowest_failed_checkout_s": round(
                    max((v.finished - v.started for v in failed), default=0), 2
                ),
            }

            # C still cut off: the accepted orders' events, handled by B's email and shipping?
            sent = await wait_delivered(http, shop, email_b, accepted, 8)
            stuck = accepted - delivered(sent)
            report |= {
                "orders_published_while_c_cut": f"{len(accepted & set(observer.placed))}/{len(accepted)}",
                "orders_delivered_while_c_cut": f"{len(accepted) - len(stuck)}/{len(accepted)}",
                "mail_missing_while_c_cut": _count(
                    f"no {kind}"
                    for order in stuck
                    for kind in ("confirmation", "shipped")
                    if kind not in sent[order]
                ),
                "logged_on_b_during_cut": {
                    w.label: log_summary(w.lines_since(logged[w.label]), c) for w in callers
                },
            }

            # The cable back: C's replicas must take calls again, with customers still arriving.
            logged = {w.label: w.log_size() for w in callers}
            stream = Stream(http, storefront, numbered_from=10_000)
            network.restore(c)
            restored_at = time.monotonic()
            stream.start()
            first: dict[str, tuple[float, float]] = {}
            rejoined: dict[str, float] = {}  # served calls again: the callers of B chose it again
            consuming: dict[str, float] = {}  # handled events again (its broker connection resumed)
            consumers = {w.label for w in c_workers if any(app.specs[s].handlers for s in w.services)}

            async def all_rejoined() -> bool:
                counts = await asyncio.gather(*(activity(http, shop, w) for w in c_workers))
                for worker, count in zip(c_workers, counts, strict=True):
                    if count is None:
                        continue
                    if worker.label not in first:
                        first[worker.label] = count  # its first answer once the cable is back
                        continue
                    since = time.monotonic() - restored_at
                    if count[0] >= first[worker.label][0] + REJOIN_CALLS:
                        rejoined.setdefault(worker.label, since)
                    if count[1] > first[worker.label][1] and worker.label in consumers:
                        consuming.setdefault(worker.label, since)
                return len(rejoined) == len(c_workers) and set(consuming) == consumers

            async def c_ready() -> bool:
                return all(await asyncio.gather(*(ready(http, w) for w in c_workers)))

            c_ready_after = await until(c_ready, 10, "C's replicas ready again")
            with contextlib.suppress(AssertionError):  # judged below, with the numbers
                await until(all_rejoined, 15, "every replica of C taking calls and events again", every=0.25)
            visits = await stream.stop()
            accepted |= {v.order_id for v in visits if v.placed}
            failed_after_restore = [v for v in visits if not v.ok]
            report |= {
                "c_ready_after_restore_s": round(c_ready_after, 2),
                "rejoin_s": round(max(rejoined.values()), 2) if len(rejoined) == len(c_workers) else None,
                "rejoin_by_replica_s": {k: round(v, 2) for k, v in sorted(rejoined.items())},
                "events_handled_again_by_replica_s": {k: round(v, 2) for k, v in sorted(consuming.items())},
                "checkouts_after_restore": len(visits),
                "failed_checkouts_after_restore": _count(_short(v.reason) for v in failed_after_restore),
                "logged_on_b_after_restore": {
                    w.label: log_summary(w.lines_since(logged[w.label]), c) for w in callers
                },
            }

            # Every accepted order's OrderPlaced handled, eventually.
            done = delivered(await wait_delivered(http, shop, email_b, accepted, 20))
            checkout_b = shop.replica("checkout", b)
            refused = {v.order_id for v in failed if v.failed_at == "order"}  # the buyer saw an error
            placed_anyway = [
                o for o in refused if await rpc(http, shop, checkout_b, "get_order", {"order_id": o})
            ]
            report |= {
                "orders_accepted": len(accepted),
                "orders_published": len(accepted & set(observer.placed)),
                "orders_delivered": len(done & accepted),
                "failed_checkouts_placed_anyway": len(placed_anyway),
            }
    finally:
        with contextlib.suppress(Exception):
            network.restore(c)  # C's workers then stop cleanly
        relay.stop()
        request.node.user_properties.extend(report.items())  # in --junitxml's report
        keys = ("failover_s", "failed_checkouts_during_failover", "orders_accepted", "orders_delivered")
        request.node.user_properties.append((MEASURED, ", ".join(f"{k} {report.get(k)}" for k in keys)))
        print("multihost results:\n" + "\n".join(f"  {key}: {value}" for key, value in report.items()))

    undelivered = accepted - done
    assert not undelivered, f"{len(undelivered)} accepted orders never handled: {sorted(undelivered)[:10]}"
    assert recovery <= DEADLINE, (
        f"customers still failed {recovery:.1f}s after host C was cut off, longer than a call's "
        f"deadline ({DEADLINE:.0f}s): {report}"
    )
    assert len(rejoined) == len(c_workers), f"C's replicas did not all take calls again: {report}"
    assert not failed_after_restore, f"checkouts failed while C rejoined: {report}"


def _short(reason: str) -> str:
    return re.sub(r"\s+", " ", reason)[:100]


def _count(items: Iterable[str]) -> dict[str, int]:
    return dict(collections.Counter(items))
