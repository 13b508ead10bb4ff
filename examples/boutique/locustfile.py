"""Load test for the boutique storefront, with Online Boutique's traffic mix.

    locust -f examples/boutique/locustfile.py --headless -u 5 -r 5 -t 10s --host http://127.0.0.1:8000

Each simulated visitor keeps its own cookies (session and currency), like a browser, and checks
out with the order id the basket page's form carries.
"""

from __future__ import annotations

import datetime
import random
import re

from locust import FastHttpUser, between, task

PRODUCT_IDS = (
    "camp-mug",
    "tea-towel",
    "desk-lamp",
    "cutting-board",
    "beanie",
    "tote-bag",
    "planter",
    "sunglasses",
    "notebook",
    "watering-can",
)
CURRENCIES = ("EUR", "USD", "JPY", "GBP", "CAD", "CHF")
ORDER_ID_FIELD = re.compile(r'name="order_id" value="([0-9a-f]+)"')


class Shopper(FastHttpUser):
    wait_time = between(0.1, 1.0)

    @task(1)
    def index(self) -> None:
        self.client.get("/")

    @task(2)
    def set_currency(self) -> None:
        self.client.post("/setcurrency", data={"currency_code": random.choice(CURRENCIES)})

    @task(10)
    def browse_product(self) -> None:
        self.client.get(f"/product/{random.choice(PRODUCT_IDS)}", name="/product/[id]")

    @task(2)
    def add_to_cart(self) -> None:
        product = random.choice(PRODUCT_IDS)
        self.client.get(f"/product/{product}", name="/product/[id]")
        self.client.post("/basket/add", data={"product_id": product, "quantity": str(random.randint(1, 5))})

    @task(3)
    def view_cart(self) -> None:
        self.client.get("/basket")

    @task(1)
    def checkout(self) -> None:
        self.add_to_cart()
        basket = self.client.get("/basket")
        found = ORDER_ID_FIELD.search(basket.text or "")
        self.client.post(
            "/order",
            data={
                "order_id": found.group(1) if found else "",
                "email": "someone@example.com",
                "street_address": "12 Harbour Lane",
                "zip_code": "PO1 3AX",
                "city": "Portsmouth",
                "state": "",
                "country": "United Kingdom",
                "card_number": "4111 1111 1111 1111",
                "card_month": "1",
                "card_year": str(datetime.date.today().year + 2),
                "card_cvv": "123",
            },
        )
