"""Fallbacks of optional dependencies (``ads: Ads = optional(get_ads=[])``).

When the dependency cannot answer (unreachable, too slow, breaker open, bulkhead full, a 5xx;
see ``failures.is_outage``) the call returns the declared fallback instead of raising: a fresh
copy of the value, or what the callable returns for the call's arguments. A declared 4xx error
is the dependency's answer and still reaches the caller.

It works on local call sites too: wanting them is what makes the runtime wrap an optional
dependency in a local proxy in a monolith (an exception there would have been a 500 remotely).
It runs outermost, so the call metrics and logs below it still show the failure it covered.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Mapping
from typing import Any

from .._chain import Invocation, Next, Site
from .._telemetry.metrics import FALLBACKS
from .failures import is_outage, reason_of
from .logs import LimitedLog

log = logging.getLogger("archipel.fallback")


class Fallback:
    def __init__(self, optional: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
        """``optional``: caller -> optional dependency -> method -> fallback (``ServiceSpec.optional``)."""
        self._optional = optional
        self._log = LimitedLog(log)

    def wants(self, site: Site) -> bool:
        return site.kind == "call" and site.optional and site.method in self._fallbacks(site)

    def _fallbacks(self, site: Site) -> Mapping[str, Any]:
        return self._optional.get(site.caller, {}).get(site.service, {})

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        try:
            return await call_next(invocation)
        except Exception as exc:
            if not is_outage(exc):
                raise
            site = invocation.site
            reason = reason_of(exc, invocation.notes.get("rejected"))
            FALLBACKS.labels(site.caller, site.service, site.method, reason).inc()
            self._log.warning(
                f"{site.caller} {site.qualname}",
                "%s: %s answered with its fallback (%s: %s)",
                site.caller,
                site.qualname,
                reason,
                exc,
            )
            fallback = self._fallbacks(site)[site.method]
            if not callable(fallback):
                return copy.deepcopy(fallback)  # the caller may change it; the next one must not see that
            result = fallback(**invocation.arguments)
            return await result if inspect.isawaitable(result) else result
