"""The state layer in the interceptor chain: units of work around served calls, and the inbox
around event handlers.

- ``serve``: a served RPC of a *stateful* service (one that declares collections) is one unit of
  work on its store: its writes and the events it emits commit together when it returns, or not
  at all when it raises.
- ``call`` (monolith only): a direct call of a *stateful* service (one that declares
  collections) gets the same unit of work on the callee's store, so a monolith keeps the promise
  a served call keeps. Stateless services stay plain method calls.
- ``event``: an event id the handler's inbox already holds is skipped (counted as a duplicate);
  otherwise the handler runs in a unit of work that also marks the id, so its effects and the
  mark commit together: at-least-once delivery, exactly-once effects. A service with neither
  collections nor declared events has no such effects, and no inbox: its handlers cost no
  database write, and a redelivery runs them again (at-least-once, as ``@on`` promises).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._chain import Invocation, Next, Site
from .metrics import INBOX_DUPLICATES
from .records import DuplicateDelivery
from .store import Store
from .work import unit_of_work

StoreOf = Callable[[str], Store | None]


class UnitOfWorkInterceptor:
    def __init__(self, store_of: StoreOf, stateful: Callable[[str], bool]) -> None:
        self._store_of = store_of
        self._stateful = stateful

    def wants(self, site: Site) -> bool:
        # Stateless services need none: an event they emit outside a unit of work commits on its
        # own, alone in its transaction, which is all the atomicity there is to keep.
        if site.kind == "serve":
            return self._stateful(site.service)
        return site.kind == "call" and not site.remote and self._stateful(site.service)

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        store = self._store_of(invocation.site.service)
        if store is None:
            return await call_next(invocation)
        async with unit_of_work(store):
            return await call_next(invocation)


class InboxInterceptor:
    """``has_effects(service)``: the service declares collections or events, so what its handlers
    do can be committed once with the inbox mark."""

    def __init__(self, store_of: StoreOf, has_effects: Callable[[str], bool]) -> None:
        self._store_of = store_of
        self._has_effects = has_effects

    def wants(self, site: Site) -> bool:
        return site.kind == "event" and self._has_effects(site.service)

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        envelope = invocation.envelope
        store = self._store_of(invocation.site.service)
        if store is None or envelope is None:
            return await call_next(invocation)
        handler = invocation.site.qualname
        if await store.inbox_seen(handler, envelope.id):
            INBOX_DUPLICATES.labels(invocation.site.service, handler).inc()
            return None
        try:
            async with unit_of_work(store) as work:
                work.inbox.append((handler, envelope.id))
                return await call_next(invocation)
        except DuplicateDelivery:  # a concurrent delivery committed first (the store counted it)
            return None
