"""Spans as archipel records them: ids taken from and given to the W3C ``traceparent`` that
travels with calls and events; each finished span goes to this process's ring (``GET /traces``)
and, when an exporter is configured, to OpenTelemetry SDK span processors as a ``ReadableSpan``.

Why not ``Tracer.start_span``: the SDK's live span (locks, bounded attributes, events, a
sampler call, its own ids) costs about 25 us to start and end, measured; this one costs about
5 us, and a ``ReadableSpan`` (2 us more) is built only for an exporter. The span's id is the one
the next hop receives, so the next hop's span is its child.
"""

from __future__ import annotations

import random
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL = (
    SpanKind.SERVER,
    SpanKind.CLIENT,
    SpanKind.PRODUCER,
    SpanKind.CONSUMER,
    SpanKind.INTERNAL,
)
SERVICE_ATTRIBUTE = "archipel.service"  # which of the process's services did the work
RING_SIZE = 2000  # finished spans kept in memory per process
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.OK)
_KINDS = {SERVER: "server", CLIENT: "client", PRODUCER: "producer", CONSUMER: "consumer"}
_KINDS[INTERNAL] = "internal"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")  # W3C, version 00
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16  # invalid ids


def parse_traceparent(value: str | None) -> tuple[str, int, str] | None:
    """(trace id hex, parent span id, flags hex) of a valid version-00 ``traceparent``, else None."""
    match = _TRACEPARENT.fullmatch(value) if value else None
    if match is None:
        return None
    trace, span, flags = match.groups()
    if trace == _NO_TRACE or span == _NO_SPAN:
        return None
    return trace, int(span, 16), flags


class Span:
    """One span in progress; ``end`` (or ``fail``) finishes it. Not for sharing between tasks."""

    __slots__ = (
        "_tracer",
        "attributes",
        "end_ns",
        "error",
        "kind",
        "name",
        "parent_id",
        "span_id",
        "start_ns",
        "trace_id",
    )

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        kind: SpanKind,
        trace_id: str,
        parent_id: int | None,
        attributes: dict[str, Any],
    ) -> None:
        self._tracer = tracer
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.parent_id = parent_id
        self.span_id = random.getrandbits(64) or 1
        self.attributes = attributes
        self.start_ns = time.time_ns()
        self.end_ns = 0
        self.error: str | None = None  # the status' description when it ended with an error

    @property
    def traceparent(self) -> str:
        """This span as the parent of the next hop's: what the call or the event carries."""
        return f"00-{self.trace_id}-{self.span_id:016x}-01"

    def end(self) -> None:
        self.end_ns = time.time_ns()
        self._tracer.finish(self)

    def fail(self, kind: str, message: str = "") -> None:
        """End with an error: ``kind`` is the error's kind (``error.type``), ``message`` the status'."""
        self.attributes["error.type"] = kind
        self.error = message[:256] or kind
        self.end()


class Tracer:
    """Starts spans under a parent ``traceparent``; keeps each finished one in ``ring`` and hands
    it to ``exporters`` (SDK span processors) when there are any."""

    def __init__(
        self, resource: Resource, ring: SpanRing, exporters: Sequence[SpanProcessor], process: str
    ) -> None:
        self.resource = resource
        self.process = process
        self.ring = ring
        self._exporters = tuple(exporters)
        self._scope = InstrumentationScope("archipel")

    def start(self, name: str, kind: SpanKind, parent: str | None, attributes: dict[str, Any]) -> Span | None:
        """A span under ``parent`` (a new trace when None or malformed); None when the parent was
        not sampled (flags 00: the caller asked for no trace)."""
        parsed = parse_traceparent(parent)
        if parsed is None:
            return Span(self, name, kind, f"{random.getrandbits(128) or 1:032x}", None, attributes)
        trace_id, parent_id, flags = parsed
        if not int(flags, 16) & 1:
            return None
        return Span(self, name, kind, trace_id, parent_id, attributes)

    def finish(self, span: Span) -> None:
        self.ring.append(span)
        if self._exporters:
            readable = self.readable(span)
            for exporter in self._exporters:
                exporter.on_end(readable)

    def readable(self, span: Span) -> ReadableSpan:
        """``span`` as the OpenTelemetry SDK's exporters take it."""
        trace_id = int(span.trace_id, 16)
        return ReadableSpan(
            span.name,
            SpanContext(trace_id, span.span_id, False, _SAMPLED),
            None if span.parent_id is None else SpanContext(trace_id, span.parent_id, True, _SAMPLED),
            self.resource,
            span.attributes,
            kind=span.kind,
            status=_OK if span.error is None else Status(StatusCode.ERROR, span.error),
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=self._scope,
        )

    def shutdown(self) -> None:
        for exporter in self._exporters:
            exporter.shutdown()


class SpanRing:
    """The last ``size`` finished spans of this process, for ``GET /traces``. Appended and read on
    the event loop's thread only (spans end in coroutines), so a deque needs no lock."""

    def __init__(self, size: int = RING_SIZE) -> None:
        self._spans: deque[Span] = deque(maxlen=size)
        self.append = self._spans.append

    def spans(self, trace_id: str | None = None, limit: int | None = None) -> list[Span]:
        """Oldest first; only ``trace_id``'s when given; the newest ``limit`` when given."""
        kept = list(self._spans)
        if trace_id is not None:
            kept = [span for span in kept if span.trace_id == trace_id]
        return kept if limit is None else kept[len(kept) - limit :] if limit else []


def span_json(span: Span) -> dict[str, Any]:
    """One span as ``GET /traces`` shows it (the dashboard's contract, docs/observability.md)."""
    return {
        "trace_id": span.trace_id,
        "span_id": f"{span.span_id:016x}",
        "parent_id": None if span.parent_id is None else f"{span.parent_id:016x}",
        "name": span.name,
        "kind": _KINDS[span.kind],
        "service": str(span.attributes.get(SERVICE_ATTRIBUTE, "")),
        "start_ns": span.start_ns,
        "end_ns": span.end_ns,
        "status": "ok" if span.error is None else "error",
        "attributes": {key: _scalar(value) for key, value in span.attributes.items()},
    }


def traces_json(process: str, spans: Iterable[Span]) -> dict[str, Any]:
    return {"process": process, "spans": [span_json(span) for span in spans]}


def _scalar(value: Any) -> str | int | float | bool:
    return value if isinstance(value, str | int | float | bool) else str(value)
