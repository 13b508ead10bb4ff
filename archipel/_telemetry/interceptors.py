"""Metrics as interceptors: served requests by HTTP status, and remote calls by outcome.

Label children are resolved once per site (``for_site``), not on every call.
"""

from __future__ import annotations

import time
from typing import Any

from .._chain import Invocation, Next, Site
from .._errors import ArchipelError
from .metrics import CALL_SECONDS, CALLS, RPC_REQUESTS, RPC_SECONDS


def status_of(exc: BaseException) -> int:
    """The HTTP status a served request ends with when it raises ``exc``."""
    if isinstance(exc, ArchipelError):
        return exc.status
    if isinstance(exc, TimeoutError):
        return 504
    return 500


class ServeMetrics:
    def wants(self, site: Site) -> bool:
        return site.kind == "serve"

    def for_site(self, site: Site) -> _ServeMetricsAt:
        return _ServeMetricsAt(site)

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        return await self.for_site(invocation.site)(invocation, call_next)


class _ServeMetricsAt:
    def __init__(self, site: Site) -> None:
        self._site = site
        self._ok = RPC_REQUESTS.labels(site.service, site.method, "200")
        self._seconds = RPC_SECONDS.labels(site.service, site.method)

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        started = time.perf_counter()
        try:
            result = await call_next(invocation)
        except BaseException as exc:
            RPC_REQUESTS.labels(self._site.service, self._site.method, str(status_of(exc))).inc()
            self._seconds.observe(time.perf_counter() - started)
            raise
        self._ok.inc()
        self._seconds.observe(time.perf_counter() - started)
        return result


class CallMetrics:
    def wants(self, site: Site) -> bool:
        return site.kind == "call" and site.remote

    def for_site(self, site: Site) -> _CallMetricsAt:
        return _CallMetricsAt(site)

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        return await self.for_site(invocation.site)(invocation, call_next)


class _CallMetricsAt:
    def __init__(self, site: Site) -> None:
        self._site = site
        self._ok = CALLS.labels(site.caller, site.service, site.method, "ok")
        self._seconds = CALL_SECONDS.labels(site.service, site.method)

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        started = time.perf_counter()
        try:
            result = await call_next(invocation)
        except BaseException as exc:
            outcome = exc.kind if isinstance(exc, ArchipelError) else type(exc).__name__
            CALLS.labels(self._site.caller, self._site.service, self._site.method, outcome).inc()
            self._seconds.observe(time.perf_counter() - started)
            raise
        self._ok.inc()
        self._seconds.observe(time.perf_counter() - started)
        return result
