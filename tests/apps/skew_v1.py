"""Version 1 of a small app whose version 2 (``skew_v2``) adds optional fields: a caller and
handler (``Shop``) and a callee and publisher (``Pricing``). Each side records what it received,
so the version-skew tests can assert the values that crossed the wire."""

from __future__ import annotations

from archipel import App, Event, Service, Struct, on, rpc


class QuoteRequest(Struct):
    sku: str
    quantity: int


class Quote(Struct):
    sku: str
    total: int


class PriceChanged(Event, topic="prices/changed"):
    sku: str
    price: int


PRICE = 10


class Pricing(Service, emits=[PriceChanged]):
    def __init__(self) -> None:
        self.received: list[QuoteRequest] = []

    @rpc(idempotent=True)
    async def quote(self, request: QuoteRequest) -> Quote:
        self.received.append(request)
        return Quote(request.sku, request.quantity * PRICE)

    @rpc
    async def announce(self, sku: str, price: int) -> None:
        await self.emit(PriceChanged(sku=sku, price=price))


class Shop(Service):
    pricing: Pricing

    def __init__(self) -> None:
        self.seen: list[PriceChanged] = []

    @rpc
    async def ask(self, sku: str, quantity: int) -> Quote:
        return await self.pricing.quote(QuoteRequest(sku, quantity))

    @on(PriceChanged)
    async def price_changed(self, event: PriceChanged) -> None:
        self.seen.append(event)


app = App("skew", [Pricing, Shop])
