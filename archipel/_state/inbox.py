"""The inbox: which events each handler has already taken, so a redelivery changes nothing."""

from __future__ import annotations

from .metrics import INBOX_DUPLICATES
from .store import Store
from .work import current_work


class Inbox:
    """Used by event dispatch around a handler:

    >>> if await inbox.seen(handler, event.id): return        # a redelivery: acknowledge only
    >>> async with unit_of_work(store):
    ...     inbox.mark(handler, event.id)                     # committed with the handler's writes
    ...     await method(event)

    Two deliveries racing past ``seen`` both run the handler, but only the first commit keeps
    its mark; the second raises DuplicateDelivery and its writes are discarded.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    async def seen(self, handler: str, event_id: str) -> bool:
        found = await self.store.inbox_seen(handler, event_id)
        if found:
            INBOX_DUPLICATES.labels(self.store.service, handler).inc()
        return found

    def mark(self, handler: str, event_id: str) -> None:
        """Record in the current unit of work that ``handler`` took ``event_id``."""
        work = current_work(self.store)
        if work is None:
            raise RuntimeError(
                f"Inbox.mark({handler!r}, {event_id!r}) needs a unit of work on the store of "
                f"{self.store.service!r} (async with unit_of_work(store): ...)"
            )
        work.inbox.append((handler, event_id))
