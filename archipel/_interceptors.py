"""The default interceptor chain of a process, in order (outermost first).

Each interceptor picks the sites it works on (``wants``), so one list serves calls, served
requests and event dispatch:

- calls to a remote service: fallback, metrics, deadline, retry, bulkhead, breaker, then HTTP.
  The fallback is outermost so the metrics still count the failure it covers; the deadline
  wraps the retries so they fit inside it; the bulkhead and the breaker are per attempt, so a
  retry's back-off holds no slot and each attempt picks its replica;
- calls to a local service: only the fallback, and only for an optional dependency's methods
  with a fallback; every other local call stays a plain method call;
- served requests: metrics, deadline, then the method;
- event dispatch: (state: inbox and unit of work), then the handler.
"""

from __future__ import annotations

from ._app import App
from ._chain import Interceptor
from ._resilience.breaker import Breakers, Endpoints
from ._resilience.bulkhead import Bulkhead
from ._resilience.deadline import CallDeadline, ServeDeadline
from ._resilience.fallback import Fallback
from ._resilience.policies import Policies
from ._resilience.retry import Retry
from ._telemetry.interceptors import CallMetrics, ServeMetrics


def default_interceptors(
    app: App, policies: Policies | None = None, *, endpoints: Endpoints | None = None
) -> list[Interceptor]:
    """The chain of a process running ``app`` with ``policies`` (default: the built-in ones and
    ``@rpc(...)``'s). ``endpoints(service)`` lists a service's replicas (the transport's
    ``endpoints``); without it, remote calls get no circuit breaker."""
    if policies is None:
        policies = Policies.from_config(None, app)
    chain: list[Interceptor] = [
        ServeMetrics(),
        ServeDeadline(policies),
        Fallback({name: spec.optional for name, spec in app.specs.items()}),
        CallMetrics(),
        CallDeadline(policies),
        Retry(policies),
        Bulkhead(policies),
    ]
    if endpoints is not None:
        chain.append(Breakers(policies, endpoints))
    return chain
