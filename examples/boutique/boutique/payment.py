"""Payment: checks the card (Luhn, brand, expiry, CVV) and "charges" it. Nothing real happens."""

from __future__ import annotations

import datetime
import uuid
from collections import deque

from archipel import ArchipelError, InvalidArgument, Service, rpc

from . import money
from .types import CreditCard, Money, Transaction

KEPT_TRANSACTIONS = 1000


class PaymentDeclined(ArchipelError):
    """The card was refused; the message says why. Nothing was charged."""

    status = 402


def card_digits(number: str) -> str:
    """The digits of a card number typed with spaces or dashes; '' if anything else is in it."""
    digits = number.replace(" ", "").replace("-", "")
    return digits if digits.isascii() and digits.isdigit() else ""


def luhn_ok(digits: str) -> bool:
    if not digits or not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        d = int(char)
        if position % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_brand(digits: str) -> str | None:
    """'visa' (4..., 13/16/19 digits) or 'mastercard' (51-55..., 2221-2720..., 16 digits); else None."""
    if digits.startswith("4") and len(digits) in (13, 16, 19):
        return "visa"
    if len(digits) == 16 and (51 <= int(digits[:2]) <= 55 or 2221 <= int(digits[:4]) <= 2720):
        return "mastercard"
    return None


def check_card(card: CreditCard, today: datetime.date) -> str:
    """Return the card's brand, or raise PaymentDeclined with the reason."""
    digits = card_digits(card.number)
    if not 12 <= len(digits) <= 19:
        raise PaymentDeclined("card declined: the number must have 12 to 19 digits")
    if not luhn_ok(digits):
        raise PaymentDeclined("card declined: number fails the Luhn check")
    brand = card_brand(digits)
    if brand is None:
        raise PaymentDeclined("card declined: only Visa and Mastercard are accepted")
    if not 1 <= card.expiration_month <= 12:
        raise PaymentDeclined("card declined: the expiry month must be between 1 and 12")
    if (card.expiration_year, card.expiration_month) < (today.year, today.month):
        raise PaymentDeclined(
            f"card declined: the card expired in {card.expiration_month:02d}/{card.expiration_year}"
        )
    if not (card.cvv.isascii() and card.cvv.isdigit() and len(card.cvv) in (3, 4)):
        raise PaymentDeclined("card declined: the security code (CVV) must be 3 or 4 digits")
    return brand


class Payment(Service):
    def __init__(self) -> None:
        self._transactions: deque[Transaction] = deque(maxlen=KEPT_TRANSACTIONS)

    @rpc
    async def charge(self, amount: Money, card: CreditCard) -> str:
        """Charge ``amount`` to ``card``; returns the transaction id or raises PaymentDeclined."""
        if not money.is_valid(amount) or not money.is_positive(amount):
            raise InvalidArgument("the amount to charge must be a well-formed positive amount")
        brand = check_card(card, datetime.datetime.now(datetime.UTC).date())
        transaction = Transaction(f"tx-{uuid.uuid4().hex[:16]}", amount, brand, card_digits(card.number)[-4:])
        self._transactions.append(transaction)
        return transaction.transaction_id

    @rpc(idempotent=True)
    async def list_transactions(self, limit: int = 50) -> list[Transaction]:
        """The most recent charges first (kept in memory, bounded): for demos and tests."""
        return list(reversed(self._transactions))[: max(0, limit)]
