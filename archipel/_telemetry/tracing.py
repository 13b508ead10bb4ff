"""Tracing: a span for every served RPC, remote call, public HTTP request, event published and
event handled, linked through the W3C ``traceparent`` that already travels with calls (a header)
and events (an MQTT user property). Spans always go to an in-memory ring (``GET /traces``) and,
when the standard ``OTEL_*`` variables ask for it, to an OTLP collector.

Where each span is made:

- served RPC (SERVER, ``{service}.{method}``) and remote call (CLIENT, the same name): interceptors
  of the chain; the client span's id is the ``traceparent`` sent, so the server's span is its child;
- event handled (CONSUMER, ``{service}.{handler}``): an interceptor, child of the publish span;
- event published (PRODUCER, ``publish {topic}``): the runtime's emitter, whose envelope carries it;
- a service's public routes (SERVER, ``{method} {path}``): a wrapper of its ASGI app, so a
  storefront's page is the root of what it causes.

Local calls in one process get no span (a monolith's direct call stays a plain method call).

``OTEL_SDK_DISABLED=true``: no spans, no ring. ``OTEL_TRACES_EXPORTER``: ``otlp``, ``console``,
``none`` (default: ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``..._TRACES_ENDPOINT`` is set,
else nothing but the ring); the exporter reads its own variables as the SDK defines them.
"""

from __future__ import annotations

import atexit
import os
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

import msgspec
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor

from .. import _context
from .._chain import Interceptor, Invocation, Next, Site
from .._errors import ArchipelError, DefinitionError
from .spans import CLIENT, CONSUMER, PRODUCER, SERVER, SERVICE_ATTRIBUTE, Span, SpanRing, Tracer, traces_json

DISABLED_VAR = "OTEL_SDK_DISABLED"
EXPORTER_VAR = "OTEL_TRACES_EXPORTER"
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
# Invocation.notes: the traceparent a served request came with, and the one a remote call sends
# (its client span's), under the header's name (_rpc.server and _rpc.client use it).
TRACEPARENT_NOTE = _context.TRACEPARENT
DEFAULT_LIMIT = 500  # spans /traces answers with unless ?limit= says otherwise
_TRACE_ID = re.compile(r"[0-9a-f]{32}")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
AtSite = Callable[[Invocation, Next], Awaitable[Any]]  # an interceptor bound to one site


class Tracing:
    """One process's tracing: its tracer and its ring of finished spans."""

    def __init__(self, tracer: Tracer, ring: SpanRing) -> None:
        self.tracer = tracer
        self.ring = ring
        self.process = tracer.process

    def traces(self, query: bytes) -> tuple[int, bytes]:
        """``GET /traces?trace_id=...&limit=N``: (status, JSON body)."""
        params = urllib.parse.parse_qs(query.decode("latin-1"))
        trace_id = params.get("trace_id", [None])[-1]
        raw_limit = params.get("limit", [str(DEFAULT_LIMIT)])[-1]
        if trace_id is not None and not _TRACE_ID.fullmatch(trace_id):
            return 400, _bad_request(f"trace_id must be 32 lower-case hex digits, got {trace_id[:64]!r}")
        if not raw_limit.isdigit():
            return 400, _bad_request(f"limit must be a whole number >= 0, got {raw_limit[:64]!r}")
        spans = self.ring.spans(trace_id, int(raw_limit))
        return 200, msgspec.json.encode(traces_json(self.process, spans))


def tracing_from_env(
    env: Mapping[str, str], *, deployment: str, process: str, instance: str
) -> Tracing | None:
    """The tracing ``env`` asks for (None when ``OTEL_SDK_DISABLED`` is true). A bad variable
    raises DefinitionError naming it."""
    if env.get(DISABLED_VAR, "").strip().lower() == "true":
        return None
    ring = SpanRing()
    exporters = [_exporter(name, env) for name in _exporters(env)]
    tracer = Tracer(_resource(env, deployment, process, instance), ring, exporters, process)
    if exporters:
        atexit.register(tracer.shutdown)  # the batch exporter sends what it holds before the exit
    return Tracing(tracer, ring)


_process_tracing: list[Tracing | None] = []  # made once per process, on first use


