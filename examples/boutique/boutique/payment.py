"""Payment: checks the card (Luhn, brand, expiry, CVV) and "charges" it. Nothing real happens.

Every charge carries the caller's idempotency key (checkout passes the order id): a charge with
a key already seen returns that first transaction instead of charging again. Transactions are
kept in the service's store, so they survive restarts.
"""

from __future__ import annotations

import datetime
import time
import uuid

from archipel import ArchipelError, Conflict, InvalidArgument, Service, collection, rpc

from . import money
from .locks import KeyedLock
from .types import MAX_ID, MAX_UNITS, CreditCard, IdempotencyKey, Money, PositiveAmount, Transaction

MAX_KEY = MAX_ID
MAX_LISTED = 1000


class PaymentDeclined(ArchipelError):
    """The card was refused; the message says why. Nothing was charged."""

    status = 402


class MalformedCard(PaymentDeclined, InvalidArgument):
    """The card's details are not well-formed (digits, expiry month, CVV): declined before anything
    is asked of the card, and answered as an invalid argument (422), as the published schema says."""

    status = 422


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


def check_card_format(card: CreditCard) -> CreditCard:
    """The rules the schema states of a card (see types.CreditCard); MalformedCard otherwise."""
    if not 12 <= len(card_digits(card.number)) <= 19:
        raise MalformedCard("card declined: the number must have 12 to 19 digits")
    if not 1 <= card.expiration_month <= 12:
        raise MalformedCard("card declined: the expiry month must be between 1 and 12")
    if not (card.cvv.isascii() and card.cvv.isdigit() and len(card.cvv) in (3, 4)):
        raise MalformedCard("card declined: the security code (CVV) must be 3 or 4 digits")
    return card


def check_card(card: CreditCard, today: datetime.date) -> str:
    """Return the card's brand, or raise PaymentDeclined with the reason."""
    check_card_format(card)
    digits = card_digits(card.number)
    if not luhn_ok(digits):
        raise PaymentDeclined("card declined: number fails the Luhn check")
    brand = card_brand(digits)
    if brand is None:
        raise PaymentDeclined("card declined: only Visa and Mastercard are accepted")
    if (card.expiration_year, card.expiration_month) < (today.year, today.month):
        raise PaymentDeclined(
            f"card declined: the card expired in {card.expiration_month:02d}/{card.expiration_year}"
        )
    return brand


def check_idempotency_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY:
        raise InvalidArgument(f"idempotency_key must be 1 to {MAX_KEY} characters")
    if "\0" in key:
        raise InvalidArgument("idempotency_key must not contain NUL characters")
    return key


def same_charge(earlier: Transaction, amount: Money) -> str:
    """The earlier charge's id when ``amount`` is what it charged; Conflict otherwise."""
    if earlier.amount != amount:
        raise Conflict(
            f"idempotency key {earlier.idempotency_key!r} was already used to charge "
            f"{money.format_money(earlier.amount)}, not {money.format_money(amount)}"
        )
    return earlier.transaction_id


class Payment(Service):
    # Every charge, under a key that sorts by time (zero-padded nanoseconds): newest first in reverse.
    transactions = collection("transactions", Transaction)
    # The charge made under each idempotency key.
    charges = collection("charges", Transaction)

    def __init__(self) -> None:
        # A retry may arrive while its first attempt still runs: the second waits, then finds it.
        self._charging = KeyedLock()

    # Idempotent since every charge has a key: a call repeated with the same key (a retry after a
    # timeout or a lost answer, a resubmitted checkout, before or after a restart) gets the charge
    # the first one committed, waiting for it if it is still running, and charges nothing more.
    @rpc(idempotent=True)
    async def charge(self, amount: PositiveAmount, card: CreditCard, idempotency_key: IdempotencyKey) -> str:
        """Charge ``amount`` to ``card`` once per ``idempotency_key``; returns the transaction id.

        Raises PaymentDeclined (nothing charged), or Conflict when the key was used for another amount.
        """
        if not money.is_valid(amount) or not money.is_positive(amount) or amount.units > MAX_UNITS:
            raise InvalidArgument(
                f"the amount to charge must be a well-formed positive amount of at most {MAX_UNITS:,} units"
            )
        check_idempotency_key(idempotency_key)
        check_card_format(card)  # a malformed card is refused, not answered with an earlier charge
        async with self._charging.hold(idempotency_key):
            earlier = await self.charges.get(idempotency_key)
            if earlier is not None:
                return same_charge(earlier, amount)
            return await self._charge(amount, card, idempotency_key)

    async def _charge(self, amount: Money, card: CreditCard, idempotency_key: str) -> str:
        now = datetime.datetime.now(datetime.UTC)
        brand = check_card(card, now.date())
        transaction = Transaction(
            f"tx-{uuid.uuid4().hex[:16]}",
            amount,
            brand,
            card_digits(card.number)[-4:],
            idempotency_key,
            now.isoformat(timespec="seconds"),
        )
        # Both rows commit with this call, or neither (declined, crashed): no key without its charge.
        await self.transactions.put(f"{time.time_ns():020d}-{transaction.transaction_id}", transaction)
        await self.charges.put(idempotency_key, transaction)
        return transaction.transaction_id

    @rpc(idempotent=True)
    async def list_transactions(self, limit: int = 50) -> list[Transaction]:
        """The most recent charges first (at most MAX_LISTED): for demos and tests."""
        newest = await self.transactions.items(limit=max(0, min(limit, MAX_LISTED)), reverse=True)
        return [transaction for _, transaction in newest]
