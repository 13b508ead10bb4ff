"""The shop's pure rules: cards, quantities, recommendations, ads, shipping, catalog search."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest
from boutique import ads, shipping
from boutique.cart import MAX_QUANTITY, check_quantity, parse_quantity
from boutique.catalog import PRODUCTS, find_product, search_products
from boutique.payment import PaymentDeclined, card_brand, card_digits, check_card, luhn_ok
from boutique.recommendation import recommend
from boutique.types import Address, CartItem, CreditCard, Money

from archipel import InvalidArgument, NotFound

TODAY = datetime.date(2025, 6, 15)
STATIC = Path(__file__).resolve().parents[2] / "examples" / "boutique" / "boutique" / "static"


def card(
    number: str = "4111 1111 1111 1111", month: int = 12, year: int = 2030, cvv: str = "123"
) -> CreditCard:
    return CreditCard(number=number, cvv=cvv, expiration_month=month, expiration_year=year)


@pytest.mark.parametrize(
    "number", ["4111111111111111", "5555555555554444", "2221000000000009", "4012888888881881", "79927398713"]
)
def test_luhn_accepts_valid_numbers(number: str) -> None:
    assert luhn_ok(number)


@pytest.mark.parametrize("number", ["4111111111111112", "1234567812345678", "", "abcd", "0000000000000001"])
def test_luhn_refuses_invalid_numbers(number: str) -> None:
    assert not luhn_ok(number)


def test_card_digits_strips_spaces_and_dashes_only() -> None:
    assert card_digits("4111 1111-1111 1111") == "4111111111111111"
    assert card_digits("4111 1111 1111 111x") == ""
    assert card_digits("\uff14\uff11\uff11\uff11") == ""  # full-width digits are not ASCII


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        ("4111111111111111", "visa"),
        ("4222222222222", "visa"),
        ("5105105105105100", "mastercard"),
        ("2720990000000007", "mastercard"),
        ("378282246310005", None),  # American Express
        ("6011111111111117", None),  # Discover
        ("2721000000000000", None),
    ],
)
def test_card_brand_by_prefix(number: str, brand: str | None) -> None:
    assert card_brand(number) == brand


def test_check_card_returns_the_brand() -> None:
    assert check_card(card(), TODAY) == "visa"
    assert check_card(card("5555 5555 5555 4444"), TODAY) == "mastercard"
    assert check_card(card(month=6, year=2025), TODAY) == "visa"  # valid through the end of its month


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (card("4111 1111 1111 1112"), "card declined: number fails the Luhn check"),
        (card("378282246310005"), "only Visa and Mastercard"),
        (card("4111"), "12 to 19 digits"),
        (card("not a number"), "12 to 19 digits"),
        (card(month=5, year=2025), "expired in 05/2025"),
        (card(month=12, year=2024), "expired in 12/2024"),
        (card(month=13), "expiry month"),
        (card(month=0), "expiry month"),
        (card(cvv="12"), "CVV"),
        (card(cvv="12a"), "CVV"),
    ],
)
def test_check_card_declines_with_a_reason(bad: CreditCard, reason: str) -> None:
    with pytest.raises(PaymentDeclined, match=re.escape(reason)):
        check_card(bad, TODAY)


def test_payment_declined_is_a_declared_402() -> None:
    assert PaymentDeclined.status == 402
    assert PaymentDeclined.kind == "PaymentDeclined"


@pytest.mark.parametrize("text", ["1", "7", " 12 ", "+3", str(MAX_QUANTITY)])
def test_parse_quantity_accepts_whole_numbers_in_range(text: str) -> None:
    assert parse_quantity(text) == int(text)


@pytest.mark.parametrize("text", ["0", "-1", "101", "1000000000", "99999999999999999999999999"])
def test_parse_quantity_refuses_out_of_range(text: str) -> None:
    with pytest.raises(InvalidArgument, match="between 1 and 100"):
        parse_quantity(text)


@pytest.mark.parametrize("text", ["", "abc", "1.5", "1e3", "0x10", "١٢", "2 3"])
def test_parse_quantity_refuses_non_numbers(text: str) -> None:
    with pytest.raises(InvalidArgument, match="whole number"):
        parse_quantity(text)


def test_check_quantity_bounds() -> None:
    assert check_quantity(1) == 1
    for bad in (0, -5, MAX_QUANTITY + 1, 10**9):
        with pytest.raises(InvalidArgument):
            check_quantity(bad)


def test_recommend_is_deterministic_and_excludes() -> None:
    ids = [p.id for p in PRODUCTS]
    first = recommend(ids, ["camp-mug"], "user-1")
    assert first == recommend(list(reversed(ids)), ["camp-mug"], "user-1")
    assert len(first) == 4 and len(set(first)) == 4
    assert "camp-mug" not in first
    assert set(first) <= set(ids)
    assert recommend(ids, ids, "user-1") == []
    assert recommend(ids, [], "user-1", limit=0) == []
    assert len(recommend(ids, [], "user-1", limit=50)) == len(ids)
    # Different users see different orders (a shuffle, not a constant list).
    assert len({tuple(recommend(ids, [], f"user-{n}")) for n in range(10)}) > 1


def test_ads_match_categories_and_are_deterministic() -> None:
    chosen = ads.choose_ads(["garden"])
    assert chosen == ads.choose_ads(["garden"])
    assert 1 <= len(chosen) <= ads.MAX_ADS
    assert all(ad in ads.ADS_BY_CATEGORY["garden"] for ad in chosen)
    fallback = ads.choose_ads(["no-such-category"])
    assert len(fallback) == ads.MAX_ADS
    assert ads.choose_ads([]) == ads.choose_ads([])


def test_every_ad_points_at_a_product() -> None:
    for group in ads.ADS_BY_CATEGORY.values():
        for ad in group:
            find_product(ad.redirect_url.removeprefix("/product/"))


ADDRESS = Address("1 Quay Street", "Harbourtown", "", "Norway", "0150")


def test_shipping_quote() -> None:
    assert shipping.quote([]) == Money("USD", 0, 0)
    assert shipping.quote([CartItem("camp-mug", 1)]) == Money("USD", 4, 990_000_000)
    assert shipping.quote([CartItem("camp-mug", 2), CartItem("beanie", 1)]) == Money("USD", 6, 490_000_000)
    assert shipping.quote([CartItem("camp-mug", 20)]) == Money("USD", 0, 0)


def test_tracking_id_is_stable_per_order() -> None:
    items = [CartItem("camp-mug", 2), CartItem("beanie", 1)]
    a = shipping.tracking_id(ADDRESS, items, "order-1")
    assert a == shipping.tracking_id(ADDRESS, list(reversed(items)), "order-1")
    assert a != shipping.tracking_id(ADDRESS, items, "order-2")
    assert re.fullmatch(r"[0-9A-F]{2}-[0-9A-F]{5}-[0-9A-F]{9}", a)


def test_address_needs_street_city_country_zip() -> None:
    with pytest.raises(InvalidArgument, match="street_address, city"):
        shipping.check_address(Address(" ", "", "", "Norway", "0150"))


def test_catalog_data_is_complete() -> None:
    assert len(PRODUCTS) == len({p.id for p in PRODUCTS}) >= 10
    for p in PRODUCTS:
        assert p.price_usd.currency_code == "USD" and p.price_usd.units > 0
        assert p.categories and p.name and p.description
        assert (STATIC / p.picture.removeprefix("/static/")).is_file(), p.picture


def test_find_and_search() -> None:
    assert find_product("camp-mug").name == "Enamel Camp Mug"
    with pytest.raises(NotFound, match="product 'nope' not found"):
        find_product("nope")
    assert [p.id for p in search_products("walnut")] == ["cutting-board"]
    assert {p.id for p in search_products("GARDEN")} == {"planter", "watering-can"}
    assert {p.id for p in search_products("copper can")} == {"watering-can"}
    assert search_products("zzz") == []
    assert len(search_products("")) == len(PRODUCTS)


def test_locustfile_uses_real_product_ids() -> None:
    source = (STATIC.parents[1] / "locustfile.py").read_text()
    listed = set(re.findall(r'"([a-z-]+)"', source.split("PRODUCT_IDS", 1)[1].split(")", 1)[0]))
    assert listed == {p.id for p in PRODUCTS}
