"""Chaos: the shop under load while its processes are killed, frozen and its broker restarted.

Afterwards every order the shop accepted has exactly one charge, one confirmation mail and one
shipment, and the test prints its counts. Bounded for CI; longer runs by hand::

    ARCHIPEL_CHAOS_ORDERS=300 ARCHIPEL_CHAOS_KILLS=60 python -m pytest -s tests/boutique/test_chaos.py
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import pytest
from boutique.app import app
from boutique.cart import Cart
from boutique.checkout import Checkout, new_order_id
from boutique.email import Email
from boutique.payment import Payment
from boutique.types import Order, SentMail, Transaction

from archipel import ArchipelError
from archipel._state import open_store
from archipel.testing import RunningApp, run_app
from tests.boutique.buyer import ADDRESS, GOOD_CARD, checkout_form

ORDERS = int(os.environ.get("ARCHIPEL_CHAOS_ORDERS", "30"))
KILLS = int(os.environ.get("ARCHIPEL_CHAOS_KILLS", "9"))
VICTIMS = ("email", "shipping", "cart", "payment", "checkout")

pytestmark = pytest.mark.timeout(60 + 4 * ORDERS + 10 * KILLS)

T = TypeVar("T")


async def until(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], within: float) -> T:
    """Poll state in other processes until ``done`` holds; a process being restarted may refuse."""
    async with asyncio.timeout(within):
        while True:
            try:
                value = await probe()
                if done(value):
                    return value
            except ArchipelError:
                pass
            await asyncio.sleep(0.05)


class Shopper:
    """Places orders like a patient customer: on any failure, submits the same form again."""

    def __init__(self, running: RunningApp) -> None:
        self.cart = running.client(Cart)
        self.checkout = running.client(Checkout)
        self.accepted: list[Order] = []
        self.resubmissions = 0

    async def order(self, number: int) -> None:
        user = f"chaos-{number}-{uuid.uuid4().hex[:6]}"
        order_id = new_order_id()  # rendered into the checkout form once; resubmits reuse it
        await until(lambda: self.cart.add_item(user, "camp-mug", 1 + number % 3), lambda _: True, 60)
        while True:
            try:
                order = await self.checkout.place_order(
                    order_id, user, "EUR", ADDRESS, f"{user}@example.org", GOOD_CARD
                )
                self.accepted.append(order)
                return
            except ArchipelError:
                self.resubmissions += 1
                await asyncio.sleep(0.2)  # a customer waits a moment before pressing again


async def test_killed_frozen_and_broker_restarted_the_shop_loses_nothing_and_does_nothing_twice(
    tmp_path: Path,
) -> None:
    rng = random.Random(int(os.environ.get("ARCHIPEL_CHAOS_SEED", "7")))
    async with run_app(app, "microservices", data_dir=str(tmp_path), timeout=60) as running:
        shopper = Shopper(running)
        storefront = running.url_of("frontend")
        kills: Counter[str] = Counter()
        broker_restarts: list[int] = []
        supervisor = running._supervisor
        assert supervisor is not None and supervisor.broker is not None

        async def chaos() -> None:
            # Kill pace follows the orders, not the clock: one kill per ORDERS/KILLS accepted.
            for k in range(KILLS):
                due = k * ORDERS // max(1, KILLS)
                await until(lambda: _accepted(shopper), lambda n, due=due: n >= due, 120)
                victim = rng.choice(VICTIMS)
                pid = running.pid_of(victim)
                os.kill(pid, signal.SIGKILL)
                kills[victim] += 1
                await running.wait_restarted(victim, pid, timeout=60)
                if k == KILLS // 2:  # once: the broker goes down and comes back
                    await supervisor.restart_broker(graceful=True)
                    broker_restarts.append(k)

        async def orders() -> None:
            for number in range(ORDERS):
                await shopper.order(number)

        frozen = [running.pid_of("ads"), running.pid_of("recommendation")]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            page_times = await asyncio.gather(orders(), chaos(), _browse(storefront, rng))
            elapsed = time.monotonic() - started
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        slowest_page = max(page_times[2])

        accepted = {order.order_id for order in shopper.accepted}
        email, payment = running.client(Email), running.client(Payment)

        async def mails() -> Counter[tuple[str, str]]:
            sent = await email.list_sent(limit=1000)
            return Counter((m.order_id, m.kind) for m in sent if m.order_id in accepted)

        def all_mailed(found: Counter[tuple[str, str]]) -> bool:
            return all(found[(o, kind)] for o in accepted for kind in ("confirmation", "shipped"))

        sent = await until(mails, all_mailed, 90)
        charges = Counter(
            t.idempotency_key
            for t in await payment.list_transactions(limit=1000)
            if t.idempotency_key in accepted
        )
        shipped = await until(
            lambda: asyncio.gather(*(running.client(Checkout).get_order(o) for o in accepted)),
            lambda orders: all(o.status == "shipped" for o in orders),
            60,
        )
        duplicates = await _duplicates(running)
        dead = await _dead_letters(str(tmp_path))
        confirmed = sum(n for (_, kind), n in sent.items() if kind == "confirmation")
        print(
            f"\nchaos: {len(accepted)} orders accepted in {elapsed:.1f}s "
            f"({shopper.resubmissions} resubmissions), {sum(kills.values())} kills {dict(kills)}, "
            f"broker restarted {len(broker_restarts)}x, ads and recommendation frozen; "
            f"charged {sum(charges.values())}, confirmed {confirmed}, shipped {len(shipped)}, "
            f"duplicates suppressed {duplicates:.0f} (counted since each process's last start), "
            f"dead-lettered {len(dead)}; slowest storefront page {slowest_page:.2f}s"
        )
        assert len(accepted) == ORDERS
        assert charges == Counter({o: 1 for o in accepted})  # nobody charged twice, nobody lost
        assert all(n == 1 for n in sent.values()) and len(sent) == 2 * ORDERS
        assert dead == []


async def _accepted(shopper: Shopper) -> int:
    return len(shopper.accepted)


async def _browse(storefront: str, rng: random.Random) -> list[float]:
    """The home and a product page while ads and recommendations are frozen: timed answers."""
    times: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(6):
            for path in ("/", "/product/camp-mug"):
                started = time.monotonic()
                async with session.get(storefront + path, timeout=aiohttp.ClientTimeout(total=30)) as page:
                    assert page.status == 200, f"{path}: {page.status}"
                times.append(time.monotonic() - started)
    return times


async def _duplicates(running: RunningApp) -> float:
    """Inbox duplicates over every process's /metrics (counted since that process started)."""
    total = 0.0
    async with aiohttp.ClientSession() as session:
        hosts = {url: service for service in app.specs for url in running.urls_of(service)}
        for url, service in hosts.items():
            async with session.get(url + "/metrics", headers=running.auth_headers(service)) as response:
                for line in (await response.text()).splitlines():
                    if line.startswith("archipel_inbox_duplicates_total"):
                        total += float(line.rsplit(" ", 1)[1])
    return total


