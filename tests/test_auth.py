"""Who may call what, over raw HTTP against real servers: the public surface, and credentials.

Every refused call is also checked for what it did not do: ``ledger.correct`` (internal, callable
by the operator only) changes a total, and the total stays unset after each refusal.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from archipel._deploy.environment import WorkerSpec, worker_environment
from archipel._deploy.supervisor import free_port
from archipel._runtime import DATA_DIR_VAR
from archipel._security.keyring import OPERATOR, edge_key, scrape_token
from archipel._security.tokens import sign
from archipel.testing import Topology, run_app
from tests.apps.shop import app

ROOT = Path(__file__).resolve().parents[1]
SECRET = "a-test-secret-of-the-deployment-0123456789"
OLD_SECRET = "the-previous-secret-still-accepted-9876543210"


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], token: str | None = None
) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    async with http.post(url, json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


def token(
    caller: str, callee: str, *, secret: str = SECRET, lifetime: float = 60, signed_for: str = ""
) -> str:
    key = edge_key(secret.encode(), app.name, caller, signed_for or callee)
    return sign(key, caller, callee, int(time.time() + lifetime))


async def test_the_monolith_serves_no_internal_method() -> None:
    async with run_app(app, "monolith") as running, aiohttp.ClientSession() as http:
        base = running.url_of("ledger")
        for headers in ({}, running.auth_headers("ledger")):  # not even to the operator
            async with http.post(
                f"{base}/ledger/correct", json={"order_id": "o", "units": 1}, headers=headers
            ) as r:
                assert r.status == 404
                assert "correct" in (await r.json())["error"]["message"]
        assert running.instance(app.services[3]).totals == {}
        status, _ = await post(http, f"{base}/checkout/echo", {"value": {"a": 1}})  # public: served
        assert status == 200


async def test_internal_methods_need_a_valid_credential() -> None:
    env = {"ARCHIPEL_SECRET": SECRET}
    async with run_app(app, "microservices", env=env) as running, aiohttp.ClientSession() as http:
        url = running.url_of("ledger") + "/ledger/correct"
        body = {"order_id": "o-1", "units": 99}
        total = running.url_of("ledger") + "/ledger/total_of"

        async def effect() -> Any:
            return (await post(http, total, {"order_id": "o-1"}, token(OPERATOR, "ledger")))[1]

        refused = {
            "unsigned": (None, 401),
            "garbage": ("not-a-token", 401),
            "forged": (token(OPERATOR, "ledger", secret="someone-else-s-secret-0123456789"), 401),
            "expired": (token(OPERATOR, "ledger", lifetime=-120), 401),
            "too long-lived": (token(OPERATOR, "ledger", lifetime=3600), 401),
            "for another service": (token(OPERATOR, "email"), 401),
            "re-addressed": (token(OPERATOR, "ledger", signed_for="email"), 401),
            "not allowed": (token("checkout", "ledger"), 403),  # checkout does not depend on ledger
        }
        for case, (credential, expected) in refused.items():
            status, answer = await post(http, url, body, credential)
            assert status == expected, (case, answer)
            assert answer["error"]["kind"] == ("unauthenticated" if expected == 401 else "permission_denied")
            assert await effect() is None, f"{case}: executed anyway"

        status, _ = await post(http, url, body, token(OPERATOR, "ledger"))  # the positive control
        assert status == 200 and await effect() == 99

        # A declared dependency may call: checkout -> currency, with checkout's own key.
        status, money = await post(
            http,
            running.url_of("currency") + "/currency/convert",
            {"amount": {"currency": "EUR", "units": 3}, "to": "USD"},
            token("checkout", "currency"),
        )
        assert status == 200 and money["units"] == 6
        # ...and the services' own calls carry theirs: checkout's call to currency succeeds.
        status, order = await post(
            http,
            running.url_of("checkout") + "/checkout/place_order",
            {"user_id": "u", "email": "a@b.c", "items": [{"sku": "s", "quantity": 1}]},
        )
        assert status == 200, order


async def test_two_secrets_are_accepted_during_a_rotation() -> None:
    env = {"ARCHIPEL_SECRET": f"{SECRET},{OLD_SECRET}"}
    async with run_app(app, "microservices", env=env) as running, aiohttp.ClientSession() as http:
        url = running.url_of("ledger") + "/ledger/times_recorded"
        for secret in (SECRET, OLD_SECRET):
            status, _ = await post(http, url, {"order_id": "o"}, token(OPERATOR, "ledger", secret=secret))
            assert status == 200
        status, _ = await post(http, url, {"order_id": "o"}, token(OPERATOR, "ledger", secret="x" * 32))
        assert status == 401


async def test_metrics_and_openapi_need_the_scrape_token_or_are_opened(tmp_path: Any) -> None:
    env = {"ARCHIPEL_SECRET": SECRET}
    async with run_app(app, "microservices", env=env) as running, aiohttp.ClientSession() as http:
        base = running.url_of("ledger")
        scrape = {"authorization": f"Bearer {scrape_token(SECRET.encode(), app.name)}"}
        for path in ("/metrics", "/openapi.json"):
            async with http.get(base + path) as response:
                assert response.status == 401
            async with http.get(
                base + path, headers={"authorization": f"Bearer {token(OPERATOR, 'email')}"}
            ) as r:
                assert r.status == 401  # an operator credential for a service this process does not host
            async with http.get(base + path, headers=scrape) as response:
                assert response.status == 200
            async with http.get(base + path, headers=running.auth_headers("ledger")) as response:
                assert response.status == 200


async def test_opened_endpoints_need_no_credential(archipel_topology: Topology) -> None:
    async with (
        run_app(app, archipel_topology, open_endpoints=["metrics"]) as running,
        aiohttp.ClientSession() as http,
    ):
        base = running.url_of("ledger")
        async with http.get(base + "/metrics") as response:
            assert response.status == 200
        async with http.get(base + "/openapi.json") as response:
            assert response.status == 401  # still closed: only what was named is opened


def test_a_process_with_internal_methods_and_no_secret_refuses_to_start(tmp_path: Path) -> None:
    spec = WorkerSpec(
        app="tests.apps.shop:app", name="currency", services=["currency"], host="127.0.0.1", port=free_port()
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIPEL_")}
    env |= {**worker_environment(spec), DATA_DIR_VAR: str(tmp_path), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "archipel._deploy.worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "serves internal methods but has no credentials" in result.stderr
    assert "ARCHIPEL_SECRET" in result.stderr


async def test_processes_get_their_keys_but_never_the_secret() -> None:
    async with run_app(app, "microservices", env={"ARCHIPEL_SECRET": SECRET}) as running:
        for service in app.specs:
            environ = await asyncio.to_thread(Path(f"/proc/{running.pid_of(service)}/environ").read_bytes)
            assert SECRET.encode() not in environ, service
            assert b"ARCHIPEL_KEYRING=" in environ  # its own keys, handed over by the supervisor


async def test_the_monolith_documents_only_what_it_serves() -> None:
    async with run_app(app, "monolith") as running, aiohttp.ClientSession() as http:
        base = running.url_of("checkout")
        async with http.get(base + "/openapi.json", headers=running.auth_headers("checkout")) as response:
            paths = set((await response.json())["paths"])
    assert "/checkout/place_order" in paths  # public
    assert "/ledger/correct" not in paths and "/currency/convert" not in paths  # internal: not served
