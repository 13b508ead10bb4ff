"""Email: renders the order confirmation and the shipping notice, and keeps the sent mail.

Nothing leaves the process: "sending" is recording the mail in the service's store, where
``list_sent`` finds it for the storefront's /mail page and for tests. Each mail is sent once
per order, however often its event arrives.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import jinja2

from archipel import Service, collection, on, rpc

from .money import format_money
from .types import OrderPlaced, OrderShipped, SentMail

MAX_LISTED = 200
SCANNED_FOR_RECIPIENT = 1000  # ``to=`` looks among this many newest mails

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates" / "email"),
    autoescape=False,  # plain-text mail
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)
_templates.filters["money"] = format_money


def render(template: str, **context: object) -> str:
    return _templates.get_template(template).render(**context)


class Email(Service):
    # Each mail twice: by "{order id}/{kind}" (at most one of each kind per order), and by a key
    # sorting by time ("{nanoseconds, zero-padded}/{order id}/{kind}") for newest-first listings.
    by_order = collection("mail_by_order", SentMail)
    by_time = collection("mail_by_time", SentMail)

    @on(OrderPlaced)
    async def send_confirmation(self, event: OrderPlaced) -> None:
        body = render("confirmation.txt", order=event)
        await self._send("confirmation", event.order_id, event.email, f"Your order {event.order_id}", body)

    @on(OrderShipped)
    async def send_shipping_notice(self, event: OrderShipped) -> None:
        body = render("shipped.txt", event=event)
        await self._send(
            "shipped", event.order_id, event.email, f"Order {event.order_id} is on its way", body
        )

    @rpc(idempotent=True)
    async def list_sent(self, to: str = "", order_id: str = "", limit: int = 50) -> list[SentMail]:
        """Sent mail, newest first, optionally only to one address or about one order."""
        limit = max(0, min(limit, MAX_LISTED))
        if order_id:
            found = [m for _, m in await self.by_order.items(prefix=f"{order_id}/")]
            found.sort(key=lambda m: m.sent_at, reverse=True)
        else:
            scanned = SCANNED_FOR_RECIPIENT if to else limit
            found = [m for _, m in await self.by_time.items(limit=scanned, reverse=True)]
        return [m for m in found if not to or m.to == to][:limit]

    async def _send(self, kind: str, order_id: str, to: str, subject: str, body: str) -> None:
        # The inbox already skips a redelivered event. This check is for the same order announced
        # under two event ids (one form submitted to two checkout replicas at once): one mail.
        key = f"{order_id}/{kind}"
        if await self.by_order.get(key) is not None:
            return
        # To the microsecond: the two mails of one order are listed in the order they were sent.
        sent_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
        mail = SentMail(kind, order_id, to, subject, body, sent_at)
        await self.by_order.put(key, mail)
        await self.by_time.put(f"{time.time_ns():020d}/{key}", mail)
