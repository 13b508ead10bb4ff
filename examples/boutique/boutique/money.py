"""Pure integer money arithmetic on :class:`Money` (units + nanos). No floats anywhere.

Every amount is turned into one integer count of nanos, computed on exactly, and turned back.
Conversions multiply by exact decimal rates (``Fraction``) and round half to even, to the nano.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction

from .types import Money

NANOS_PER_UNIT = 1_000_000_000
_MAX_NANOS = NANOS_PER_UNIT - 1


class MoneyError(ValueError):
    """An amount is malformed, or two amounts in different currencies were combined."""


def is_valid(m: Money) -> bool:
    """Nanos within ±999,999,999 and of the same sign as units; a 3-letter upper-case code."""
    if not (len(m.currency_code) == 3 and m.currency_code.isascii() and m.currency_code.isupper()):
        return False
    if not -_MAX_NANOS <= m.nanos <= _MAX_NANOS:
        return False
    return not ((m.units > 0 and m.nanos < 0) or (m.units < 0 and m.nanos > 0))


def check(m: Money) -> Money:
    if not is_valid(m):
        raise MoneyError(f"malformed amount {m.units} units, {m.nanos} nanos of {m.currency_code!r}")
    return m


def to_nanos(m: Money) -> int:
    check(m)
    return m.units * NANOS_PER_UNIT + m.nanos


def from_nanos(currency_code: str, total: int) -> Money:
    """Split a nano count into units and nanos that share its sign (truncating toward zero)."""
    sign = -1 if total < 0 else 1
    units, nanos = divmod(abs(total), NANOS_PER_UNIT)
    return Money(currency_code, sign * units, sign * nanos)


def zero(currency_code: str) -> Money:
    return Money(currency_code, 0, 0)


def add(a: Money, b: Money) -> Money:
    if a.currency_code != b.currency_code:
        raise MoneyError(f"cannot add {a.currency_code} and {b.currency_code}")
    return from_nanos(a.currency_code, to_nanos(a) + to_nanos(b))


def total(amounts: Iterable[Money], currency_code: str) -> Money:
    result = zero(currency_code)
    for amount in amounts:
        result = add(result, amount)
    return result


def multiply(m: Money, factor: int) -> Money:
    return from_nanos(m.currency_code, to_nanos(m) * factor)


def negate(m: Money) -> Money:
    return from_nanos(m.currency_code, -to_nanos(m))


def is_positive(m: Money) -> bool:
    return to_nanos(m) > 0


def scale(m: Money, rate: Fraction, currency_code: str) -> Money:
    """``m * rate`` in another currency, rounded half to even to the nano."""
    return from_nanos(currency_code, round(to_nanos(m) * rate))


def from_decimal(currency_code: str, value: str | Decimal) -> Money:
    """``from_decimal("USD", "19.99")``; more than 9 decimals are rounded half to even."""
    nanos = (Decimal(value) * NANOS_PER_UNIT).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    return from_nanos(currency_code, int(nanos))


def to_decimal(m: Money) -> Decimal:
    return Decimal(to_nanos(m)) / NANOS_PER_UNIT


# Minor units shown to people (ISO 4217 exponent) and the symbol in front of the amount.
_DISPLAY: dict[str, tuple[str, int]] = {
    "USD": ("$", 2),
    "EUR": ("€", 2),
    "GBP": ("£", 2),
    "JPY": ("¥", 0),
    "CAD": ("CA$", 2),
    "CHF": ("CHF ", 2),
    "AUD": ("A$", 2),
    "SEK": ("SEK ", 2),
}


def format_money(m: Money) -> str:
    """``$1,234.50``, ``¥1,235``, ``-€0.10``: rounded half to even to the currency's minor unit."""
    symbol, exponent = _DISPLAY.get(m.currency_code, (m.currency_code + " ", 2))
    value = to_decimal(m).quantize(Decimal(1).scaleb(-exponent), rounding=ROUND_HALF_EVEN)
    sign = "-" if value < 0 else ""
    return f"{sign}{symbol}{abs(value):,.{exponent}f}"
