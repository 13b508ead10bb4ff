"""Circuit breakers, one per target replica (a service at one base URL).

``breaker_failures`` consecutive failures of a replica (transport failures, timeouts, 5xx; a
declared 4xx is an answer, see ``failures.is_outage``) open its breaker: no call goes to it for
``breaker_cooldown`` seconds. Then it is half-open: one call, the probe, goes through; its success
closes the breaker, its failure opens it for another cool-down.

The interceptor picks the replica of each attempt (``invocation.endpoint``) among those whose
breaker lets a call through, round-robin, avoiding those a retry already tried. When none does,
the call fails at once with ``Unavailable(never_sent=True)``: no connection, no waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._chain import Invocation, Next, Site
from .._errors import DeadlineExceeded, Unavailable
from .._telemetry.metrics import BREAKER_STATE, CALL_REJECTIONS
from .failures import is_outage
from .logs import LimitedLog
from .policies import Policies

log = logging.getLogger("archipel.breaker")

CLOSED, OPEN, HALF_OPEN = 0, 1, 2  # also the values of the archipel_breaker_state gauge
STATES = ("closed", "open", "half-open")

Endpoints = Callable[[str], Sequence[str]]


class CircuitBreaker:
    """The state machine of one replica's breaker. Times are ``time.monotonic()`` values."""

    __slots__ = ("cooldown", "failures", "opened_at", "probing", "state", "threshold")

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.state = CLOSED
        self.failures = 0  # consecutive
        self.opened_at = 0.0
        self.probing = False  # half-open: the one probe is in flight

    def available(self, now: float) -> bool:
        """Whether a call could go through now (without taking the probe)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return now - self.opened_at >= self.cooldown
        return not self.probing

    def admit(self, now: float) -> bool:
        """Let a call through if the state allows it; after the cool-down that call is the probe."""
        if self.state == CLOSED:
            return True
        if not self.available(now):
            return False
        self.state = HALF_OPEN
        self.probing = True
        return True

    def succeeded(self) -> bool:
        """Record an answer; True when it closed the breaker."""
        self.failures = 0
        if self.state == CLOSED:
            return False
        self.state = CLOSED
        self.probing = False
        return True

    def failed(self, now: float) -> bool:
        """Record a failure; True when it opened the breaker (again)."""
        self.failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.threshold):
            self.state = OPEN
            self.opened_at = now
            self.probing = False
            return True
        return False

    def ready_again(self) -> None:
        """The replica's health probe passed: an open breaker lets its probe call through now
        instead of at the end of its cool-down (a restarted replica serves again within a probe
        interval, not a cool-down)."""
        if self.state == OPEN:
            self.opened_at = float("-inf")

    def released(self) -> None:
        """A call ended without a verdict (cancelled): a probe's turn goes to the next call."""
        if self.state == HALF_OPEN:
            self.probing = False


class _Replicas:
    """A service's replicas with their breakers, in the transport's order, and whose turn it is."""

    __slots__ = ("members", "source", "turn")

    def __init__(self, source: Sequence[str], members: list[tuple[str, CircuitBreaker]]) -> None:
        self.source = source  # the transport's list: when it changes, so do the members
        self.members = members
        self.turn = 0


