"""Errors on the wire, checked with raw HTTP requests: a client cannot tell the topologies apart."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from archipel import DeadlineExceeded, InvalidArgument, NotFound, RemoteError
from archipel.testing import Topology, run_app
from tests.apps.shop import Checkout, Currency, Item, Money, app

LIMIT = 4096


async def post(session: aiohttp.ClientSession, url: str, body: bytes, **headers: str) -> tuple[int, Any]:
    async with session.post(url, data=body, headers={"content-type": "application/json", **headers}) as r:
        return r.status, await r.json(content_type=None)


async def test_wire_errors(archipel_topology: Topology) -> None:
    async with run_app(app, archipel_topology, max_body=LIMIT) as running, aiohttp.ClientSession() as http:
        base = running.url_of("checkout")

        status, body = await post(http, f"{base}/checkout/place_order", b"{not json")
        assert status == 400 and body["error"]["kind"] == "bad_request"

        status, body = await post(
            http, f"{base}/checkout/place_order", b'{"user_id": "u", "email": "e", "items": [{"sku": 1}]}'
        )
        assert status == 422
        assert body["error"]["details"]["path"] == "$.items[0].sku"
        assert body["error"]["service"] == "checkout" and body["error"]["method"] == "place_order"

        status, body = await post(http, f"{base}/checkout/place_order", b'{"user_id": "u", "items": []}')
        assert status == 422 and "email" in body["error"]["message"]

        # An unknown argument is ignored, as a newer caller's would be (docs/evolution.md).
        status, body = await post(http, f"{base}/checkout/echo", b'{"value": {"a": 1}, "coupon": "x"}')
        assert (status, body) == (200, {"a": 1})

        status, body = await post(http, f"{base}/nosuch/thing", b"{}")
        assert status == 404

        status, body = await post(http, f"{base}/checkout/nosuch", b"{}")
        assert status == 404 and "nosuch" in body["error"]["message"]

        status, body = await post(
            http, f"{base}/checkout/echo", b'{"value": {"a": 1, "b": "' + b"x" * LIMIT + b'"}}'
        )
        assert status == 413 and body["error"]["kind"] == "payload_too_large"

        status, body = await post(http, f"{base}/checkout/boom", b'{"message": "kaput"}')
        error_id = body["error"]["details"]["error_id"]
        assert status == 500 and body["error"] == {  # nothing of the exception leaks
            "kind": "internal",
            "message": f"internal error in checkout.boom; error id {error_id} in the service's log",
            "service": "checkout",
            "method": "boom",
            "details": {"error_id": error_id},
        }
        assert "kaput" not in str(body) and "ValueError" not in str(body)

        status, body = await post(
            http, f"{base}/checkout/place_order", b'{"user_id": "u", "email": "e", "items": []}'
        )
        assert status == 422 and body["error"]["kind"] == "invalid_argument"

        status, body = await post(
            http, f"{base}/checkout/nap", b'{"seconds": 5}', **{"x-archipel-timeout-ms": "50"}
        )
        assert status == 504 and body["error"]["kind"] == "deadline_exceeded"

        status, body = await post(http, f"{base}/checkout/echo", b'{"value": {"a": 1}}')
        assert (status, body) == (200, {"a": 1})

        async with http.get(f"{base}/checkout/echo") as response:
            assert response.status == 405 and response.headers["allow"] == "POST"

        for probe in ("/healthz", "/readyz"):
            async with http.get(base + probe) as response:
                assert response.status == 200, probe
        operator = running.auth_headers("checkout")
        for probe in ("/openapi.json", "/metrics"):  # not for anyone: the operator's credential
            async with http.get(base + probe) as response:
                assert response.status == 401, probe
                assert response.headers["www-authenticate"].startswith("Bearer")
            async with http.get(base + probe, headers=operator) as response:
                assert response.status == 200, probe
        async with http.get(base + "/metrics", headers=operator) as response:
            assert (
                'archipel_rpc_requests_total{method="boom",service="checkout",status="500"}'
                in await response.text()
            )


async def test_errors_keep_their_class_in_the_caller(archipel_topology: Topology) -> None:
    async with run_app(app, archipel_topology) as running:
        checkout = running.client(Checkout)
        currency = running.client(Currency)
        with pytest.raises(NotFound, match="unknown currency 'XYZ'"):
            await currency.convert(Money("EUR", 1), to="XYZ")
        with pytest.raises(InvalidArgument, match="at least one item"):
            await checkout.place_order("u", "e@x", [])
        if archipel_topology.mode == "microservices":
            with pytest.raises(RemoteError) as caught:
                await checkout.boom("kaput")
            assert (caught.value.remote_kind, caught.value.http_status) == ("internal", 500)
            assert "kaput" not in str(caught.value)  # the detail stays in the callee's log
        else:
            with pytest.raises(ValueError, match="kaput"):
                await checkout.boom("kaput")
        assert await checkout.place_order("u", "e@x", [Item("a", 1)], to="USD") == "o-u-1"


async def test_caller_deadline_is_enforced_remotely() -> None:
    async with run_app(app, "microservices") as running:
        checkout = running.client(Checkout)
        from archipel import _context

        _context.set_timeout(0.2)
        try:
            with pytest.raises(DeadlineExceeded):
                await checkout.nap(5)
        finally:
            _context.set_timeout(None)
