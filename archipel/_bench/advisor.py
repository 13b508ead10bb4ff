"""The placement advisor's algorithm: which services to run in one process, from measurements.

Pure: measured edges and services in, groups and their expected gain out; no I/O. The rules,
applied by greedy agglomerative merging (every service starts alone; the pair of groups with the
heaviest link between them that no rule forbids is merged; repeat until no pair is left):

1. **Chatty pairs together.** The link between two groups weighs what their remote calls cost
   per visit of the mix: for each edge (caller -> callee, method), calls per visit x (what a hop
   adds to the caller's wait, i.e. its measured wait minus the callee's handler time, plus the
   CPU a hop costs both processes). A merged pair no longer pays it: that is the expected gain.
2. **Optional dependencies stay apart.** A service some other service declares
   ``optional(...)`` keeps its own process, so that its failure (a crash, a leak) stays
   contained and its callers fall back instead of going down with it.
3. **State and event consumers keep their own process unless their edges dominate.** A service
   with ``collection``s or ``@on`` handlers scales and fails on its own terms (storage, a queue
   to drain); it joins a group only when its link to that group is at least ``dominance`` of the
   whole app's hop cost per visit.
4. **The public edge takes the chatty services it calls**, but two groups that each serve pages
   (each a front door, scaled with the visitors) are not merged.
5. **No group becomes the bottleneck.** A group's CPU at the measured rate (its services' CPU,
   less the hops merging saves) must stay below ``cpu_bound`` cores.

Ties are broken by the groups' names, so the same measurements always give the same advice.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

OPTIONAL = "optional dependency: kept apart so that its failure stays contained"
FRONT_DOORS = "serves pages, as the other group does: front doors scale with visitors, apart"


class AdviceError(ValueError):
    """Measurements the advisor cannot use; the message names what is wrong."""


@dataclass(frozen=True)
class Edge:
    """Remote calls of one method, measured under the mix."""

    caller: str
    callee: str
    method: str
    per_visit: float  # calls per visit of the mix
    wait_ms: float  # mean time the caller waited for one call
    serve_ms: float = 0.0  # mean time the callee's handler took (stays when merged)

    @property
    def hop_ms(self) -> float:
        """What the hop adds to the caller's wait: encoding, HTTP, the other process's turn."""
        return max(0.0, self.wait_ms - self.serve_ms)


@dataclass(frozen=True)
class ServiceInfo:
    """One service as measured alone in its process, and what the app declares about it."""

    name: str
    cpu_ms_per_visit: float = 0.0  # its process's CPU per visit of the mix
    messages_per_visit: float = 0.0  # RPC requests served + calls made + pages served, per visit
    stateful: bool = False  # has collections
    consumer: bool = False  # has @on handlers
    optional: bool = False  # some service declares it optional(...)
    edge: bool = False  # serves the app's pages


@dataclass(frozen=True)
class Rules:
    rate: float  # visits per second the measurements were taken at
    cpu_bound: float = 0.5  # most cores one group may use at ``rate``
    dominance: float = 0.5  # share of the app's hop cost that lets a stateful/consumer service join
    hop_cpu_ms: float | None = None  # CPU of one hop (both sides); None: estimated (hop_cpu_estimate)


@dataclass(frozen=True)
class Group:
    services: tuple[str, ...]
    hops_per_visit: float  # remote calls per visit the group turns into local calls
    latency_ms_per_visit: float  # caller wait saved per visit (sum over the hops removed)
    cpu_ms_per_visit: float  # CPU saved per visit
    cpu_cores: float  # the group's expected CPU at the measured rate

    @property
    def name(self) -> str:
        """The name ``archipel bench --placement`` gives this group's process."""
        return "-".join(self.services)[:40].replace("_", "-")


@dataclass(frozen=True)
class Advice:
    groups: tuple[Group, ...]  # only groups of two or more services; the rest run alone
    alone: tuple[str, ...]
    reasons: Mapping[str, str]  # why a service was kept apart, by service
    hop_cpu_ms: float
    total_hop_ms_per_visit: float  # what all the app's hops cost per visit (rule 1's weights)
    rate: float

    @property
    def hops_per_visit(self) -> float:
        return sum(g.hops_per_visit for g in self.groups)

    @property
    def latency_ms_per_visit(self) -> float:
        return sum(g.latency_ms_per_visit for g in self.groups)

    @property
    def cpu_ms_per_visit(self) -> float:
        return sum(g.cpu_ms_per_visit for g in self.groups)

    def placement(self, name: str = "suggested") -> str | None:
        """``NAME=a+b,c+d`` for ``archipel bench --placement``; None when nothing is grouped."""
        if not self.groups:
            return None
        return f"{name}=" + ",".join("+".join(g.services) for g in self.groups)


