"""The shop's vocabulary: the structs every service sends and receives, and its events."""

from __future__ import annotations

from archipel import Event, Struct


class Money(Struct, frozen=True):
    """An amount as integer units plus nanos (10^-9 units), both with the same sign. No floats."""

    currency_code: str
    units: int
    nanos: int = 0


class Product(Struct, frozen=True):
    id: str
    name: str
    description: str
    picture: str  # path under /static
    price_usd: Money
    categories: list[str]


class CartItem(Struct, frozen=True):
    product_id: str
    quantity: int


class CartContents(Struct):
    user_id: str
    items: list[CartItem]


class Address(Struct, frozen=True):
    street_address: str
    city: str
    state: str
    country: str
    zip_code: str


class CreditCard(Struct, frozen=True):
    number: str
    cvv: str
    expiration_month: int
    expiration_year: int


class OrderItem(Struct, frozen=True):
    product_id: str
    name: str
    quantity: int
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