async def _dead_letters(data_dir: str) -> list[dict[str, object]]:
    """Every dead letter kept in the consumers' stores, as `archipel events dead --json` lists them."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "archipel",
        "events",
        "dead",
        "boutique.app:app",
        "--data-dir",
        data_dir,
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    letters: list[dict[str, object]] = json.loads(out)
    return letters


async def test_the_monolith_killed_under_load_loses_nothing_and_does_nothing_twice(tmp_path: Path) -> None:
    """The monolith has no broker: its outbox is what keeps an accepted order's events alive."""
    orders, kills = max(10, ORDERS // 3), max(3, KILLS // 3)
    state, data = tmp_path / "state", tmp_path / "data"
    runner = _start_monolith(state, data)
    try:
        process = (await _status(state, runner))["processes"][0]
        base = process["url"]
        accepted: list[str] = []

        async def buy(number: int) -> str:
            """A buyer on the storefront (the monolith serves nothing internal): basket, then order,
            pressing again while the killed monolith is down; the form's order id makes it one order."""
            order_id = new_order_id()
            form = {**checkout_form(f"mono-{number}@example.org"), "order_id": order_id}
            # Its own cookies, its own basket (unsafe=True: else aiohttp drops cookies of an IP address).
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as web:
                for path, data in (
                    ("/basket/add", {"product_id": "tea-towel", "quantity": "1"}),
                    ("/order", form),
                ):
                    while True:
                        try:
                            async with web.post(base + path, data=data, timeout=_TIMEOUT) as response:
                                if response.status == 200:
                                    break
                                assert response.status >= 500, await response.text()
                        except (aiohttp.ClientError, TimeoutError):
                            pass
                        await asyncio.sleep(0.2)  # a customer waits a moment before pressing again
            return order_id

        async def shop() -> None:
            for number in range(orders):
                accepted.append(await buy(number))

        async def chaos() -> None:
            for k in range(1, kills + 1):
                await until(lambda: _count(accepted), lambda n, due=k * orders // (kills + 1): n >= due, 120)
                pid = (await _status(state, runner))["processes"][0]["pid"]
                os.kill(pid, signal.SIGKILL)
                await until(lambda: _status(state, runner), lambda s, pid=pid: _restarted(s, pid), 60)

        await asyncio.gather(shop(), chaos())

        async def mailed() -> Counter[tuple[str, str]]:
            sent = await _stored(data, "email", "mail_by_order", SentMail)
            return Counter((m.order_id, m.kind) for m in sent if m.order_id in accepted)

        sent = await until(
            mailed,
            lambda found: all(found[(o, k)] for o in accepted for k in ("confirmation", "shipped")),
            90,
        )
        transactions = await _stored(data, "payment", "transactions", Transaction)
        charges = Counter(t.idempotency_key for t in transactions if t.idempotency_key in accepted)
        by_kind = Counter(kind for (_, kind), n in sent.items() for _ in range(n))
        print(
            f"\nmonolith chaos: {len(accepted)} orders accepted, {kills} kills of the monolith; "
            f"charged {sum(charges.values())}, confirmed {by_kind['confirmation']}, "
            f"shipped {by_kind['shipped']}"
        )
        assert len(accepted) == orders
        assert charges == Counter({o: 1 for o in accepted})
        assert all(n == 1 for n in sent.values()) and len(sent) == 2 * orders
        assert await _dead_letters(str(data)) == []
    finally:
        runner.send_signal(signal.SIGINT)
        runner.communicate(timeout=60)


_TIMEOUT = aiohttp.ClientTimeout(total=10)


async def _stored(data: Path, service: str, collection: str, kind: type[T]) -> list[T]:
    """Every value of a service's collection, read from its store on disk while it runs (SQLite
    lets readers in beside the writer): what a monolith's internal methods would have answered."""
    store = open_store(service, data_dir=data)
    await store.open()
    try:
        rows = await store.scan(collection, limit=100_000)
    finally:
        await store.close()
    return [msgspec.json.decode(raw, type=kind) for _, raw in rows]


def _start_monolith(state: Path, data: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "archipel",
            "run",
            "boutique.app:app",
            "--mode",
            "monolith",
            "--port",
            "0",
            "--state-dir",
            str(state),
            "--data-dir",
            str(data),
            "--quiet",
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def _count(items: list[str]) -> int:
    return len(items)


def _restarted(status: dict[str, Any], old_pid: int) -> bool:
    process = status["processes"][0]
    return bool(process["pid"] != old_pid and process.get("alive", True) and process.get("ready", True))


async def _status(state: Path, runner: subprocess.Popen[str]) -> dict[str, Any]:
    async def read() -> dict[str, Any] | None:
        assert runner.poll() is None, runner.stdout.read() if runner.stdout else ""
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "archipel", "status", "--json", "--state-dir", str(state)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await process.communicate()
        return json.loads(out) if process.returncode == 0 else None

    status = await until(read, lambda s: s is not None, 60)
    assert status is not None
    return status
