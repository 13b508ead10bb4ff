"""A real browser walks through the shop (monolith): home, product, basket, checkout, confirmation,
mail, order history.

Uses Debian's Chromium at /usr/bin/chromium (never downloads one); skipped when it is missing.
Leaves screenshots in ``test-artifacts/``.
"""

from __future__ import annotations

import datetime
import re
import shutil
from pathlib import Path

import pytest
from boutique.app import app
from boutique.types import OrderPlaced, OrderShipped

from archipel.testing import run_app

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"no Chromium at {CHROMIUM}"),
]


async def test_buy_a_mug_in_a_browser() -> None:
    from playwright.async_api import async_playwright, expect

    ARTIFACTS.mkdir(exist_ok=True)
    async with run_app(app, "monolith") as shop, async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(10_000)
            await page.goto(shop.url_of("frontend") + "/")
            await expect(page.locator(".grid .card")).to_have_count(10)
            await page.screenshot(path=str(ARTIFACTS / "boutique-home.png"), full_page=True)

            await page.click('a[data-product="camp-mug"]')
            await expect(page.locator("h1")).to_have_text("Enamel Camp Mug")
            await page.fill("#quantity", "0")  # refused, with a message on the page
            await page.evaluate("document.querySelector('form.add').noValidate = true")
            await page.click("text=Add to basket")
            await expect(page.locator(".alert")).to_contain_text("quantity must be between 1 and 100")
            await page.fill("#quantity", "2")
            await page.click("text=Add to basket")
            await expect(page).to_have_url(re.compile(r"/basket$"))
            await expect(page.get_by_test_id("basket-count")).to_have_text("2")

            await page.select_option("#currency_code", "EUR")
            await page.click("form.currency button")
            await expect(page.get_by_test_id("basket-total")).to_contain_text("€")

            await page.fill('input[name="email"]', "browser@example.com")
            await page.fill('input[name="card_number"]', "4111 1111 1111 1111")
            await page.fill('input[name="card_month"]', "12")
            await page.fill('input[name="card_year"]', str(datetime.date.today().year + 3))
            await page.fill('input[name="card_cvv"]', "321")
            await page.screenshot(path=str(ARTIFACTS / "boutique-basket.png"), full_page=True)
            await page.click("button:has-text('Place order')")

            order_id = (await page.get_by_test_id("order-id").inner_text()).strip()
            assert re.fullmatch(r"[0-9a-f]{16}", order_id)
            await expect(page.locator("h1")).to_contain_text("your order is placed")
            await page.screenshot(path=str(ARTIFACTS / "boutique-confirmation.png"), full_page=True)

            placed = await shop.events.wait_for(OrderPlaced, lambda e: e.order_id == order_id)
            assert placed.email == "browser@example.com" and placed.total.currency_code == "EUR"
            await shop.events.wait_for(OrderShipped, lambda e: e.order_id == order_id)
            await page.click("text=See the mail")
            await expect(page.locator(".mail")).to_have_count(2)
            await page.screenshot(path=str(ARTIFACTS / "boutique-mail.png"), full_page=True)

            await page.click("a.orders-link")
            await expect(page.locator("tr[data-order]")).to_have_count(1)
            await page.click(f"a[href='/order/{order_id}']")
            await expect(page.get_by_test_id("order-status")).to_have_text("shipped")
            await page.screenshot(path=str(ARTIFACTS / "boutique-order.png"), full_page=True)
        finally:
            await browser.close()
