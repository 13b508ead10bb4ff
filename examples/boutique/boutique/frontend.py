"""Frontend: the storefront. Server-rendered HTML over plain forms; works without JavaScript.

Its POST routes avoid paths that start with a service name (``/cart/...`` belongs to the cart
service's RPC endpoints), hence ``/basket``, ``/order`` and ``/setcurrency``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import secrets
from collections.abc import Awaitable, Callable, Mapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from archipel import ArchipelError, Conflict, InvalidArgument, NotFound, Service, optional

from .ads import Ads
from .cart import Cart, parse_quantity
from .catalog import Catalog
from .checkout import Checkout, new_order_id
from .currency import Currency
from .email import Email
from .money import format_money, multiply, total
from .payment import PaymentDeclined
from .recommendation import Recommendation
from .shipping import Shipping
from .types import Address, CartItem, CreditCard, Money, Product

HERE = Path(__file__).parent
SESSION_COOKIE = "shop_session"
CURRENCY_COOKIE = "shop_currency"
DEFAULT_CURRENCY = "USD"
COOKIE_MAX_AGE = 30 * 24 * 3600

_pages = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
)
_pages.filters["money"] = format_money


class SessionMiddleware:
    """Gives every visitor a random session id, kept in an HttpOnly cookie."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookies = SimpleCookie()
        for name, value in scope.get("headers", []):
            if name == b"cookie":
                cookies.load(value.decode("latin-1"))
        existing = cookies.get(SESSION_COOKIE)
        session_id = existing.value if existing and 8 <= len(existing.value) <= 64 else ""
        fresh = not session_id
        if fresh:
            session_id = secrets.token_hex(16)
        scope.setdefault("state", {})["session_id"] = session_id

        async def send_with_cookie(message: Message) -> None:
            if fresh and message["type"] == "http.response.start":
                cookie = (
                    f"{SESSION_COOKIE}={session_id}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; SameSite=Lax"
                )
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _field(form: FormData, name: str, limit: int = 200) -> str:
    value = form.get(name, "")
    return value.strip()[:limit] if isinstance(value, str) else ""


def _small_int(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 4):
        raise InvalidArgument(f"{what} must be a number")
    return int(text)


def default_checkout_form() -> dict[str, str]:
    """Demo values, so a visitor can check out in one click (like Online Boutique)."""
    return {
        "email": "someone@example.com",
        "street_address": "12 Harbour Lane",
        "city": "Portsmouth",
        "state": "",
        "zip_code": "PO1 3AX",
        "country": "United Kingdom",
        "card_number": "4111 1111 1111 1111",
        "card_cvv": "123",
        "card_month": "1",
        "card_year": str(datetime.date.today().year + 2),
    }


