"""The shop's vocabulary: the structs every service sends and receives, and its events.

The rules a value must follow live here, in its type, so that the published schema
(``/openapi.json``) says what the services accept:

- most are ``msgspec.Meta`` constraints (bounds, lengths, patterns): the schema carries them and
  the server's decoder refuses a request breaking one (422, ``details.path`` naming the field)
  before the method runs. The services keep their own check of each rule all the same: in a
  monolith, and for calls between services placed in one process, nothing decodes the arguments.
- a few are *stated* only (``extra_json_schema``), and enforced by the service's own check, first
  thing: the rules on what a buyer types into the storefront's forms (email, address, card,
  order id, quantity). The storefront shows the service's message ("... is not an email address"),
  the same in every topology, where the decoder's would name a regular expression.
- what no schema can say stays in the services, as declared errors: a card that fails the Luhn
  check or has expired (``PaymentDeclined``, 402), a cart line over the limit or an empty cart
  (409), an unknown product or order (404).

Patterns are written for both regular-expression dialects that read them, Python's (msgspec, the
services) and ECMA 262's (JSON Schema): ASCII classes and ``\\uXXXX`` escapes only, and a code
check that uses a pattern with ``$`` uses ``re.fullmatch`` (Python's ``$`` also matches before a
final newline).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from msgspec import Meta

from archipel import Event, InvalidArgument, Struct

MAX_QUANTITY = 100  # of one product in a cart, and so in an order
MAX_ID = 128  # user ids, idempotency keys
MAX_UNITS = 10**12  # of an amount given to convert or to charge: far above any order

# The currencies the shop prices in (the currency service's rate table has exactly these).
CURRENCY_CODES = ("AUD", "CAD", "CHF", "EUR", "GBP", "JPY", "SEK", "USD")

# Whitespace as either dialect counts it (Python's ``str.isspace`` and ECMA's ``\s``), spelled
# out so that both read one class.
WHITESPACE = r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
NOT_BLANK = rf"[^{WHITESPACE}]"  # found anywhere: the value is not empty nor only whitespace
NO_NUL = r"^[^\u0000]*$"  # stores refuse NUL in keys
EMAIL_PATTERN = rf"^[^@{WHITESPACE}]{{1,64}}@[^@{WHITESPACE}]+\.[^@{WHITESPACE}]{{2,}}$"
MAX_EMAIL = 254
ORDER_ID_PATTERN = r"^[0-9a-f]{16}$"
CARD_NUMBER_PATTERN = r"^[ -]*(?:[0-9][ -]*){12,19}$"  # 12 to 19 digits, spaces and dashes between
CVV_PATTERN = r"^[0-9]{3,4}$"
_ORDER_ID = re.compile(ORDER_ID_PATTERN)


def check_order_id(order_id: str) -> str:
    """An order id as checkout makes them (``new_order_id``), or InvalidArgument."""
    if not _ORDER_ID.fullmatch(order_id):
        raise InvalidArgument(f"order_id must be 16 lower-case hex digits, got {order_id[:40]!r}")
    return order_id


def _stated(**schema: Any) -> Meta:
    """A rule the schema states and the service enforces (see the module's doc)."""
    return Meta(extra_json_schema=schema)


# --- enforced by the decoder (and checked again by the services) -----------------------------

UserId = Annotated[str, Meta(min_length=1, max_length=MAX_ID, pattern=NO_NUL)]
IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=MAX_ID, pattern=NO_NUL)]
ProductId = Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_NUL)]
CurrencyCode = Annotated[
    str, Meta(pattern=f"^({'|'.join(CURRENCY_CODES)})$", extra_json_schema={"enum": list(CURRENCY_CODES)})
]
Quantity = Annotated[int, Meta(ge=1, le=MAX_QUANTITY)]
Nanos = Annotated[int, Meta(ge=-999_999_999, le=999_999_999)]

# --- stated in the schema, enforced by the service's first check -----------------------------

