"""Spans as archipel records them: ids taken from and given to the W3C ``traceparent`` that
travels with calls and events, finished into OpenTelemetry SDK ``ReadableSpan`` objects and
handed to SDK span processors (the in-memory ring, the OTLP batch exporter).

Why not ``Tracer.start_span``: the SDK's live span (locks, bounded attributes, events, a
sampler call, its own ids) costs about 25 us to start and end, measured; a ``ReadableSpan``
built once at the end costs about 2 us, and every exporter takes it the same. The span's id is
the one the next hop receives, so the next hop's span is its child.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.context import Context
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
_OK = Status(StatusCode.OK)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_KINDS = {
    SERVER: "server",
    CLIENT: "client",
    PRODUCER: "producer",
    CONSUMER: "consumer",
    INTERNAL: "internal",
}
_HEX = frozenset("0123456789abcdef")


def parse_traceparent(value: str | None) -> tuple[str, int, str] | None:
    """(trace id hex, parent span id, flags hex) of a valid version-00 ``traceparent``, else None."""
    if not value or len(value) != 55 or value[:3] != "00-" or value[35] != "-" or value[52] != "-":
        return None
    trace, span, flags = value[3:35], value[36:52], value[53:]
    if not _HEX.issuperset(trace + span + flags) or trace == "0" * 32 or span == "0" * 16:
        return None
    return trace, int(span, 16), flags


class Span:
    """One span in progress; ``end`` (or ``fail``) finishes it. Not for sharing between tasks."""

    __slots__ = ("_tracer", "attributes", "kind", "name", "parent_id", "span_id", "start_ns", "trace_id")

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

    @property
    def traceparent(self) -> str:
        """This span as the parent of the next hop's: what the call or the event carries."""
        return f"00-{self.trace_id}-{self.span_id:016x}-01"

    def end(self, status: Status = _OK) -> None:
        self._tracer.finish(self, status)

    def fail(self, kind: str, message: str = "") -> None:
        """End with an error: ``kind`` is the error's kind (``error.type``), ``message`` the status'."""
        self.attributes["error.type"] = kind
        self.end(Status(StatusCode.ERROR, message[:256] or kind))


class Tracer:
    """Starts spans under a parent ``traceparent`` and hands each finished one to ``processors``."""

    def __init__(self, resource: Resource, processors: Sequence[SpanProcessor], process: str) -> None:
        self.resource = resource
        self.process = process
        self._processors = tuple(processors)
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

    def finish(self, span: Span, status: Status) -> None:
        trace_id = int(span.trace_id, 16)
        readable = ReadableSpan(
            span.name,
            SpanContext(trace_id, span.span_id, False, _SAMPLED),
            None if span.parent_id is None else SpanContext(trace_id, span.parent_id, True, _SAMPLED),
            self.resource,
            span.attributes,
            kind=span.kind,
            status=status,
            start_time=span.start_ns,
            end_time=time.time_ns(),
            instrumentation_scope=self._scope,
        )
        for processor in self._processors:
            processor.on_end(readable)

    def shutdown(self) -> None:
        for processor in self._processors:
            processor.shutdown()


class SpanRing(SpanProcessor):
    """The last ``size`` finished spans of this process, for ``GET /traces`` (a deque append: cheap)."""

    def __init__(self, size: int = RING_SIZE) -> None:
        # Appended and read on the event loop's thread only: spans end in coroutines.
        self._spans: deque[ReadableSpan] = deque(maxlen=size)

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self._spans.append(span)  # atomic under the GIL

    def spans(self, trace_id: str | None = None, limit: int | None = None) -> list[ReadableSpan]:
        """Oldest first; only ``trace_id``'s when given; the newest ``limit`` when given."""
        kept = list(self._spans)
        if trace_id is not None:
            wanted = int(trace_id, 16)
            kept = [s for s in kept if s.context is not None and s.context.trace_id == wanted]
        return kept if limit is None else kept[len(kept) - limit :] if limit else []

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_json(span: ReadableSpan) -> dict[str, Any]:
    """One span as ``GET /traces`` shows it (the dashboard's contract, docs/observability.md)."""
    context, parent = span.context, span.parent
    assert context is not None
    attributes = dict(span.attributes or {})
    return {
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": None if parent is None else f"{parent.span_id:016x}",
        "name": span.name,
        "kind": _KINDS[span.kind],
        "service": str(attributes.get(SERVICE_ATTRIBUTE, "")),
        "start_ns": span.start_time or 0,
        "end_ns": span.end_time or 0,
        "status": "error" if span.status.status_code is StatusCode.ERROR else "ok",
        "attributes": {key: _scalar(value) for key, value in attributes.items()},
    }


def traces_json(process: str, spans: Iterable[ReadableSpan]) -> dict[str, Any]:
    return {"process": process, "spans": [span_json(span) for span in spans]}


def _scalar(value: Any) -> str | int | float | bool:
    return value if isinstance(value, str | int | float | bool) else str(value)
