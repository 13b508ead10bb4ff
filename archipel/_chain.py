"""The interceptor chain: the one seam every call, every served RPC and every event dispatch
goes through. Deadlines, retries, breakers, bulkheads, fallbacks, metrics (and later
authentication and tracing) are interceptors; transports and the runtime never grow inline
policy code.

A chain is composed once per *site* (a caller's method of a dependency, a served method, a
handler), when the runtime wires the process. Each interceptor says whether it wants that site
(``wants``): one that has nothing to do there is left out, so a site without interceptors costs
nothing, which is what keeps a monolith's direct call a plain method call.

An interceptor::

    class Timing:
        def wants(self, site: Site) -> bool:
            return site.kind == "serve"

        async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
            started = time.perf_counter()
            try:
                return await call_next(invocation)
            finally:
                observe(invocation.site.qualname, time.perf_counter() - started)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from ._events.bus import Envelope

Kind = Literal["call", "serve", "event"]


@dataclass(frozen=True, slots=True)
class Site:
    """Where a chain runs, known when the process is wired.

    - ``call``: ``caller`` calls ``service.method`` (``remote`` when it crosses a process);
    - ``serve``: this process serves ``service.method`` to a remote caller;
    - ``event``: ``service``'s handler ``method`` takes events of ``topic``.
    """

    kind: Kind
    service: str
    method: str
    caller: str = ""
    remote: bool = False
    idempotent: bool = False
    optional: bool = False  # the caller declared this dependency optional (see ``optional()``)
    topic: str = ""

    @property
    def qualname(self) -> str:
        return f"{self.service}.{self.method}"


@dataclass(slots=True)
class Invocation:
    """One call, served request or event delivery travelling down a chain."""

    site: Site
    arguments: dict[str, Any]
    envelope: Envelope | None = None  # event dispatch: the event as it arrived
    deadline: float | None = None  # loop-clock time by which the work must end (None: none yet)
    endpoint: str | None = None  # remote calls: the replica chosen for this attempt
    attempt: int = 1
    notes: dict[str, Any] = field(default_factory=dict)  # per-invocation scratch for interceptors


Next = Callable[[Invocation], Awaitable[Any]]


class Interceptor(Protocol):
    def wants(self, site: Site) -> bool:
        """Whether this interceptor has work at ``site``; decided once, at wiring time."""

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        """Do the work around ``call_next(invocation)`` and return its result (or raise)."""


class SiteBound(Protocol):
    async def __call__(self, invocation: Invocation, call_next: Next) -> Any: ...


def compose(site: Site, interceptors: Sequence[Interceptor], terminal: Next) -> Next:
    """``interceptors[0]`` outermost, ``terminal`` last; only those that want ``site`` join.

    An interceptor may also have ``for_site(site)``, returning the callable to use at that site:
    whatever depends on the site only (metric label children, the site's policy) is then looked
    up once here rather than on every call.
    """
    chain = terminal
    for interceptor in reversed([i for i in interceptors if i.wants(site)]):
        bind = getattr(interceptor, "for_site", None)
        chain = _link(interceptor if bind is None else bind(site), chain)
    return chain


def wanted(site: Site, interceptors: Sequence[Interceptor]) -> bool:
    """Whether any interceptor has work at ``site``."""
    return any(i.wants(site) for i in interceptors)


def _link(interceptor: Interceptor | SiteBound, call_next: Next) -> Next:
    async def step(invocation: Invocation) -> Any:
        return await interceptor(invocation, call_next)

    return step
