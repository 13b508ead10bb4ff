"""Versions of ``skew_v1``'s services that old replicas cannot work with: each function returns
the app "skew" with one incompatible change, for the version-skew tests to show the error it
produces.

Each change lives in a function so that its classes can keep the names of version 1 (an event's
class name travels as its CloudEvents ``type``); this module therefore does not use
``from __future__ import annotations``: the annotations of the functions' local classes must be
objects, which ``typing.get_type_hints`` cannot find by name.
"""

from typing import Any

from archipel import App, Event, Service, Struct, on, rpc

from . import skew_v1 as v1


def required_request_field() -> App:
    """``QuoteRequest`` gains a required field, which old callers do not send."""

    class QuoteRequest(Struct):
        sku: str
        quantity: int
        region: str

    class Pricing(Service):
        @rpc(idempotent=True)
        async def quote(self, request: QuoteRequest) -> v1.Quote:
            return v1.Quote(request.sku, 0)

    return App("skew", [Pricing])


def removed_request_field() -> App:
    """``QuoteRequest`` loses ``quantity``, which old callees require; the new caller stops sending it."""

    class QuoteRequest(Struct):
        sku: str

    class Pricing(Service):
        @rpc(idempotent=True)
        async def quote(self, request: QuoteRequest) -> v1.Quote:
            return v1.Quote(request.sku, 0)

    class Shop(Service):
        pricing: Pricing

        @rpc
        async def ask(self, sku: str) -> v1.Quote:
            return await self.pricing.quote(QuoteRequest(sku))

    return App("skew", [Pricing, Shop])


def renamed_request_field() -> App:
    """``QuoteRequest.quantity`` is renamed ``count``."""

    class QuoteRequest(Struct):
        sku: str
        count: int

    class Pricing(Service):
        @rpc(idempotent=True)
        async def quote(self, request: QuoteRequest) -> v1.Quote:
            return v1.Quote(request.sku, request.count)

    return App("skew", [Pricing])


def retyped_request_field() -> App:
    """``QuoteRequest.quantity`` becomes a string."""

    class QuoteRequest(Struct):
        sku: str
        quantity: str

    class Pricing(Service):
        @rpc(idempotent=True)
        async def quote(self, request: QuoteRequest) -> v1.Quote:
            return v1.Quote(request.sku, 0)

    return App("skew", [Pricing])


def required_keyword() -> App:
    """``Pricing.quote`` gains a parameter without a default."""

    class Pricing(Service):
        @rpc(idempotent=True)
        async def quote(self, request: v1.QuoteRequest, currency: str) -> v1.Quote:
            return v1.Quote(request.sku, 0)

    return App("skew", [Pricing])


def renamed_method() -> App:
    """``Pricing.quote`` is renamed ``estimate`` (for an old caller: ``quote`` is removed)."""

    class Pricing(Service):
        @rpc(idempotent=True)
        async def estimate(self, request: v1.QuoteRequest) -> v1.Quote:
            return v1.Quote(request.sku, request.quantity * v1.PRICE)

    class Shop(Service):
        pricing: Pricing

        @rpc
        async def ask(self, sku: str, quantity: int) -> v1.Quote:
            return await self.pricing.estimate(v1.QuoteRequest(sku, quantity))

    return App("skew", [Pricing, Shop])


def retyped_response_field() -> App:
    """``Quote.total`` becomes a string."""

    class Quote(Struct):
        sku: str
        total: str

    class Pricing(Service):
        @rpc(idempotent=True)
        async def quote(self, request: v1.QuoteRequest) -> Quote:
            return Quote(request.sku, f"{request.quantity * v1.PRICE} EUR")

    return App("skew", [Pricing])


def removed_response_field() -> App:
    """``Quote`` loses ``total``, which old callers require."""

    class Quote(Struct):
        sku: str

    class Pricing(Service):
        @rpc(idempotent=True)
        async def quote(self, request: v1.QuoteRequest) -> Quote:
            return Quote(request.sku)

    return App("skew", [Pricing])


def _publisher(event_type: type[Event], **fields: Any) -> type[Service]:
    """A ``Pricing`` whose ``announce`` emits ``event_type`` made of ``sku`` and ``fields``."""

    class Pricing(Service, emits=[event_type]):
        @rpc
        async def announce(self, sku: str) -> None:
            await self.emit(event_type(sku=sku, **fields))

    return Pricing


def required_event_field() -> App:
    """``PriceChanged`` gains a required field, which old publishers do not send."""

    class PriceChanged(Event, topic="prices/changed"):
        sku: str
        price: int
        currency: str

    class Shop(Service):
        def __init__(self) -> None:
            self.seen: list[PriceChanged] = []

        @on(PriceChanged)
        async def price_changed(self, event: PriceChanged) -> None:
            self.seen.append(event)

    return App("skew", [_publisher(PriceChanged, price=1, currency="EUR"), Shop])


def removed_event_field() -> App:
    """``PriceChanged`` loses ``price``, which old handlers require."""

    class PriceChanged(Event, topic="prices/changed"):
        sku: str

    return App("skew", [_publisher(PriceChanged)])


def retyped_event_field() -> App:
    """``PriceChanged.price`` becomes a string."""

    class PriceChanged(Event, topic="prices/changed"):
        sku: str
        price: str

    return App("skew", [_publisher(PriceChanged, price="12 EUR")])


def renamed_event_type() -> App:
    """The event class ``PriceChanged`` is renamed ``PriceUpdated``, on the same topic."""

    class PriceUpdated(Event, topic="prices/changed"):
        sku: str
        price: int

    return App("skew", [_publisher(PriceUpdated, price=12)])


def renamed_event_topic() -> App:
    """``PriceChanged`` moves to the topic ``prices/updated``."""

    class PriceChanged(Event, topic="prices/updated"):
        sku: str
        price: int

    return App("skew", [_publisher(PriceChanged, price=12)])
