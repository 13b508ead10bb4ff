"""Integer money arithmetic, conversion and display: no floats, half-even rounding to the nano."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from boutique import money
from boutique.currency import EUR_RATES, convert_amount
from boutique.types import Money

from archipel import InvalidArgument


def usd(units: int, nanos: int = 0) -> Money:
    return Money("USD", units, nanos)


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (0, (0, 0)),
        (1_500_000_000, (1, 500_000_000)),
        (-1_500_000_000, (-1, -500_000_000)),
        (-1, (0, -1)),
        (999_999_999, (0, 999_999_999)),
        (-(10**30), (-(10**21), 0)),
    ],
)
def test_nanos_round_trip_keeps_one_sign(total: int, expected: tuple[int, int]) -> None:
    m = money.from_nanos("USD", total)
    assert (m.units, m.nanos) == expected
    assert money.is_valid(m)
    assert money.to_nanos(m) == total


@pytest.mark.parametrize(
    "bad",
    [usd(1, -1), usd(-1, 1), usd(0, 1_000_000_000), usd(0, -1_000_000_000), Money("usd", 1), Money("US", 1)],
)
def test_malformed_amounts_are_refused(bad: Money) -> None:
    assert not money.is_valid(bad)
    with pytest.raises(money.MoneyError):
        money.to_nanos(bad)


def test_add_carries_nanos_and_mixes_signs() -> None:
    assert money.add(usd(1, 600_000_000), usd(2, 700_000_000)) == usd(4, 300_000_000)
    assert money.add(usd(1, 0), usd(-2, -500_000_000)) == usd(-1, -500_000_000)
    assert money.add(usd(0, 1), money.negate(usd(0, 1))) == usd(0, 0)


def test_add_refuses_mixed_currencies() -> None:
    with pytest.raises(money.MoneyError, match="USD and EUR"):
        money.add(usd(1), Money("EUR", 1))


def test_multiply_and_total() -> None:
    assert money.multiply(usd(12, 500_000_000), 3) == usd(37, 500_000_000)
    assert money.multiply(usd(-1, -250_000_000), 4) == usd(-5, 0)
    assert money.total([usd(1, 10), usd(2, 20), usd(0, 999_999_999)], "USD") == usd(4, 29)
    assert money.total([], "JPY") == Money("JPY", 0, 0)


def test_from_decimal_rounds_half_even_at_the_nano() -> None:
    assert money.from_decimal("USD", "19.99") == usd(19, 990_000_000)
    assert money.from_decimal("USD", "0.0000000005") == usd(0, 0)  # half -> even (0)
    assert money.from_decimal("USD", "0.0000000015") == usd(0, 2)  # half -> even (2)
    assert money.from_decimal("USD", "-0.0000000025") == usd(0, -2)
    assert money.to_decimal(usd(-3, -50_000_000)) == Decimal("-3.05")


def test_scale_rounds_half_even() -> None:
    assert money.scale(usd(0, 1), Fraction(1, 2), "EUR") == Money("EUR", 0, 0)
    assert money.scale(usd(0, 3), Fraction(1, 2), "EUR") == Money("EUR", 0, 2)
    assert money.scale(usd(0, -3), Fraction(1, 2), "EUR") == Money("EUR", 0, -2)


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (usd(1234, 500_000_000), "$1,234.50"),
        (usd(0, 5_000_000), "$0.00"),  # 0.005 -> half-even -> 0.00
        (usd(0, 15_000_000), "$0.02"),  # 0.015 -> 0.02
        (usd(-3, -100_000_000), "-$3.10"),
        (usd(0, -1), "$0.00"),  # no "-0.00"
        (Money("JPY", 1234, 500_000_000), "¥1,234"),  # half-even to whole yen
        (Money("JPY", 1235, 500_000_000), "¥1,236"),
        (Money("EUR", 9, 990_000_000), "€9.99"),
        (Money("XYZ", 1), "XYZ 1.00"),
    ],
)
def test_format_money(amount: Money, text: str) -> None:
    assert money.format_money(amount) == text


def test_convert_same_currency_is_identity() -> None:
    assert convert_amount(usd(5, 1), "USD") == usd(5, 1)


def test_convert_uses_exact_rates() -> None:
    # 10.85 USD is exactly 10 EUR at 1.0850; 10 EUR is 1,612 JPY at 161.20.
    assert convert_amount(usd(10, 850_000_000), "EUR") == Money("EUR", 10, 0)
    assert convert_amount(Money("EUR", 10), "JPY") == Money("JPY", 1612, 0)
    # 1 USD -> EUR = 1/1.085 = 0.921658986175115207... -> rounded to the nano.
    assert convert_amount(usd(1), "EUR") == Money("EUR", 0, 921_658_986)


def test_convert_negative_amounts_keep_the_sign() -> None:
    positive = convert_amount(usd(7, 330_000_000), "GBP")
    negative = convert_amount(usd(-7, -330_000_000), "GBP")
    assert negative == money.negate(positive)


def test_convert_round_trip_is_close_to_a_nano() -> None:
    for code in EUR_RATES:
        there = convert_amount(usd(123, 456_789_000), code)
        back = convert_amount(there, "USD")
        assert abs(money.to_nanos(back) - money.to_nanos(usd(123, 456_789_000))) <= 200


def test_convert_refuses_unknown_currencies_and_malformed_amounts() -> None:
    with pytest.raises(InvalidArgument, match="unsupported currency 'XXX'"):
        convert_amount(usd(1), "XXX")
    with pytest.raises(InvalidArgument, match="unsupported currency 'ZZZ'"):
        convert_amount(Money("ZZZ", 1), "USD")
    with pytest.raises(InvalidArgument, match="malformed"):
        convert_amount(usd(1, -5), "EUR")
