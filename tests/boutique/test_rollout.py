"""Rolling updates and live scaling of the running shop, under storefront load, with the real
commands: `archipel run`, then `archipel rollout checkout`, `archipel rollout frontend` (the
edge the buyers talk to) and `archipel scale checkout=N` while buyers browse and order. Not one
request may fail, and every accepted order must be mailed."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from boutique.checkout import new_order_id
from boutique.email import SentMail
from boutique.types import Order

from tests.boutique.buyer import checkout_form
from tests.boutique.test_chaos import _stored, until
from tests.conftest import MEASURED
from tests.test_cli import ROOT, wait_for_status

BUYERS = 4
_TIMEOUT = aiohttp.ClientTimeout(total=10)


class Load:
    """Buyers on the storefront: home page, a product page, a basket, an order; each request
    that does not answer 200 (or does not answer) is a failure, never retried."""

    def __init__(self, storefront: str) -> None:
        self.storefront = storefront
        self.requests = 0
        self.failures: list[str] = []
        self.orders: list[str] = []
        self.stop = asyncio.Event()

    async def buyer(self, number: int) -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as web:
            turn = 0
            while not self.stop.is_set():
                turn += 1
                order_id = new_order_id()
                form = {**checkout_form(f"rollout-{number}-{turn}@example.org"), "order_id": order_id}
                steps: list[tuple[str, str, dict[str, str] | None]] = [
                    ("GET", "/", None),
                    ("GET", "/product/camp-mug", None),
                    ("POST", "/basket/add", {"product_id": "camp-mug", "quantity": "1"}),
                    ("POST", "/order", form),
                ]
                for method, path, data in steps:
                    if not await self._request(web, method, path, data):
                        break
                else:
                    self.orders.append(order_id)

    async def _request(
        self, web: aiohttp.ClientSession, method: str, path: str, data: dict[str, str] | None
    ) -> bool:
        self.requests += 1
        try:
            async with web.request(method, self.storefront + path, data=data, timeout=_TIMEOUT) as response:
                body = await response.text()
                if response.status == 200:
                    return True
                self.failures.append(f"{method} {path}: {response.status} {body[:200]}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failures.append(f"{method} {path}: {type(exc).__name__} {exc}")
        return False


async def archipel(state: Path, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "archipel",
        *args,
        "--state-dir",
        str(state),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    text = output.decode()
    assert process.returncode == 0, text
    return text


def _checkout(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in status["processes"] if p["name"] == "checkout"]


async def test_rollout_and_scaling_of_checkout_under_storefront_load_fail_no_request(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    code = tmp_path / "boutique"
    shutil.copytree(ROOT / "examples" / "boutique" / "boutique", code)  # a copy: the test edits it
    state, data = tmp_path / "state", tmp_path / "data"
    runner = _run(code, state, data)
    try:
        before = wait_for_status(state, runner)
        storefront = next(p["url"] for p in before["processes"] if p["name"] == "frontend")
        (old,) = _checkout(before)
        load = Load(storefront)
        buyers = [asyncio.create_task(load.buyer(n)) for n in range(BUYERS)]
        await until(lambda: _len(load.orders), lambda n: n >= 5, 60)  # the load is flowing

        # A new version of checkout: the code on disk changes, then a rollout replaces it.
        (code / "checkout.py").write_text((code / "checkout.py").read_text() + "\n# version 2\n")
        started, orders_before = time.monotonic(), len(load.orders)
        log = await archipel(state, "rollout", "checkout")
        rollout_seconds = time.monotonic() - started
        orders_during = len(load.orders) - orders_before
        rolled = json.loads(await archipel(state, "status", "--json"))
        (new,) = _checkout(rolled)
        # The edge keeps its address: its replicas share the public port (SO_REUSEPORT).
        (frontend,) = [p for p in rolled["processes"] if p["name"] == "frontend"]
        await archipel(state, "rollout", "frontend")
        await _more_orders(load, 5)
        (edge,) = [
            p
            for p in json.loads(await archipel(state, "status", "--json"))["processes"]
            if p["name"] == "frontend"
        ]
        await archipel(state, "scale", "checkout=3")
        await _more_orders(load, 5)
        scaled = _checkout(json.loads(await archipel(state, "status", "--json")))
        await archipel(state, "scale", "checkout=1")
        await _more_orders(load, 5)
        load.stop.set()
        await asyncio.wait_for(asyncio.gather(*buyers), 30)

        measured = (
            f"rollout of checkout under load: {rollout_seconds:.1f}s, {orders_during} orders during it; "
            f"whole run: {load.requests} requests, {len(load.orders)} orders, "
            f"{len(load.failures)} failed requests"
        )
        print("\n" + measured)
        request.node.user_properties.append((MEASURED, measured))
        assert load.failures == [], load.failures[:5]
        assert "rolled out" in log
        assert new["pid"] != old["pid"] and new["version"] != old["version"], (old, new)
        assert new["health"] == "ready" and new["replica"] > old["replica"]
        assert len(scaled) == 3 and all(p["health"] == "ready" for p in scaled)
        assert edge["url"] == frontend["url"] == storefront and edge["pid"] != frontend["pid"]

        # Every event reached its handlers once, those of the replaced checkout replicas included:
        # OrderPlaced (mailed, shipped), then OrderShipped (mailed, and the order marked shipped).
        async def mailed() -> Counter[tuple[str, str]]:
            sent = await _stored(data, "email", "mail_by_order", SentMail)
            return Counter((m.order_id, m.kind) for m in sent)

        kinds = ("confirmation", "shipped")
        sent = await until(mailed, lambda found: all(found[o, k] for o in load.orders for k in kinds), 60)
        assert all(sent[o, k] == 1 for o in load.orders for k in kinds)

        async def shipped() -> set[str]:
            orders = await _stored(data, "checkout", "orders", Order)
            return {order.order_id for order in orders if order.status == "shipped"}

        await until(shipped, lambda done: done >= set(load.orders), 60)
    finally:
        runner.send_signal(signal.SIGINT)
        runner.communicate(timeout=60)


def _run(code: Path, state: Path, data: Path) -> subprocess.Popen[str]:
    """`archipel run` with no options but free ports and the test's folders: the default path."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "archipel", "run", f"{code}/app.py:app", "--port", "0", "--quiet"),
            *("--state-dir", str(state), "--data-dir", str(data)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def _more_orders(load: Load, count: int) -> None:
    target = len(load.orders) + count
    await until(lambda: _len(load.orders), lambda n: n >= target, 60)


async def _len(items: list[str]) -> int:
    return len(items)


async def test_a_rollout_whose_new_code_does_not_start_keeps_the_old_replicas_serving(tmp_path: Path) -> None:
    code = tmp_path / "boutique"
    shutil.copytree(ROOT / "examples" / "boutique" / "boutique", code)
    state, data = tmp_path / "state", tmp_path / "data"
    runner = _run(code, state, data)
    try:
        (old,) = _checkout(wait_for_status(state, runner))
        (code / "checkout.py").write_text((code / "checkout.py").read_text() + "\ndef broken(:\n")
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "archipel", "rollout", "checkout", "--state-dir", str(state)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
        )
        output = (await asyncio.wait_for(process.communicate(), 120))[0].decode()
        assert process.returncode == 1, output
        assert "checkout#1 exited with code" in output and "SyntaxError" in output, output
        (still,) = _checkout(json.loads(await archipel(state, "status", "--json")))
        assert (still["pid"], still["health"]) == (old["pid"], "ready")
        peers = json.loads((data / "peers.json").read_text())
        assert peers["checkout"] == [old["url"]]

        # New code that calls a service checkout never called needs new credentials: refused.
        fixed = (code / "checkout.py").read_text().replace("def broken(:", "")
        assert "from . import money\n" in fixed
        calling_ads = fixed.replace("    cart: Cart\n", "    cart: Cart\n    ads: Ads\n", 1)
        money = "from . import money\n"
        calling_ads = calling_ads.replace(money, money + "from .ads import Ads\n")
        (code / "checkout.py").write_text(calling_ads)
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "archipel", "rollout", "checkout", "--state-dir", str(state)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
        )
        output = " ".join((await asyncio.wait_for(process.communicate(), 120))[0].decode().split())
        assert process.returncode == 1 and "checkout now calls ads" in output, output
        assert "restart `archipel run`" in output, output

        # Fixed, it rolls out; and the next start resumes the new replica's MQTT session.
        (code / "checkout.py").write_text(fixed)
        await archipel(state, "rollout", "checkout")
        (new,) = _checkout(json.loads(await archipel(state, "status", "--json")))
        runner.send_signal(signal.SIGINT)
        runner.communicate(timeout=60)
        runner = _run(code, state, data)
        (again,) = _checkout(wait_for_status(state, runner))
        assert new["replica"] == again["replica"] != old["replica"]
    finally:
        runner.send_signal(signal.SIGINT)
        runner.communicate(timeout=60)


def test_the_commands_docs_deploy_shows_are_the_ones_this_module_runs() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text[text.index("## Local cluster: rolling updates and scaling") :]
    block = section.split("```shell\n", 1)[1].split("```", 1)[0]
    shown = [line.split()[1:] for line in block.splitlines()]
    run = [["status"], ["rollout", "checkout"], ["scale", "checkout=3"], ["scale", "checkout=1"]]
    run.append(["rollout", "frontend"])
    assert sorted(shown) == sorted(run)