def process_tracing(deployment: str, instance: str) -> Tracing | None:
    """This process's tracing, from ``os.environ`` on first use (``ARCHIPEL_PROCESS`` names it)."""
    if not _process_tracing:
        process = os.environ.get("ARCHIPEL_PROCESS", "").strip() or "main"
        deployment = os.environ.get("ARCHIPEL_DEPLOYMENT", "").strip() or deployment
        _process_tracing.append(
            tracing_from_env(os.environ, deployment=deployment, process=process, instance=instance)
        )
    return _process_tracing[0]


def _exporters(env: Mapping[str, str]) -> list[str]:
    raw = env.get(EXPORTER_VAR, "").strip().lower()
    if not raw:
        return ["otlp"] if any(env.get(name, "").strip() for name in ENDPOINT_VARS) else []
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = sorted(set(names) - {"otlp", "console", "none"})
    if unknown:
        raise DefinitionError(
            f"{EXPORTER_VAR}={raw!r}: unknown {', '.join(unknown)}; use otlp, console or none"
        )
    return [] if "none" in names else list(dict.fromkeys(names))


def _exporter(name: str, env: Mapping[str, str]) -> SpanProcessor:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if name == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    for variable in PROTOCOL_VARS:
        protocol = env.get(variable, "").strip()
        if protocol:
            if protocol != "http/protobuf":
                raise DefinitionError(
                    f"{variable}={protocol!r}: archipel exports spans over http/protobuf only"
                )
            break
    # Imported only when asked for: protobuf and requests cost ~30 ms of a worker's start-up.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return BatchSpanProcessor(OTLPSpanExporter())  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*


def _resource(env: Mapping[str, str], deployment: str, process: str, instance: str) -> Resource:
    ours = {
        "service.name": f"{deployment}.{process}",
        "service.namespace": deployment,
        "service.instance.id": instance,
        "archipel.process": process,
    }
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over ours, as the SDK has them win.
    given = set(OTELResourceDetector().detect().attributes)
    if env.get("OTEL_SERVICE_NAME", "").strip():
        given.add("service.name")
    return Resource.create({key: value for key, value in ours.items() if key not in given})


def _bad_request(message: str) -> bytes:
    return msgspec.json.encode({"error": {"kind": "bad_request", "message": message}})


# --- Interceptors ------------------------------------------------------------------------------


def with_spans(
    interceptors: Sequence[Interceptor], tracing: Tracing | None, messaging: str
) -> list[Interceptor]:
    """``interceptors`` with the span interceptors in place: outermost for served requests and
    handlers (their span covers the deadline and the unit of work), and for remote calls just
    inside the fallback (whose covered failure the call's span still shows, as the metrics do).
    ``messaging``: the event transport's name (``messaging.system``)."""
    if tracing is None:
        return list(interceptors)
    from .._resilience.fallback import Fallback

    chain: list[Interceptor] = [ServeSpans(tracing), EventSpans(tracing, messaging)]
    fallback = next((i for i, x in enumerate(interceptors) if isinstance(x, Fallback)), -1)
    chain += [*interceptors[: fallback + 1], CallSpans(tracing), *interceptors[fallback + 1 :]]
    return chain


def _failed(span: Span, exc: BaseException) -> None:
    if isinstance(exc, ArchipelError):
        span.attributes["http.response.status_code"] = getattr(exc, "http_status", exc.status)
        span.fail(exc.kind, exc.message)
    else:
        span.fail(type(exc).__name__, str(exc))


class ServeSpans:
    def __init__(self, tracing: Tracing) -> None:
        self._tracer = tracing.tracer

    def wants(self, site: Site) -> bool:
        return site.kind == "serve"

    def for_site(self, site: Site) -> AtSite:
        tracer, name = self._tracer, site.qualname
        base = {"rpc.system": "archipel", "rpc.service": site.service, "rpc.method": site.method}
        base[SERVICE_ATTRIBUTE] = site.service

        async def serve(invocation: Invocation, call_next: Next) -> Any:
            span = tracer.start(name, SERVER, invocation.notes.get(TRACEPARENT_NOTE), dict(base))
            if span is None:
                return await call_next(invocation)
            _context.set_traceparent(span.traceparent)  # the method's calls and events: its children
            return await _answered(span, invocation, call_next)

        return serve

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        return await self.for_site(invocation.site)(invocation, call_next)


