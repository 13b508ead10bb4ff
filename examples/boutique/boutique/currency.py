"""Currency: the supported currencies and conversion from a static rate table."""

from __future__ import annotations

from fractions import Fraction

from archipel import InvalidArgument, Service, rpc

from . import money
from .types import MAX_UNITS, Amount, CurrencyCode, Money

MAX_BATCH = 1000  # amounts per convert_all call: a catalog page, with room to spare

# Units of each currency worth one euro. Illustrative, fixed rates: a demo, not a market feed.
EUR_RATES: dict[str, Fraction] = {
    code: Fraction(rate)
    for code, rate in {
        "EUR": "1",
        "USD": "1.0850",
        "JPY": "161.20",
        "GBP": "0.8530",
        "CAD": "1.4720",
        "CHF": "0.9580",
        "AUD": "1.6340",
        "SEK": "11.2400",
    }.items()
}


def convert_amount(amount: Money, to_code: str) -> Money:
    """Convert exactly through the euro rates, rounding half to even to the nano."""
    for code in (amount.currency_code, to_code):
        if code not in EUR_RATES:
            raise InvalidArgument(f"unsupported currency {code!r}")
    if not money.is_valid(amount):
        raise InvalidArgument(
            f"malformed amount: {amount.units} units and {amount.nanos} nanos (nanos must lie within "
            "±999,999,999 and share the sign of units)"
        )
    if abs(amount.units) > MAX_UNITS:
        raise InvalidArgument(f"amount too large: at most {MAX_UNITS:,} units")
    if amount.currency_code == to_code:
        return amount
    rate = EUR_RATES[to_code] / EUR_RATES[amount.currency_code]
    return money.scale(amount, rate, to_code)


class Currency(Service):
    @rpc(idempotent=True)
    async def supported_currencies(self) -> list[str]:
        return sorted(EUR_RATES)

    # Concurrent remote calls of convert (a page of prices gathered) travel as one convert_all.
    @rpc(idempotent=True, batch="convert_all")
    async def convert(self, amount: Amount, to_code: CurrencyCode) -> Money:
        return convert_amount(amount, to_code)

    @rpc(idempotent=True)
    async def convert_all(self, amounts: list[Amount], to_code: CurrencyCode) -> list[Money]:
        """Convert many amounts in one call: a page of prices costs one hop, not one per product."""
        if len(amounts) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} amounts per call, not {len(amounts)}")
        return [convert_amount(amount, to_code) for amount in amounts]
