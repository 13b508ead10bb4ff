"""Version 2 of ``skew_v1``: the same services and app, with only compatible additions, each an
optional field (it has a default): ``QuoteRequest.coupon``, ``Quote.unit_price``,
``PriceChanged.reason``, and the keyword parameter ``rush`` of ``Pricing.quote``."""

from __future__ import annotations

from archipel import App, Event, Service, Struct, on, rpc


class QuoteRequest(Struct):
    sku: str
    quantity: int
    coupon: str = ""  # new


class Quote(Struct):
    sku: str
    total: int
    unit_price: int | None = None  # new; None: the answer of a callee that does not say it


class PriceChanged(Event, topic="prices/changed"):
    sku: str
    price: int
    reason: str = "unspecified"  # new


PRICE = 10
RUSH_FEE = 5
COUPONS = {"SAVE10": 10}


class Pricing(Service, emits=[PriceChanged]):
    def __init__(self) -> None:
        self.received: list[tuple[QuoteRequest, bool]] = []

    @rpc(idempotent=True)
    async def quote(self, request: QuoteRequest, rush: bool = False) -> Quote:  # rush: new
        self.received.append((request, rush))
        total = request.quantity * PRICE - COUPONS.get(request.coupon, 0) + (RUSH_FEE if rush else 0)
        return Quote(request.sku, total, unit_price=PRICE)

    @rpc
    async def announce(self, sku: str, price: int, reason: str = "unspecified") -> None:
        await self.emit(PriceChanged(sku=sku, price=price, reason=reason))


class Shop(Service):
    pricing: Pricing

    def __init__(self) -> None:
        self.seen: list[PriceChanged] = []

    @rpc
    async def ask(self, sku: str, quantity: int, coupon: str = "", rush: bool = False) -> Quote:
        return await self.pricing.quote(QuoteRequest(sku, quantity, coupon), rush=rush)

    @on(PriceChanged)
    async def price_changed(self, event: PriceChanged) -> None:
        self.seen.append(event)


app = App("skew", [Pricing, Shop])
