"""Ads and recommendations are optional for the storefront: with both frozen (SIGSTOP), the home
and product pages still answer, without them, within the default deadline; once they are thawed
and the breakers' cool-down has passed, the ads come back. Default policies throughout."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
from boutique.app import app
from prometheus_client.parser import text_string_to_metric_families

from archipel._resilience.policies import DEFAULT, Policies
from archipel.testing import run_app

pytestmark = pytest.mark.timeout(120)

POLICIES = Policies.from_config(None, app)  # the defaults the shop runs with, @rpc options included
DEADLINE = DEFAULT.timeout  # the default deadline of a call
ADS_TIMEOUT = POLICIES.method("ads", "get_ads").timeout  # @rpc(timeout=...) in ads.py
COOLDOWN = POLICIES.service("ads").breaker_cooldown


async def timed_get(web: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await web.get(path)
    return response, time.monotonic() - started


async def fallbacks_used(web: httpx.AsyncClient, service: str, reason: str = "") -> float:
    """The storefront's own count of calls to ``service`` answered by a fallback (for ``reason``:
    "deadline" when the call waited its timeout out, "breaker" when it was not even sent). ``web``
    carries the operator's credential: /metrics is not for anyone."""
    text = (await web.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "archipel_fallbacks_total"
        and sample.labels["service"] == service
        and reason in ("", sample.labels["reason"])
    )


async def test_pages_answer_without_frozen_ads_and_recommendations() -> None:
    assert ADS_TIMEOUT == POLICIES.method("recommendation", "list_recommendations").timeout < DEADLINE
    async with (
        run_app(app, "microservices") as shop,
        httpx.AsyncClient(base_url=shop.url_of("frontend"), timeout=2 * DEADLINE) as web,
        httpx.AsyncClient(
            base_url=shop.url_of("frontend"), headers=shop.auth_headers("frontend")
        ) as operator,
    ):
        home, _ = await timed_get(web, "/")
        assert home.status_code == 200 and 'class="ad"' in home.text
        frozen = [shop.pid_of("ads"), shop.pid_of("recommendation")]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            times: list[float] = []
            for _ in range(8):
                home, home_time = await timed_get(web, "/")
                page, page_time = await timed_get(web, "/product/camp-mug")
                assert home.status_code == 200 and 'class="ad"' not in home.text
                assert page.status_code == 200 and "Enamel Camp Mug" in page.text
                assert 'class="ad"' not in page.text and "You may also like" not in page.text
                times += [home_time, page_time]
            print(f"\npages with ads and recommendation frozen (s): {', '.join(f'{t:.3f}' for t in times)}")
            assert max(times) < DEADLINE  # never the default deadline, let alone a hang
            assert (
                await fallbacks_used(operator, "ads") >= 16
                and await fallbacks_used(operator, "recommendation") >= 8
            )
            # The breakers opened after a few timeouts: since then, no page waits for the frozen two.
            waited = [await fallbacks_used(operator, s, "deadline") for s in ("ads", "recommendation")]
            for _ in range(2):
                await web.get("/")
                await web.get("/product/camp-mug")
            assert [
                await fallbacks_used(operator, s, "deadline") for s in ("ads", "recommendation")
            ] == waited
            assert await fallbacks_used(operator, "ads", "breaker") > 0
            assert sum(times[-4:]) / 4 < ADS_TIMEOUT, times
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        thawed = time.monotonic()
        async with asyncio.timeout(COOLDOWN + 15):
            while 'class="ad"' not in (await web.get("/")).text:
                await asyncio.sleep(0.1)  # the breaker lets a probe through once the cool-down ends
            print(f"ads back {time.monotonic() - thawed:.1f} s after SIGCONT (cool-down {COOLDOWN:g} s)")
            while "You may also like" not in (await web.get("/product/camp-mug")).text:
                await asyncio.sleep(0.1)
