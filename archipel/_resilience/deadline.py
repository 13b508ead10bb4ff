"""Deadlines: every remote call and every served request has one, and it travels with the work.

A caller's deadline is the tighter of its own remaining time (inherited through the context)
and the method's ``timeout``. A server takes the deadline its caller asked for, capped at the
method's ``max_timeout``, or its ``timeout`` when none was asked, and never works past it; the
calls it makes meanwhile inherit what is left.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .. import _context
from .._chain import Invocation, Next, Site
from .._errors import DeadlineExceeded
from .policies import Policies


class CallDeadline:
    """Outgoing remote calls: sets ``invocation.deadline``; transports send what remains."""

    def __init__(self, policies: Policies | None = None) -> None:
        self._policies = policies or Policies()

    def wants(self, site: Site) -> bool:
        return site.kind == "call" and site.remote

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        site = invocation.site
        now = time.monotonic()
        deadline = now + self._policies.method(site.service, site.method).timeout
        inherited = _context.remaining_seconds()
        if inherited is not None:
            if inherited <= 0:
                raise DeadlineExceeded(f"{site.qualname}: the deadline passed before the call")
            deadline = min(deadline, now + inherited)
        invocation.deadline = deadline
        return await call_next(invocation)


class ServeDeadline:
    """Served requests: the caller's deadline (``invocation.deadline`` set by the transport from
    the header) capped at ``max_timeout``, or ``timeout`` when the caller sent none. The handler
    runs under it, and its own calls inherit it."""

    def __init__(self, policies: Policies | None = None) -> None:
        self._policies = policies or Policies()

    def wants(self, site: Site) -> bool:
        return site.kind == "serve"

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        site = invocation.site
        policy = self._policies.method(site.service, site.method)
        now = time.monotonic()
        if invocation.deadline is None:
            seconds = policy.timeout
        else:
            seconds = min(invocation.deadline - now, policy.max_timeout)
            if seconds <= 0:
                raise DeadlineExceeded("the caller's deadline has already passed")
        invocation.deadline = now + seconds
        _context.set_timeout(seconds)
        async with asyncio.timeout(seconds):
            return await call_next(invocation)