class Frontend(Service):
    # Optional: when ads or recommendations cannot answer, pages show none rather than fail.
    ads: Ads = optional(get_ads=[])
    cart: Cart
    catalog: Catalog
    currency: Currency
    email: Email
    recommendation: Recommendation = optional(list_recommendations=[])
    shipping: Shipping
    checkout: Checkout

    def __init__(self) -> None:
        self._currencies: list[str] = []

    def asgi_app(self) -> Any:
        routes = [
            Route("/", self.home),
            Route("/product/{product_id}", self.product),
            Route("/basket", self.basket),
            Route("/basket/add", self.add_to_basket, methods=["POST"]),
            Route("/basket/empty", self.empty_basket, methods=["POST"]),
            Route("/setcurrency", self.set_currency, methods=["POST"]),
            Route("/order", self.place_order, methods=["POST"]),
            Route("/order/{order_id}", self.order_page),
            Route("/orders", self.order_history),
            Route("/mail", self.mail),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        handlers: Mapping[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
            404: self.not_found,
            NotFound: self.not_found,
        }
        app = Starlette(routes=routes, exception_handlers=dict(handlers))
        return SessionMiddleware(app)

    # --- pages -------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        user_currency = await self._user_currency(request)
        products, ads = await asyncio.gather(self.catalog.list_products(), self.ads.get_ads([]))
        prices = await self._prices(products, user_currency)
        return await self._page(
            request, "home.html", products=products, prices=prices, ad=ads[0] if ads else None
        )

    async def product(self, request: Request, error: str = "", status: int = 200) -> Response:
        user_currency = await self._user_currency(request)
        product = await self.catalog.get_product(request.path_params["product_id"])
        price, recommended_ids, ads, all_products = await asyncio.gather(
            self.currency.convert(product.price_usd, user_currency),
            self.recommendation.list_recommendations(self._user(request), [product.id]),
            self.ads.get_ads(product.categories),
            self.catalog.list_products(),
        )
        by_id = {p.id: p for p in all_products}
        recommended = [by_id[pid] for pid in recommended_ids if pid in by_id]
        return await self._page(
            request,
            "product.html",
            status=status,
            product=product,
            price=price,
            recommended=recommended,
            ad=ads[0] if ads else None,
            error=error,
        )

    async def basket(
        self, request: Request, error: str = "", status: int = 200, form: dict[str, str] | None = None
    ) -> Response:
        user_currency = await self._user_currency(request)
        contents = await self.cart.get_cart(self._user(request))
        lines: list[tuple[Product, CartItem, Money]] = []
        shipping = Money(user_currency, 0)
        if contents.items:
            products = await asyncio.gather(*(self.catalog.get_product(i.product_id) for i in contents.items))
            prices = await self._prices(list(products), user_currency)
            lines = [(p, i, prices[p.id]) for p, i in zip(products, contents.items, strict=True)]
            values = form or default_checkout_form()
            quote = await self.shipping.get_quote(_address(values), contents.items)
            shipping = await self.currency.convert(quote, user_currency)
        subtotals = [multiply(price, item.quantity) for _, item, price in lines]
        return await self._page(
            request,
            "basket.html",
            status=status,
            lines=lines,
            shipping=shipping,
            total=total([*subtotals, shipping], user_currency),
            error=error,
            form=form or default_checkout_form(),
            # One id per rendered form: the same form submitted twice is one order. A refused
            # checkout charged nothing under its id, so its form comes back with a fresh one.
            order_id=new_order_id(),
        )

    async def mail(self, request: Request) -> Response:
        """The mail the shop sent about this visitor's orders: one order's, or all of them. Never
        another visitor's: addresses and order details are theirs."""
        order_id = request.query_params.get("order", "")[:64]
        orders = await self.checkout.list_orders(self._user(request), limit=50)
        mine = [order.order_id for order in orders if not order_id or order.order_id == order_id]
        found = [await self.email.list_sent(order_id=mine_id, limit=50) for mine_id in mine]
        mails = sorted((m for batch in found for m in batch), key=lambda m: m.sent_at, reverse=True)
        return await self._page(request, "mail.html", mails=mails[:50], order_id=order_id)

    async def order_page(self, request: Request) -> Response:
        order_id = request.path_params["order_id"]
        try:
            order = await self.checkout.get_order(order_id)
        except InvalidArgument:
            raise NotFound(f"order {order_id[:40]!r} not found") from None
        if order.user_id != self._user(request):  # other visitors' orders do not exist for you
            raise NotFound(f"order {order_id} not found")
        return await self._page(request, "order.html", order=order, confirmation=False)

    async def order_history(self, request: Request) -> Response:
        orders = await self.checkout.list_orders(self._user(request), limit=50)
        return await self._page(request, "orders.html", orders=orders)

    # --- forms -------------------------------------------------------------------------------

    async def add_to_basket(self, request: Request) -> Response:
        form = await request.form()
        product_id = _field(form, "product_id", 64)
        product = await self.catalog.get_product(product_id)  # unknown -> 404 page
        request.path_params["product_id"] = product.id
        try:
            quantity = parse_quantity(_field(form, "quantity", 32))
            await self.cart.add_item(self._user(request), product.id, quantity)
        except InvalidArgument as exc:
            return await self.product(request, error=exc.message, status=422)
        return RedirectResponse("/basket", status_code=303)

    async def empty_basket(self, request: Request) -> Response:
        await self.cart.empty_cart(self._user(request))
        return RedirectResponse("/basket", status_code=303)

    async def set_currency(self, request: Request) -> Response:
        form = await request.form()
        code = _field(form, "currency_code", 8)
        target = _local_path(request.headers.get("referer", ""))
        response = RedirectResponse(target, status_code=303)
        if code in await self._supported():
            response.set_cookie(CURRENCY_COOKIE, code, max_age=COOKIE_MAX_AGE, httponly=True, samesite="lax")
        return response

    async def place_order(self, request: Request) -> Response:
        form = await request.form()
        values = {key: _field(form, key) for key in default_checkout_form()}
        user_currency = await self._user_currency(request)
        try:
            card = CreditCard(
                number=values["card_number"],
                cvv=values["card_cvv"],
                expiration_month=_small_int(values["card_month"], "the expiry month"),
                expiration_year=_small_int(values["card_year"], "the expiry year"),
            )
            order = await self.checkout.place_order(
                _field(form, "order_id", 64),
                self._user(request),
                user_currency,
                _address(values),
                values["email"],
                card,
            )
        except PaymentDeclined as exc:
            return await self.basket(request, error=exc.message, status=402, form=values)
        except (InvalidArgument, Conflict) as exc:
            return await self.basket(request, error=exc.message, status=exc.status, form=values)
        # What was bought leaves the basket before the confirmation shows, so the buyer's next
        # page and next checkout no longer hold it. Cart's OrderPlaced handler does the same
        # (once per order) and makes it certain when this call fails: the order stands anyway.
        bought = [CartItem(item.product_id, item.quantity) for item in order.items]
        with contextlib.suppress(ArchipelError):
            await self.cart.remove_ordered(order.user_id, order.order_id, bought)
        return await self._page(request, "order.html", order=order, confirmation=True, basket_count=0)

    # --- helpers -----------------------------------------------------------------------------

    async def not_found(self, request: Request, exc: Exception) -> Response:
        message = exc.message if isinstance(exc, ArchipelError) else "There is nothing at this address."
        if isinstance(exc, HTTPException) and exc.status_code != 404:
            return Response(exc.detail, status_code=exc.status_code)
        return await self._page(request, "error.html", status=404, title="Not found", message=message)

    def _user(self, request: Request) -> str:
        return str(request.state.session_id)

    async def _supported(self) -> list[str]:
        if not self._currencies:
            self._currencies = await self.currency.supported_currencies()
        return self._currencies

    async def _user_currency(self, request: Request) -> str:
        code = request.cookies.get(CURRENCY_COOKIE, DEFAULT_CURRENCY)
        return code if code in await self._supported() else DEFAULT_CURRENCY

    async def _prices(self, products: list[Product], user_currency: str) -> dict[str, Money]:
        # One hop for the whole page in microservices: the concurrent calls of convert are sent
        # as one call of convert_all (@rpc(batch=...) in currency.py).
        converted = await asyncio.gather(
            *(self.currency.convert(p.price_usd, user_currency) for p in products)
        )
        return {p.id: price for p, price in zip(products, converted, strict=True)}

    async def _page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        user_currency = await self._user_currency(request)
        if "basket_count" not in context:
            try:
                contents = await self.cart.get_cart(self._user(request))
                context["basket_count"] = sum(i.quantity for i in contents.items)
            except ArchipelError:
                context["basket_count"] = 0
        html = _pages.get_template(template).render(
            currencies=await self._supported(), user_currency=user_currency, path=request.url.path, **context
        )
        return HTMLResponse(html, status_code=status)


def _address(values: Mapping[str, str]) -> Address:
    return Address(
        values["street_address"], values["city"], values["state"], values["country"], values["zip_code"]
    )


def _local_path(referer: str) -> str:
    """The path of a same-site referer to go back to; '/' for anything else."""
    parts = urlsplit(referer)
    path = parts.path or "/"
    if (
        not path.startswith("/")
        or path.startswith("//")
        or path in ("/order", "/basket/add", "/basket/empty")
    ):
        return "/"
    return path + (f"?{parts.query}" if parts.query else "")
