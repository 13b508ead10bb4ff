"""Bulkheads: at most ``max_concurrent`` calls in flight from this process to one service, so a
slow service cannot take every pooled connection (the pool is 100) from the others.

Over the cap a call waits briefly for a slot (at most QUEUE_WAIT, never past its deadline), then
fails with ``Unavailable(never_sent=True)``. Why wait at all: a page fans out (the shop's home
converts ten prices at once), so bursts over any fixed cap are normal for a healthy service whose
slots free within a millisecond; refusing them at once would turn load into errors. A stuck
service frees no slot, so its extra callers still fail within QUEUE_WAIT, holding no connection.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from .._chain import Invocation, Next, Site
from .._errors import Unavailable
from .._telemetry.metrics import BULKHEAD_IN_FLIGHT, CALL_REJECTIONS
from .policies import Policies

QUEUE_WAIT = 0.1


class Compartment:
    """A counting semaphore whose waiters give up after a while, served first come first served."""

    __slots__ = ("_waiters", "in_flight", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_enter(self) -> bool:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def enter(self, wait: float) -> bool:
        """Take a slot, waiting at most ``wait`` seconds; False when none came."""
        if self.try_enter():
            return True
        if wait <= 0:
            return False
        slot = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            async with asyncio.timeout(wait):
                await slot
        except TimeoutError:
            if slot.done() and not slot.cancelled():
                return True  # handed over just as the wait ended
            self._waiters.remove(slot)
            return False
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                self.leave()  # pass the slot on
            elif slot in self._waiters:
                self._waiters.remove(slot)
            raise
        return True

    def leave(self) -> None:
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(None)  # the slot goes straight to the longest waiter
                return
        self.in_flight -= 1


class Bulkhead:
    def __init__(self, policies: Policies | None = None, wait: float = QUEUE_WAIT) -> None:
        self._policies = policies or Policies()
        self._wait = wait
        self._compartments: dict[str, Compartment] = {}

    def wants(self, site: Site) -> bool:
        return site.kind == "call" and site.remote

    def compartment(self, service: str) -> Compartment:
        compartment = self._compartments.get(service)
        if compartment is None:
            compartment = Compartment(self._policies.service(service).max_concurrent)
            self._compartments[service] = compartment
            # Read when /metrics is scraped: no cost per call.
            BULKHEAD_IN_FLIGHT.labels(service).set_function(lambda: compartment.in_flight)
        return compartment

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        compartment = self.compartment(invocation.site.service)
        if not compartment.try_enter():
            wait = self._wait
            if invocation.deadline is not None:
                wait = min(wait, invocation.deadline - time.monotonic())
            if not await compartment.enter(wait):
                raise self._reject(invocation, compartment)
        try:
            return await call_next(invocation)
        finally:
            compartment.leave()

    @staticmethod
    def _reject(invocation: Invocation, compartment: Compartment) -> Unavailable:
        site = invocation.site
        invocation.notes["rejected"] = "bulkhead"
        CALL_REJECTIONS.labels(site.caller, site.service, site.method, "bulkhead").inc()
        return Unavailable(
            f"{site.qualname}: {compartment.in_flight} calls to {site.service!r} already in flight "
            f"(max_concurrent = {compartment.limit})",
            never_sent=True,
        )