@dataclass
class _Cluster:
    services: set[str]
    edge_hops: list[Edge] = field(default_factory=list)  # edges made local by merging

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(sorted(self.services))


def hop_cpu_estimate(services: Iterable[ServiceInfo]) -> float:
    """CPU of one hop, both sides: the median CPU per message (a request served or a call made)
    of the services without pages. Their processes do little but take and send calls, so that
    is what a message costs, handler and idle work included; those extras roughly stand in for
    the hop's other side. An estimate: the verification run measures what merging really saves.
    0 when no such service exchanged a message."""
    per_message = [
        s.cpu_ms_per_visit / s.messages_per_visit for s in services if not s.edge and s.messages_per_visit > 0
    ]
    return statistics.median(per_message) if per_message else 0.0


def advise(services: Sequence[ServiceInfo], edges: Sequence[Edge], rules: Rules) -> Advice:
    """Group ``services`` by the rules of this module; raises AdviceError on bad measurements."""
    by_name = _check(services, edges, rules)
    hop_cpu = hop_cpu_estimate(services) if rules.hop_cpu_ms is None else rules.hop_cpu_ms
    merger = _Merger(by_name, [e for e in edges if e.caller != e.callee], rules, hop_cpu)
    clusters = merger.run()
    groups = []
    for cluster in clusters:
        if len(cluster.services) < 2:
            continue
        hops = cluster.edge_hops
        groups.append(
            Group(
                services=_ordered(cluster.services, by_name),
                hops_per_visit=sum(e.per_visit for e in hops),
                latency_ms_per_visit=sum(e.per_visit * e.hop_ms for e in hops),
                cpu_ms_per_visit=sum(e.per_visit * hop_cpu for e in hops),
                cpu_cores=merger.cores(cluster.services, hops),
            )
        )
    grouped = {s for g in groups for s in g.services}
    alone = tuple(s for s in by_name if s not in grouped)
    return Advice(
        groups=tuple(sorted(groups, key=lambda g: (-g.hops_per_visit, g.services))),
        alone=alone,
        reasons={s: merger.reasons[s][1] for s in alone if s in merger.reasons},
        hop_cpu_ms=hop_cpu,
        total_hop_ms_per_visit=merger.total,
        rate=rules.rate,
    )