OrderId = Annotated[str, _stated(pattern=ORDER_ID_PATTERN)]
Email = Annotated[str, _stated(maxLength=MAX_EMAIL, pattern=EMAIL_PATTERN)]
AddressLine = Annotated[str, _stated(pattern=NOT_BLANK)]  # street, city, country, zip code
RequestedQuantity = Annotated[int, _stated(minimum=1, maximum=MAX_QUANTITY)]  # cart.add_item
CardNumber = Annotated[str, _stated(pattern=CARD_NUMBER_PATTERN)]
Cvv = Annotated[str, _stated(pattern=CVV_PATTERN)]
Month = Annotated[int, _stated(minimum=1, maximum=12)]

# Units and nanos share their sign (or one is zero).
_SAME_SIGN = [
    {"properties": {"units": {"minimum": 0}, "nanos": {"minimum": 0}}},
    {"properties": {"units": {"maximum": 0}, "nanos": {"maximum": 0}}},
]
_POSITIVE = [
    {"properties": {"units": {"minimum": 1}, "nanos": {"minimum": 0}}},
    {"properties": {"units": {"const": 0}, "nanos": {"minimum": 1}}, "required": ["nanos"]},
]


class Money(Struct, frozen=True):
    """An amount as integer units plus nanos (10^-9 units), both with the same sign. No floats."""

    currency_code: CurrencyCode
    units: int
    nanos: Nanos = 0


_BOUNDED = {"units": {"minimum": -MAX_UNITS, "maximum": MAX_UNITS}}
# A well-formed amount of at most MAX_UNITS (currency.convert); one more than zero (payment.charge).
Amount = Annotated[Money, _stated(anyOf=_SAME_SIGN, properties=_BOUNDED)]
PositiveAmount = Annotated[Money, _stated(anyOf=_POSITIVE, properties=_BOUNDED)]


class Product(Struct, frozen=True):
    id: str
    name: str
    description: str
    picture: str  # path under /static
    price_usd: Money
    categories: list[str]


class CartItem(Struct, frozen=True):
    product_id: ProductId
    quantity: Quantity


class CartContents(Struct):
    user_id: str
    items: list[CartItem]


class Address(Struct, frozen=True):
    street_address: AddressLine
    city: AddressLine
    state: str
    country: AddressLine
    zip_code: AddressLine


class CreditCard(Struct, frozen=True):
    number: CardNumber
    cvv: Cvv
    expiration_month: Month
    expiration_year: int


class OrderItem(Struct, frozen=True):
    product_id: str
    name: str
    quantity: Quantity
    unit_price: Money  # in the buyer's currency


class Ad(Struct, frozen=True):
    redirect_url: str
    text: str


class Transaction(Struct, frozen=True):
    transaction_id: str
    amount: Money
    brand: str
    last_four: str
    idempotency_key: str = ""  # the caller's key (checkout: the order id)
    charged_at: str = ""  # ISO 8601, UTC


class SentMail(Struct, frozen=True):
    kind: str  # "confirmation" or "shipped"
    order_id: str
    to: str
    subject: str
    body: str  # plain text
    sent_at: str  # ISO 8601, UTC, to the microsecond


class Order(Struct, frozen=True):
    """A placed order as checkout keeps it. ``status``: "paid", then "shipped" (with tracking)."""

    order_id: str
    user_id: str
    status: str
    transaction_id: str
    items: list[OrderItem]
    shipping_cost: Money
    total: Money
    address: Address
    email: str
    placed_at: str  # ISO 8601, UTC
    tracking_id: str = ""


class OrderPlaced(Event, topic="orders/placed"):
    """Payment went through: ship the order, empty the cart, send the confirmation."""

    order_id: str
    user_id: str
    email: str
    items: list[OrderItem]
    shipping_cost: Money
    total: Money
    address: Address
    transaction_id: str


class OrderShipped(Event, topic="orders/shipped"):
    order_id: str
    email: str
    tracking_id: str
    address: Address
