"""The ASGI app every process serves: the RPC endpoints of its services, health, OpenAPI,
metrics, and the services' own public routes.

What is open to whom (docs/security.md):

- public routes (a service's ``asgi_app``) and ``@rpc(public=True)`` methods: anyone;
- internal methods: only callers with a valid credential for that service (``_security``),
  checked before the body is read; a server built with ``internal=False`` (a monolith) does not
  serve them at all;
- ``/metrics``, ``/openapi.json``, ``/asyncapi.json`` and ``/traces`` (this process's recent
  spans, ``_telemetry.tracing``): the scrape token or an operator credential, unless opened;
- ``/healthz`` and ``/readyz``: anyone (orchestrators' probes).

Written against raw ASGI with msgspec, because the internal RPC endpoint is on every hop's
hot path (measured: a framework costs 2-4.5x the server CPU of raw ASGI; ADR 0001).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import _context
from .._chain import Invocation, Next, Site, compose
from .._errors import ArchipelError, DefinitionError, Unauthenticated
from .._model import MethodSpec
from .._runtime import Runtime
from .._security.tokens import Verifier
from .._telemetry.metrics import REGISTRY, RPC_REQUESTS
from .._telemetry.tracing import traced_public
from .openapi import openapi_document

log = logging.getLogger("archipel.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY = 1 << 20
# Endpoints that can be opened to anyone (``open_endpoints``).
OBSERVABLE = ("metrics", "openapi", "asyncapi", "traces")
_JSON = [(b"content-type", b"application/json")]
_CHALLENGE = [*_JSON, (b"www-authenticate", b'Bearer realm="archipel"')]
_ALLOW_POST = [*_JSON, (b"allow", b"POST")]
_FIELD_PATH = re.compile(r"at `(\$[^`]*)`")


class ErrorBody(msgspec.Struct, omit_defaults=True):
    kind: str
    message: str
    service: str = ""
    method: str = ""
    details: Any = None


class ErrorResponse(msgspec.Struct):
    error: ErrorBody


class _HttpError(Exception):
    def __init__(self, status: int, kind: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.details = status, kind, message, details


@dataclass(frozen=True)
class _Endpoint:
    spec: MethodSpec
    site: Site
    chain: Next  # the interceptor chain ending in the service's method
    decoder: msgspec.json.Decoder[Any]
    fields: tuple[str, ...]
    public: bool


class RpcServer:
    """ASGI app for one process. Lifespan startup starts the runtime; shutdown stops it.

    ``verifier`` checks the credentials of calls to internal methods; None serves them to anyone
    (benchmarks and explicit opt-outs only). ``internal=False`` serves public methods only.
    ``open_endpoints`` names the endpoints of :data:`OBSERVABLE` served without a credential.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        on_startup: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
        verifier: Verifier | None = None,
        internal: bool = True,
        open_endpoints: tuple[str, ...] = (),
        version: str = "",
    ) -> None:
        unknown = set(open_endpoints) - set(OBSERVABLE)
        if unknown:
            raise DefinitionError(
                f"open_endpoints: unknown {', '.join(sorted(unknown))}; choose among {', '.join(OBSERVABLE)}"
            )
        self.runtime = runtime
        self.max_body = max_body
        self.verifier = verifier
        self.internal = internal
        self.draining = False  # set at SIGTERM: /readyz answers 503 while calls are still served
        self.leaving = False  # removed for good (SIGUSR2): its share of events goes to the others
        self.version = version  # reported by /readyz: which code a replica runs during a rollout
        self._guarded = {_OBSERVABLE_PATHS[name] for name in OBSERVABLE if name not in open_endpoints}
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown
        self._endpoints: dict[str, _Endpoint] = {}
        self._public: ASGIApp | None = None
        self._openapi: bytes | None = None
        self._asyncapi: bytes | None = None
        self._encoder = msgspec.json.Encoder()

    async def start(self) -> None:
        if self._on_startup is not None:
            await self._on_startup()
        await self.runtime.start()
        publics = []
        for name, instance in self.runtime.instances.items():
            spec = self.runtime.app.specs[name]
            for method in spec.methods.values():
                if not (method.public or self.internal):
                    continue
                site = Site("serve", name, method.name, idempotent=method.idempotent)
                self._endpoints[f"/{name}/{method.name}"] = _Endpoint(
                    method,
                    site,
                    compose(site, self.runtime.interceptors, _terminal(getattr(instance, method.name))),
                    msgspec.json.Decoder(method.arguments),
                    tuple(p.name for p in method.params),
                    method.public,
                )
            public = instance.asgi_app()
            if public is not None:
                publics.append((name, public))
        if len(publics) > 1:
            raise DefinitionError(
                "only one service per process may serve public routes; found "
                + ", ".join(name for name, _ in publics)
            )
        self._public = publics[0][1] if publics else None
        if self._public is not None and self.runtime.tracing is not None:
            self._public = traced_public(self._public, publics[0][0], self.runtime.tracing)

    async def stop(self) -> None:
        await self.runtime.stop(leave=self.leaving)
        if self._on_shutdown is not None:
            await self._on_shutdown()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, _closing(send) if self.draining else send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif self._public is not None:
            await self._public(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except BaseException as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        endpoint = self._endpoints.get(path)
        if endpoint is not None and method == "POST":
            await self._rpc(endpoint, scope, receive, send)
        elif method == "GET" and (path in _PROBES or path == _TRACES):
            if path in self._guarded and self.verifier is not None:
                try:
                    self.verifier.observer(dict(scope["headers"]).get(b"authorization"))
                except Unauthenticated as exc:
                    await _error(send, 401, ErrorBody(exc.kind, exc.message), _CHALLENGE)
                    return
            if path == _TRACES:  # the only one that reads a query
                await self._traces(scope, send)
            else:
                await _PROBES[path](self, send)
        elif self._is_rpc_path(path):
            await self._rpc_miss(path, method, send)
        elif self._public is not None:
            await self._public(scope, receive, send)
        else:
            await _error(send, 404, ErrorBody("not_found", f"no route {method} {path}"))

    def _is_rpc_path(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        return len(parts) == 2 and parts[0] in self.runtime.app.specs

    async def _rpc_miss(self, path: str, method: str, send: Send) -> None:
        service, name = path.strip("/").split("/")
        spec = self.runtime.app.specs[service]
        if service not in self.runtime.instances:
            message = f"service {service!r} is not served by this process"
        elif name not in spec.methods:
            message = f"service {service!r} has no rpc method {name!r}"
        elif path not in self._endpoints:  # internal, and this process serves public methods only
            message = f"no route {method} {path}"
        else:
            body = ErrorBody("method_not_allowed", f"use POST for {path}", service, name)
            await _error(send, 405, body, _ALLOW_POST)
            return
        await _error(send, 404, ErrorBody("not_found", message, service, name))

    async def _rpc(self, endpoint: _Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        spec = endpoint.spec
        headers = dict(scope["headers"])
        incoming = headers.get(b"traceparent", b"").decode("latin-1") or None
        _context.set_traceparent(incoming)
        status_headers = _JSON
        try:
            try:
                if not endpoint.public and self.verifier is not None:
                    # Before the body is read: a caller without a credential costs no more than this.
                    self.verifier.caller(headers.get(b"authorization"), spec.service)
                body = await self._read_body(headers, receive)
                # The incoming traceparent as sent: tracing's server span is its child, or a root.
                invocation = Invocation(endpoint.site, self._decode(endpoint, body), notes={_TP: incoming})
                timeout = headers.get(_TIMEOUT)
                if timeout is not None:
                    invocation.deadline = time.monotonic() + _timeout_seconds(timeout)
            except (_HttpError, ArchipelError) as exc:  # refused before the chain: counted here
                RPC_REQUESTS.labels(spec.service, spec.name, str(exc.status)).inc()
                if exc.status == 401:
                    status_headers = _CHALLENGE
                raise
            result = await endpoint.chain(invocation)
            payload = self._encoder.encode(result)
            status = 200
        except _HttpError as exc:
            status, payload = exc.status, _encode_error(exc.kind, exc.message, spec, exc.details)
        except ArchipelError as exc:
            status, payload = exc.status, _encode_error(exc.kind, exc.message, spec, exc.details)
        except TimeoutError:
            status, payload = (
                504,
                _encode_error("deadline_exceeded", f"{spec.qualname} ran past its deadline", spec),
            )
        except Exception:
            # The detail stays in this process's log; the caller gets an id to find it there.
            error_id = uuid.uuid4().hex[:16]
            log.exception("%s raised (error id %s)", spec.qualname, error_id)
            message = f"internal error in {spec.qualname}; error id {error_id} in the service's log"
            status, payload = 500, _encode_error("internal", message, spec, {"error_id": error_id})
        await _respond(send, status, payload, status_headers)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise _HttpError(
                413, "payload_too_large", f"body of {int(declared)} bytes exceeds {self.max_body}"
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _HttpError(413, "payload_too_large", f"body exceeds {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    def _decode(endpoint: _Endpoint, body: bytes) -> dict[str, Any]:
        if not body.strip():
            # No body is no arguments: fine when every parameter has a default, else a 422 below.
            if not endpoint.fields:
                return {}
            body = b"{}"
        try:
            decoded = endpoint.decoder.decode(body)
        except msgspec.ValidationError as exc:
            decoded = _with_whole_floats(endpoint, body, exc)
        except msgspec.DecodeError as exc:
            raise _HttpError(400, "bad_request", f"body is not valid JSON: {exc}") from exc
        return {name: getattr(decoded, name) for name in endpoint.fields}

    async def _healthz(self, send: Send) -> None:
        await _respond(send, 200, b'{"status":"ok"}')

    async def _readyz(self, send: Send) -> None:
        ready = self.runtime.ready and not self.draining
        body = msgspec.json.encode(
            {
                "ready": ready,
                "draining": self.draining,
                "version": self.version,
                "services": list(self.runtime.instances),
                # Replicas of the edge share one port: the supervisor tells its new replica's
                # answer from the old one's by this.
                "pid": os.getpid(),
            }
        )
        await _respond(send, 200 if ready else 503, body)

    async def _openapi_json(self, send: Send) -> None:
        if self._openapi is None:
            # What this process serves (its endpoints), and nothing else: a monolith's has no internal method.
            served = [endpoint.spec for endpoint in self._endpoints.values()]
            specs = [
                dataclasses.replace(spec, methods={m.name: m for m in served if m.service == spec.name})
                for spec in (self.runtime.app.specs[name] for name in self.runtime.local)
            ]
            self._openapi = msgspec.json.encode(openapi_document(self.runtime.app.name, specs))
        await _respond(send, 200, self._openapi)

    async def _asyncapi_json(self, send: Send) -> None:
        if self._asyncapi is None:
            from .._events.asyncapi import process_document  # only when asked: it imports the MQTT bus

            self._asyncapi = msgspec.json.encode(process_document(self.runtime, self.version))
        await _respond(send, 200, self._asyncapi)

    async def _traces(self, scope: Scope, send: Send) -> None:
        tracing = self.runtime.tracing
        if tracing is None:  # OTEL_SDK_DISABLED: no ring, nothing kept
            body = msgspec.json.encode({"process": os.environ.get("ARCHIPEL_PROCESS", "main"), "spans": []})
            await _respond(send, 200, body)
            return
        status, body = tracing.traces(scope.get("query_string", b""))
        await _respond(send, status, body)

    async def _metrics(self, send: Send) -> None:
        headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": generate_latest(REGISTRY)})


def _closing(send: Send) -> Send:
    """``send``, asking the client to close the connection after this response: a draining
    process sheds its kept-alive connections one answer at a time, so no client sends a request
    on a connection the process is about to close."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        await send(message)

    return closing


_TIMEOUT = _context.TIMEOUT_HEADER.encode()
_TRACES = "/traces"
_TP = _context.TRACEPARENT
_OBSERVABLE_PATHS = {
    "metrics": "/metrics",
    "openapi": "/openapi.json",
    "asyncapi": "/asyncapi.json",
    "traces": _TRACES,
}
_PROBES: dict[str, Callable[[RpcServer, Send], Awaitable[None]]] = {
    "/healthz": RpcServer._healthz,
    "/readyz": RpcServer._readyz,
    "/openapi.json": RpcServer._openapi_json,
    "/asyncapi.json": RpcServer._asyncapi_json,
    "/metrics": RpcServer._metrics,
}


def _timeout_seconds(raw: bytes) -> float:
    try:
        value = float(raw) / 1000
    except ValueError:
        raise _HttpError(400, "bad_request", f"{_context.TIMEOUT_HEADER} must be a number of ms") from None
    if value != value:  # NaN
        raise _HttpError(400, "bad_request", f"{_context.TIMEOUT_HEADER} must be a number of ms")
    return value


def _with_whole_floats(endpoint: _Endpoint, body: bytes, error: msgspec.ValidationError) -> Any:
    """The arguments again when the only trouble was ``1.0`` where an integer is expected (JSON
    Schema calls it an integer, and clients that hold every number as a float send it); else the
    422. Only on this error path: a well-formed call never pays for it. Not msgspec's
    ``strict=False``: that also takes ``"1"`` for an integer, which the schema does not allow."""
    if "got `float`" in str(error):
        try:
            return msgspec.convert(_whole(msgspec.json.decode(body)), endpoint.spec.arguments)
        except msgspec.ValidationError as again:
            error = again
    match = _FIELD_PATH.search(str(error))
    raise _HttpError(
        422, "invalid_argument", str(error), {"path": match.group(1) if match else "$"}
    ) from error


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole(item) for key, item in value.items()}
    return value


def _terminal(method: Callable[..., Awaitable[Any]]) -> Next:
    async def call(invocation: Invocation) -> Any:
        return await method(**invocation.arguments)

    return call


def _encode_error(kind: str, message: str, spec: MethodSpec, details: Any = None) -> bytes:
    return msgspec.json.encode(ErrorResponse(ErrorBody(kind, message, spec.service, spec.name, details)))


Headers = list[tuple[bytes, bytes]]


async def _error(send: Send, status: int, body: ErrorBody, headers: Headers = _JSON) -> None:
    await _respond(send, status, msgspec.json.encode(ErrorResponse(body)), headers)


async def _respond(send: Send, status: int, body: bytes, headers: Headers = _JSON) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
