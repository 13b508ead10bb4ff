"""Email: renders the order confirmation and the shipping notice, and keeps the sent mail.

Nothing leaves the process: mail is kept in memory (the last few hundred) and listed by
``list_sent`` for the storefront's /mail page and for tests. Each mail is sent once per order
even when its event is delivered twice.
"""

from __future__ import annotations

import datetime
from collections import OrderedDict, deque
from pathlib import Path

import jinja2

from archipel import Service, on, rpc

from .money import format_money
from .types import OrderPlaced, OrderShipped, SentMail

KEPT_MAILS = 500

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
    def __init__(self) -> None:
        self._sent: deque[SentMail] = deque(maxlen=KEPT_MAILS)
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    @on(OrderPlaced)
    async def send_confirmation(self, event: OrderPlaced) -> None:
        body = render("confirmation.txt", order=event)
        self._record("confirmation", event.order_id, event.email, f"Your order {event.order_id}", body)

    @on(OrderShipped)
    async def send_shipping_notice(self, event: OrderShipped) -> None:
        body = render("shipped.txt", event=event)
        self._record("shipped", event.order_id, event.email, f"Order {event.order_id} is on its way", body)

    @rpc(idempotent=True)
    async def list_sent(self, to: str = "", order_id: str = "", limit: int = 50) -> list[SentMail]:
        """Sent mail, newest first, optionally only to one address or about one order."""
        found = [
            m
            for m in reversed(self._sent)
            if (not to or m.to == to) and (not order_id or m.order_id == order_id)
        ]
        return found[: max(0, limit)]

    def _record(self, kind: str, order_id: str, to: str, subject: str, body: str) -> None:
        key = (kind, order_id)
        if key in self._seen:
            return
        self._seen[key] = None
        while len(self._seen) > KEPT_MAILS * 2:
            self._seen.popitem(last=False)
        sent_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._sent.append(SentMail(kind, order_id, to, subject, body, sent_at))
