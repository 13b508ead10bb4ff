"""Retries of remote calls: idempotent methods after a transport failure or a timeout, any
method when the request provably never left (``Unavailable.never_sent``). Each retry goes to
another replica when there is one (``notes["avoid"]``), after a jittered exponential back-off,
and only while the deadline allows: retries never make a call slower than its ``timeout``.

A call a local policy refused (every breaker open, bulkhead full: ``notes["rejected"]``) is not
retried: the refusal is the fast answer, and trying again would only delay it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from .._backoff import backoff_delay as jittered
from .._chain import Invocation, Next, Site
from .._errors import DeadlineExceeded, Unavailable
from .._telemetry.metrics import CALL_RETRIES
from .policies import Policies

MAX_BACKOFF = 1.0


def backoff_delay(attempt: int, base: float, draw: Callable[[], float] = random.random) -> float:
    """A call's pause after failed attempt ``attempt``: capped at MAX_BACKOFF (see ``_backoff``)."""
    return jittered(attempt, base, MAX_BACKOFF, draw)


class Retry:
    def __init__(self, policies: Policies | None = None) -> None:
        self._policies = policies or Policies()

    def wants(self, site: Site) -> bool:
        return (
            site.kind == "call"
            and site.remote
            and self._policies.method(site.service, site.method).retries > 0
        )

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        while True:
            try:
                return await call_next(invocation)
            except (Unavailable, DeadlineExceeded) as exc:
                delay = self._pause(invocation, exc)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            site = invocation.site
            CALL_RETRIES.labels(site.caller, site.service, site.method).inc()
            if invocation.endpoint is not None:
                invocation.notes.setdefault("avoid", []).append(invocation.endpoint)
            invocation.endpoint = None
            invocation.attempt += 1

    def _pause(self, invocation: Invocation, exc: Exception) -> float | None:
        """How long to wait before trying again, or None when the call must not be retried."""
        site = invocation.site
        policy = self._policies.method(site.service, site.method)
        if invocation.attempt > policy.retries or invocation.notes.get("rejected"):
            return None
        if not (site.idempotent or (isinstance(exc, Unavailable) and exc.never_sent)):
            return None
        delay = backoff_delay(invocation.attempt, policy.backoff)
        if invocation.deadline is not None and time.monotonic() + delay >= invocation.deadline:
            return None
        return delay