class _Merger:
    """Rules 1-5 of the module, applied by greedy agglomerative merging."""

    def __init__(
        self, by_name: Mapping[str, ServiceInfo], edges: Sequence[Edge], rules: Rules, hop_cpu: float
    ) -> None:
        self.by_name, self.edges, self.rules, self.hop_cpu = by_name, edges, rules, hop_cpu
        self.total = sum(self.weight(e) for e in edges)
        self.reasons: dict[str, tuple[float, str]] = {}  # kept apart -> (heaviest link refused, why)

    def weight(self, edge: Edge) -> float:
        return edge.per_visit * (edge.hop_ms + self.hop_cpu)

    def cores(self, services: set[str], local: Sequence[Edge]) -> float:
        """A process's expected CPU at the measured rate, with ``local`` calls made in-process."""
        cpu = sum(self.by_name[s].cpu_ms_per_visit for s in services)
        saved = sum(e.per_visit * self.hop_cpu for e in local)
        return max(0.0, cpu - saved) * self.rules.rate / 1000

    def run(self) -> list[_Cluster]:
        clusters = [_Cluster({name}) for name in sorted(self.by_name)]
        while (best := self._best(clusters)) is not None:
            a, b, between = best
            clusters = [c for c in clusters if c is not a and c is not b]
            clusters.append(_Cluster(a.services | b.services, [*a.edge_hops, *b.edge_hops, *between]))
            clusters.sort(key=lambda c: c.key)
        return clusters

    def _best(self, clusters: list[_Cluster]) -> tuple[_Cluster, _Cluster, list[Edge]] | None:
        """The heaviest allowed link; ties go to the first pair by name."""
        best: tuple[float, _Cluster, _Cluster, list[Edge]] | None = None
        for i, a in enumerate(clusters):
            for b in clusters[i + 1 :]:
                between = [e for e in self.edges if _crosses(e, a.services, b.services)]
                link = sum(self.weight(e) for e in between)
                if link <= 0 or (best is not None and link <= best[0]):
                    continue
                refused = self._refusal(a, b, link, between)
                if refused is not None:
                    for name in refused[1]:  # each keeps the reason of its heaviest refused link
                        if name not in self.reasons or link > self.reasons[name][0]:
                            self.reasons[name] = (link, refused[0])
                    continue
                best = (link, a, b, between)
        return None if best is None else best[1:]

    def _refusal(
        self, a: _Cluster, b: _Cluster, link: float, between: list[Edge]
    ) -> tuple[str, set[str]] | None:
        """Why ``a`` and ``b`` may not merge (rules 2-5), and the services that rule keeps apart."""
        both = a.services | b.services
        for name in sorted(both):
            if self.by_name[name].optional:
                return OPTIONAL, {name}
        if self._serves_pages(a) and self._serves_pages(b):
            return FRONT_DOORS, both
        for mine, theirs in ((a, b), (b, a)):
            (name,) = mine.services if len(mine.services) == 1 else ("",)
            info = self.by_name.get(name)
            if (
                info is not None
                and (info.stateful or info.consumer)
                and link < self.rules.dominance * self.total
            ):
                kind = "state (collections)" if info.stateful else "event handlers"
                return (
                    f"has {kind}: its link to {'+'.join(sorted(theirs.services))} is "
                    f"{link / self.total:.0%} of the hop cost, below {self.rules.dominance:.0%}",
                    {name},
                )
        need = self.cores(both, [*a.edge_hops, *b.edge_hops, *between])
        if need >= self.rules.cpu_bound:
            return (
                f"{'+'.join(sorted(both))} would use {need:.2f} cores, not below {self.rules.cpu_bound:g}",
                both,
            )
        return None

    def _serves_pages(self, cluster: _Cluster) -> bool:
        return any(self.by_name[s].edge for s in cluster.services)


def _crosses(edge: Edge, a: set[str], b: set[str]) -> bool:
    return (edge.caller in a and edge.callee in b) or (edge.caller in b and edge.callee in a)


def _ordered(names: Iterable[str], by_name: Mapping[str, ServiceInfo]) -> tuple[str, ...]:
    """Pages first (the group's process is named after its first service), then by name."""
    return tuple(sorted(names, key=lambda n: (not by_name[n].edge, n)))


def _check(services: Sequence[ServiceInfo], edges: Sequence[Edge], rules: Rules) -> dict[str, ServiceInfo]:
    by_name: dict[str, ServiceInfo] = {}
    for info in services:
        if not info.name:
            raise AdviceError("a service without a name")
        if info.name in by_name:
            raise AdviceError(f"service {info.name!r} is measured twice")
        for what in ("cpu_ms_per_visit", "messages_per_visit"):
            _number(f"service {info.name}: {what}", getattr(info, what))
        by_name[info.name] = info
    for edge in edges:
        where = f"edge {edge.caller} -> {edge.callee}.{edge.method}"
        for end in (edge.caller, edge.callee):
            if end not in by_name:
                raise AdviceError(f"{where}: {end!r} is not a measured service ({', '.join(by_name)})")
        for what in ("per_visit", "wait_ms", "serve_ms"):
            _number(f"{where}: {what}", getattr(edge, what))
    if not (math.isfinite(rules.rate) and rules.rate > 0):
        raise AdviceError(f"rate must be a positive number of visits per second, got {rules.rate!r}")
    if not (math.isfinite(rules.cpu_bound) and rules.cpu_bound > 0):
        raise AdviceError(f"cpu_bound must be a positive number of cores, got {rules.cpu_bound!r}")
    if not 0 <= rules.dominance <= 1:
        raise AdviceError(f"dominance must be a share between 0 and 1, got {rules.dominance!r}")
    if rules.hop_cpu_ms is not None:
        _number("hop_cpu_ms", rules.hop_cpu_ms)
    return by_name


def _number(what: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise AdviceError(f"{what} must be a number at least 0, got {value!r}")
