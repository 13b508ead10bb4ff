"""The shop's public surface: its storefront, and nothing internal, in both topologies.

From the storefront's port nobody lists card digits (``payment.list_transactions``) or customer
addresses (``email.list_sent``); in microservices, those services' own ports refuse a caller
without a credential; and the storefront's mail page shows a visitor only their own mail.
"""

from __future__ import annotations

import re

import httpx
from boutique.app import app

from archipel.testing import Topology, run_app
from tests.boutique.buyer import checkout_form, eventually

INTERNAL = [("payment", "list_transactions"), ("email", "list_sent"), ("cart", "get_cart")]


async def test_the_storefront_answers_nothing_internal(archipel_topology: Topology) -> None:
    async with (
        run_app(app, archipel_topology) as shop,
        httpx.AsyncClient(base_url=shop.url_of("frontend")) as web,
    ):
        for service, method in INTERNAL:
            refused = await web.post(f"/{service}/{method}", json={"limit": 5, "user_id": "u"})
            assert refused.status_code == 404, (service, refused.text)
            if archipel_topology.mode == "microservices":
                own = await web.post(
                    f"{shop.url_of(service)}/{service}/{method}", json={"limit": 5, "user_id": "u"}
                )
                assert own.status_code == 401 and own.headers["www-authenticate"].startswith("Bearer")
        for path in ("/metrics", "/openapi.json"):
            assert (await web.get(path)).status_code == 401
        assert (await web.get("/")).status_code == 200  # the pages are the public surface


async def test_the_mail_page_shows_a_visitor_only_their_own_mail(archipel_topology: Topology) -> None:
    async with (
        run_app(app, archipel_topology) as shop,
        httpx.AsyncClient(base_url=shop.url_of("frontend"), follow_redirects=True) as buyer,
        httpx.AsyncClient(base_url=shop.url_of("frontend"), follow_redirects=True) as stranger,
    ):
        await buyer.post("/basket/add", data={"product_id": "camp-mug", "quantity": "1"})
        form_page = await buyer.get("/basket")
        found = re.search(r'name="order_id" value="([0-9a-f]+)"', form_page.text)
        assert found, form_page.text
        placed = await buyer.post(
            "/order", data={**checkout_form("private@example.org"), "order_id": found.group(1)}
        )
        assert placed.status_code == 200, placed.text
        order_id = found.group(1)

        async def mine() -> str:
            return (await buyer.get("/mail")).text

        await eventually(mine, lambda text: "private@example.org" in text and order_id in text, within=30)
        for params in ({}, {"order": order_id}):
            page = await stranger.get("/mail", params=params)
            assert page.status_code == 200
            assert "private@example.org" not in page.text and f'data-order="{order_id}"' not in page.text
