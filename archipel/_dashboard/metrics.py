"""From two scrapes of every process's ``/metrics`` to the graph's edges: calls (caller ->
service: rate, p50/p99, error rate) and events (emitter -> topic -> handling service: rate, dead
letters). Pure functions of Prometheus text, so they are tested on fixed samples."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    """One process's samples at one moment: ``(name, labels) -> value``."""

    at: float  # time.monotonic() of the scrape
    services: tuple[str, ...]  # the services this process hosts
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def select(self, name: str) -> Iterable[tuple[dict[str, str], float]]:
        for (sample, labels), value in self.samples.items():
            if sample == name:
                yield dict(labels), value


# Only the series the edges need: a general parser of the whole text costs the supervisor
# several times more, once a second for every process.
WANTED = (
    "archipel_calls_total",
    "archipel_call_duration_seconds_bucket",
    "archipel_events_published_total",
    "archipel_events_handled_total",
)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_ESCAPE = re.compile(r"\\(.)")  # \\ \" \n in a label value
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def parse(text: str, at: float, services: Sequence[str]) -> Scrape:
    """The samples of :data:`WANTED` in Prometheus text exposition, as a :class:`Scrape`.
    Raises ValueError naming a malformed line."""
    scrape = Scrape(at, tuple(services))
    for line in text.splitlines():
        if not line.startswith(WANTED):
            continue
        sample = _SAMPLE.match(line)
        if sample is None:
            raise ValueError(f"not a Prometheus sample: {line!r}")
        name, raw, value = sample.groups()
        labels = []
        position = 0
        while raw and position < len(raw):
            label = _LABEL.match(raw, position)
            if label is None:
                raise ValueError(f"malformed labels in {line!r}")
            labels.append((label[1], _ESCAPE.sub(lambda m: "\n" if m[1] == "n" else m[1], label[2])))
            position = label.end()
        scrape.samples[(name, tuple(sorted(labels)))] = float(value)
    return scrape


def _delta(before: Scrape, after: Scrape, name: str) -> list[tuple[dict[str, str], float]]:
    """Each series' increase between two scrapes of one process (a series absent before, or
    smaller, counts from zero)."""
    previous = before.samples
    out = []
    for labels, value in after.select(name):
        old = previous.get((name, tuple(sorted(labels.items()))), 0.0)
        out.append((labels, value - old if value >= old else value))
    return out


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """``histogram_quantile``: ``buckets`` maps each upper bound (``le``) to a cumulative count."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all we know
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


@dataclass
class CallEdge:
    caller: str
    service: str
    calls: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def as_json(self, seconds: float) -> dict[str, object]:
        p50, p99 = quantile(0.5, self.buckets), quantile(0.99, self.buckets)
        return {
            "caller": self.caller,
            "service": self.service,
            "local": False,
            "rate": round(self.calls / seconds, 2) if seconds > 0 else 0.0,
            "error_rate": round(self.errors / self.calls, 4) if self.calls else 0.0,
            "p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "p99_ms": None if p99 is None else round(p99 * 1000, 2),
        }


def call_edges(pairs: Sequence[tuple[Scrape | None, Scrape]]) -> list[dict[str, object]]:
    """Call edges over the window of each ``(before, after)`` pair of one process's scrapes.

    ``archipel_calls`` names the caller; the latency histogram does not, so an edge's
    percentiles come from the histogram of the processes hosting its caller (exact when a
    process hosts one service, as in microservices)."""
    edges: dict[tuple[str, str], CallEdge] = {}
    seconds = 0.0
    for before, after in pairs:
        if before is None:
            continue  # one scrape of a process (new, or restarted) is no rate yet
        seconds = max(seconds, after.at - before.at)
        for labels, increase in _delta(before, after, "archipel_calls_total"):
            edge = edges.setdefault(
                (labels["caller"], labels["service"]), CallEdge(labels["caller"], labels["service"])
            )
            edge.calls += increase
            if labels.get("outcome") != "ok":
                edge.errors += increase
        for labels, increase in _delta(before, after, "archipel_call_duration_seconds_bucket"):
            for caller in after.services:
                measured = edges.get((caller, labels["service"]))
                if measured is not None:
                    bound = float(labels["le"])
                    measured.buckets[bound] = measured.buckets.get(bound, 0.0) + increase
    return [edge.as_json(seconds) for edge in sorted(edges.values(), key=lambda e: (e.caller, e.service))]


def event_rates(
    pairs: Sequence[tuple[Scrape | None, Scrape]], topic_of: Mapping[tuple[str, str], str]
) -> dict[str, dict[str, float]]:
    """Per topic: ``published`` per second, and per handling service ``handled:SERVICE`` and
    ``dead:SERVICE`` counts per second. ``topic_of`` maps ``(service, handler)`` to its topic."""
    rates: dict[str, dict[str, float]] = {}
    seconds = max((after.at - before.at for before, after in pairs if before is not None), default=0.0)
    if seconds <= 0:
        return rates
    for before, after in pairs:
        if before is None:
            continue
        for labels, increase in _delta(before, after, "archipel_events_published_total"):
            topic = rates.setdefault(labels["topic"], {})
            topic["published"] = topic.get("published", 0.0) + increase / seconds
        for labels, increase in _delta(before, after, "archipel_events_handled_total"):
            name = topic_of.get((labels["service"], labels["handler"]))
            if name is None:
                continue
            key = ("dead:" if labels.get("outcome") == "dead" else "handled:") + labels["service"]
            topic = rates.setdefault(name, {})
            topic[key] = topic.get(key, 0.0) + increase / seconds
    return rates