class Breakers:
    """The interceptor: a breaker per (service, replica URL); ``endpoints(service)`` lists the
    replicas (``HttpTransport.endpoints``)."""

    def __init__(self, policies: Policies | None, endpoints: Endpoints) -> None:
        self._policies = policies or Policies()
        self._endpoints = endpoints
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._replicas: dict[str, _Replicas] = {}
        self._log = LimitedLog(log)

    def wants(self, site: Site) -> bool:
        return site.kind == "call" and site.remote

    def back_in_rotation(self, endpoint: str) -> None:
        """``endpoint`` passed its health probe again (``Membership.on_back``)."""
        for (_, url), breaker in self._breakers.items():
            if url == endpoint:
                breaker.ready_again()

    def breaker(self, service: str, endpoint: str) -> CircuitBreaker:
        breaker = self._breakers.get((service, endpoint))
        if breaker is None:
            policy = self._policies.service(service)
            breaker = CircuitBreaker(policy.breaker_failures, policy.breaker_cooldown)
            self._breakers[service, endpoint] = breaker
            BREAKER_STATE.labels(service, endpoint).set(CLOSED)
        return breaker

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        site = invocation.site
        now = time.monotonic()
        if invocation.deadline is not None and invocation.deadline <= now:
            # Late before sending: not the replica's fault, so no breaker hears of it.
            raise DeadlineExceeded(f"{site.qualname}: the deadline passed before the call")
        endpoint = invocation.endpoint
        if endpoint is None:
            chosen = self._choose(site.service, invocation.notes.get("avoid", ()), now)
            if chosen is None:
                raise self._reject(invocation)
            endpoint, breaker = chosen
            invocation.endpoint = endpoint
        else:  # chosen by an outer interceptor: honoured, and its outcome recorded
            breaker = self.breaker(site.service, endpoint)
        try:
            result = await call_next(invocation)
        except Exception as exc:
            if is_outage(exc):
                if breaker.failed(time.monotonic()):
                    self._opened(site.service, endpoint, breaker, exc)
            elif breaker.succeeded():
                self._closed(site.service, endpoint)
            raise
        except BaseException:
            breaker.released()
            raise
        if breaker.succeeded():
            self._closed(site.service, endpoint)
        return result

    def _choose(self, service: str, avoid: Sequence[str], now: float) -> tuple[str, CircuitBreaker] | None:
        """The next replica round-robin whose breaker lets a call through, preferring those not
        in ``avoid``; None when every breaker is open."""
        source = self._endpoints(service)
        replicas = self._replicas.get(service)
        if replicas is None or (replicas.source is not source and list(replicas.source) != list(source)):
            members = [(url, self.breaker(service, url)) for url in source]
            replicas = self._replicas[service] = _Replicas(source, members)
        members = replicas.members
        count = len(members)
        if count == 0:
            return None
        start = replicas.turn
        replicas.turn = (start + 1) % count
        second_choice: tuple[str, CircuitBreaker] | None = None
        for step in range(count):
            url, breaker = members[(start + step) % count]
            if breaker.state == CLOSED and url not in avoid:  # the usual case, decided at once
                return url, breaker
            if url in avoid:
                if second_choice is None and breaker.available(now):
                    second_choice = (url, breaker)
            elif self._admit(service, url, breaker, now):
                return url, breaker
        if second_choice is not None and self._admit(service, *second_choice, now):
            return second_choice
        return None

    @staticmethod
    def _admit(service: str, endpoint: str, breaker: CircuitBreaker, now: float) -> bool:
        before = breaker.state
        if not breaker.admit(now):
            return False
        if breaker.state != before:  # open -> half-open: this call is the probe
            BREAKER_STATE.labels(service, endpoint).set(breaker.state)
        return True

    def _reject(self, invocation: Invocation) -> Unavailable:
        site = invocation.site
        invocation.notes["rejected"] = "breaker"
        CALL_REJECTIONS.labels(site.caller, site.service, site.method, "breaker").inc()
        count = len(self._endpoints(site.service))
        return Unavailable(
            f"{site.qualname}: the circuit breaker of every replica of {site.service!r} is open "
            f"({count} replica{'s' if count != 1 else ''})",
            never_sent=True,
        )

    def _opened(self, service: str, endpoint: str, breaker: CircuitBreaker, exc: Exception) -> None:
        BREAKER_STATE.labels(service, endpoint).set(OPEN)
        message = "circuit breaker of %s at %s opened for %.3gs after %d consecutive failures; last: %s"
        args = (service, endpoint, breaker.cooldown, breaker.failures, exc)
        if breaker.failures == breaker.threshold:  # from closed: always worth a line
            log.warning(message, *args)
        else:  # a failed probe: once per interval per replica, however long the outage
            self._log.warning(f"reopen {service} {endpoint}", message, *args)

    def _closed(self, service: str, endpoint: str) -> None:
        BREAKER_STATE.labels(service, endpoint).set(CLOSED)
        log.warning("circuit breaker of %s at %s closed: it answers again", service, endpoint)
