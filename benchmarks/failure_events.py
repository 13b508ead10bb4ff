"""The shop's own outcome of its events, for ``benchmarks/failure.py``: an order placed through
the storefront, and whether the mailer sent both of its mails (confirmation, after OrderPlaced;
shipped, after shipping's OrderShipped), read from the mailer's store on disk as it runs."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from archipel._state import open_store

MAILER = "email"  # the service whose outcome (an order's mails) shows events survived
ORDER_ID = re.compile(r'name="order_id" value="([0-9a-f]+)"')
ORDER_FORM = {
    "email": "failure@example.org",
    "street_address": "12 Harbour Lane",
    "zip_code": "PO1 3AX",
    "city": "Portsmouth",
    "state": "",
    "country": "United Kingdom",
    "card_number": "4111 1111 1111 1111",
    "card_month": "12",
    "card_year": "2099",
    "card_cvv": "123",
}


async def place_order(edge: str, timeout: float) -> str | None:
    """A buyer's order through the storefront (basket, then the checkout form with the order id
    the basket page carries); its id, or None when the storefront refused it."""
    jar = aiohttp.CookieJar(unsafe=True)  # 127.0.0.1 is an IP address
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=timeout)) as web:
        try:
            async with web.post(edge + "/basket/add", data={"product_id": "camp-mug", "quantity": "1"}) as r:
                if r.status != 200:
                    return None
            async with web.get(edge + "/basket") as r:
                found = ORDER_ID.search(await r.text())
            if found is None:
                return None
            async with web.post(edge + "/order", data={**ORDER_FORM, "order_id": found.group(1)}) as r:
                return found.group(1) if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None


async def mailed(data: Path, orders: list[str | None], since: float, within: float) -> dict[str, Any]:
    """Whether the orders accepted around a kill got both their mails within ``within`` seconds,
    and how long after ``since`` (a ``time.perf_counter()``: the kill) the last one was seen."""
    accepted = [o for o in orders if o is not None]
    wanted = {(o, kind) for o in accepted for kind in ("confirmation", "shipped")}
    found: set[tuple[str, str]] = set()
    deadline = time.perf_counter() + within
    while not wanted <= found and time.perf_counter() < deadline:
        with contextlib.suppress(Exception):  # the store may be busy, or not made yet: read again
            found = await _mails(data)
        if not wanted <= found:
            await asyncio.sleep(0.1)
    return {
        "orders_placed": len(orders),
        "orders_accepted": len(accepted),
        "orders_mailed": sum((o, "confirmation") in found and (o, "shipped") in found for o in accepted),
        "mailed_after_s": round(time.perf_counter() - since, 2) if wanted <= found else None,
    }


async def _mails(data: Path) -> set[tuple[str, str]]:
    store = open_store(MAILER, data_dir=data)
    await store.open()
    try:
        rows = await store.scan("mail_by_order", limit=100_000)
    finally:
        await store.close()
    mails = [msgspec.json.decode(raw) for _, raw in rows]
    return {(m["order_id"], m["kind"]) for m in mails}
