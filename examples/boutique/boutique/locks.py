"""One call at a time per key (an order id, an idempotency key), within one process.

Why this is enough to make a repeated call see the first one's result: a served call's unit of
work commits as the method returns, before a waiting call resumes (SQLite commits inline, without
yielding to the event loop). It does not order calls across processes; see docs/boutique.md.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class KeyedLock:
    def __init__(self) -> None:
        # Weak: a key's lock lives while a call holds or awaits it, then goes away.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            yield
