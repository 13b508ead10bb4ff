"""Prometheus metrics of one process, served on ``/metrics``."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

REGISTRY = CollectorRegistry(auto_describe=True)
# process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
# process_start_time_seconds... (read from /proc at each scrape, on Linux) and python_info: what a
# dashboard needs to tell a busy or leaking process, and a restart, from the others.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

PROCESS_INFO = Gauge(
    "archipel_process_info",
    "1 for the process of a deployment this is: its name, its replica and its version.",
    ["process", "replica", "version"],
    registry=REGISTRY,
)

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
CALLS = Counter(
    "archipel_calls",
    "Calls from services of this process to other services, by outcome (ok or the error kind).",
    ["caller", "service", "method", "outcome"],
    registry=REGISTRY,
)
CALL_SECONDS = Histogram(
    "archipel_call_duration_seconds",
    "Time a caller waited for a remote call, retries included.",
    ["service", "method"],
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

# Resilience policies (archipel._resilience).
CALL_RETRIES = Counter(
    "archipel_call_retries",
    "Remote calls sent again after a failed attempt (idempotent, or provably never sent).",
    ["caller", "service", "method"],
    registry=REGISTRY,
)
CALL_REJECTIONS = Counter(
    "archipel_call_rejections",
    "Remote calls refused before being sent, by the policy that refused them (breaker, bulkhead).",
    ["caller", "service", "method", "policy"],
    registry=REGISTRY,
)
FALLBACKS = Counter(
    "archipel_fallbacks",
    "Calls to an optional dependency answered by its fallback, by the failure it stood in for.",
    ["caller", "service", "method", "reason"],
    registry=REGISTRY,
)
BREAKER_STATE = Gauge(
    "archipel_breaker_state",
    "Circuit breaker of each target replica: 0 closed, 1 open, 2 half-open (one probe allowed).",
    ["service", "endpoint"],
    registry=REGISTRY,
)
BULKHEAD_IN_FLIGHT = Gauge(
    "archipel_bulkhead_in_flight",
    "Calls in flight from this process to each service (at most its max_concurrent).",
    ["service"],
    registry=REGISTRY,
)


def describe_process(process: str, replica: str, version: str) -> None:
    """Set ``archipel_process_info`` (once, at the worker's start)."""
    PROCESS_INFO.labels(process, replica, version or "unknown").set(1)
