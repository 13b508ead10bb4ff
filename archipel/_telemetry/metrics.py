"""Prometheus metrics of one process, served on ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RPC_REQUESTS = Counter(
    "archipel_rpc_requests",
    "RPC requests served by this process, by outcome status.",
    ["service", "method", "status"],
    registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "archipel_rpc_duration_seconds",
    "Time spent serving an RPC request (handler plus decoding).",
    ["service", "method"],
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENTS_HANDLED = Counter(
    "archipel_events_handled",
    "Event deliveries to handlers, by outcome (ok, retried, dead).",
    ["service", "handler", "outcome"],
    registry=REGISTRY,
)
EVENTS_PUBLISHED = Counter(
    "archipel_events_published", "Events emitted by services of this process.", ["topic"], registry=REGISTRY
)
EVENTS_ACKED = Counter(
    "archipel_events_acked",
    "Events acknowledged to the broker after their handlers returned.",
    ["topic"],
    registry=REGISTRY,
)
