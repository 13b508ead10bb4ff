"""Prometheus metrics of the outbox relay and the inbox, on the process registry (``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from .._telemetry.metrics import REGISTRY

OUTBOX_PUBLISHED = Counter(
    "archipel_outbox_published",
    "Outbox events published (the bus accepted them) and removed from the outbox.",
    ["service"],
    registry=REGISTRY,
)
OUTBOX_PUBLISH_FAILURES = Counter(
    "archipel_outbox_publish_failures",
    "Failed attempts to publish an outbox event (each is retried with back-off).",
    ["service"],
    registry=REGISTRY,
)
OUTBOX_PENDING = Gauge(
    "archipel_outbox_pending",
    "Events in the service's outbox, not yet published, as of the relay's last sweep.",
    ["service"],
    registry=REGISTRY,
)
INBOX_DUPLICATES = Counter(
    "archipel_inbox_duplicates",
    "Redelivered events whose handler had already taken them, so they were not handled again.",
    ["service", "handler"],
    registry=REGISTRY,
)