async def _answered(span: Span, invocation: Invocation, call_next: Next) -> Any:
    """Run the call in ``span``: an answer ends it with status 200, an exception as failed."""
    try:
        result = await call_next(invocation)
    except BaseException as exc:
        _failed(span, exc)
        raise
    span.attributes["http.response.status_code"] = 200
    span.end()
    return result


class CallSpans:
    def __init__(self, tracing: Tracing) -> None:
        self._tracer = tracing.tracer
        self._process = tracing.process

    def wants(self, site: Site) -> bool:
        return site.kind == "call" and site.remote

    def for_site(self, site: Site) -> AtSite:
        tracer, name = self._tracer, site.qualname
        base = {"rpc.system": "archipel", "rpc.service": site.service, "rpc.method": site.method}
        base[SERVICE_ATTRIBUTE] = site.caller or self._process

        async def call(invocation: Invocation, call_next: Next) -> Any:
            span = tracer.start(name, CLIENT, _context.current_traceparent(), dict(base))
            if span is None:
                return await call_next(invocation)
            invocation.notes[TRACEPARENT_NOTE] = span.traceparent  # what the transport sends
            return await _answered(span, invocation, call_next)

        return call

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        return await self.for_site(invocation.site)(invocation, call_next)


class EventSpans:
    def __init__(self, tracing: Tracing, messaging: str) -> None:
        self._tracer = tracing.tracer
        self._messaging = messaging

    def wants(self, site: Site) -> bool:
        return site.kind == "event"

    def for_site(self, site: Site) -> AtSite:
        tracer, name = self._tracer, site.qualname
        base = {
            "messaging.system": self._messaging,
            "messaging.operation.type": "process",
            "messaging.destination.name": site.topic,
            "messaging.consumer.group.name": site.service,
            SERVICE_ATTRIBUTE: site.service,
        }

        async def handle(invocation: Invocation, call_next: Next) -> Any:
            envelope = invocation.envelope
            # The parent is the publish span the event carries (each retry is a sibling, not a child).
            parent = envelope.traceparent if envelope is not None else None
            attributes = dict(base)
            if envelope is not None:
                attributes["messaging.message.id"] = envelope.id
            span = tracer.start(name, CONSUMER, parent, attributes)
            if span is None:
                return await call_next(invocation)
            _context.set_traceparent(span.traceparent)
            try:
                result = await call_next(invocation)
            except BaseException as exc:
                _failed(span, exc)
                raise
            span.end()
            return result

        return handle

    async def __call__(self, invocation: Invocation, call_next: Next) -> Any:
        return await self.for_site(invocation.site)(invocation, call_next)


# --- Events published, public routes -----------------------------------------------------------


def publish_span(tracing: Tracing, service: str, topic: str, messaging: str) -> Span | None:
    """The PRODUCER span of one emit, child of what is running; its traceparent goes on the event."""
    return tracing.tracer.start(
        f"publish {topic}",
        PRODUCER,
        _context.current_traceparent(),
        {
            "messaging.system": messaging,
            "messaging.operation.type": "send",
            "messaging.destination.name": topic,
            SERVICE_ATTRIBUTE: service,
        },
    )


def traced_public(app: ASGIApp, service: str, tracing: Tracing) -> ASGIApp:
    """``service``'s public ASGI app with a SERVER span per HTTP request (5xx or a raise: an error)."""
    tracer = tracing.tracer

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"traceparent")
        method, path = scope["method"], scope["path"]
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": path,
            SERVICE_ATTRIBUTE: service,
        }
        span = tracer.start(
            f"{method} {path}", SERVER, incoming.decode("latin-1") if incoming else None, attributes
        )
        if span is None:
            await app(scope, receive, send)
            return
        _context.set_traceparent(span.traceparent)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                attributes["http.response.status_code"] = message["status"]
            await send(message)

        try:
            await app(scope, receive, sending)
        except BaseException as exc:
            span.fail(type(exc).__name__, str(exc))
            raise
        status = attributes.get("http.response.status_code", 0)
        if status >= 500:
            span.fail(str(status))
        else:
            span.end()

    return traced
