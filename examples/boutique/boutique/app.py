"""The boutique app: every service of the shop. Where each one runs is the deployer's choice."""

from __future__ import annotations

from archipel import App

from .ads import Ads
from .cart import Cart
from .catalog import Catalog
from .checkout import Checkout
from .currency import Currency
from .email import Email
from .frontend import Frontend
from .payment import Payment
from .recommendation import Recommendation
from .shipping import Shipping

app = App(
    "boutique",
    [Frontend, Catalog, Currency, Cart, Recommendation, Ads, Shipping, Payment, Checkout, Email],
)
