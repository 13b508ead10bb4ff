"""The service catalog and API explorer: each service's methods (from ``/openapi.json`` of the
process hosting it) and events (from ``/asyncapi.json``), and calls of any method signed with the
operator's credential, as ``archipel call`` signs them. A process that serves no documents (a
service written in another language) is shown with what the app declares for its services."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from .._events.asyncapi import asyncapi_document
from .._rpc.openapi import openapi_document

if TYPE_CHECKING:
    from .collect import Collector

TIMEOUT = aiohttp.ClientTimeout(total=5)
CALL_TIMEOUT = aiohttp.ClientTimeout(total=30)


def resolve(node: Any, document: dict[str, Any], depth: int = 0) -> Any:
    """``node`` with its local ``$ref``s replaced by what they point at (recursion cut at 6)."""
    if isinstance(node, list):
        return [resolve(item, document, depth) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        if depth >= 6:
            return {"$ref": ref}
        target: Any = document
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return resolve(target, document, depth + 1)
    return {key: resolve(value, document, depth) for key, value in node.items()}


def example(schema: Any) -> Any:
    """A body to start from: each property at its default, or an empty value of its type."""
    if not isinstance(schema, dict):
        return None
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        required = schema.get("required", list(schema.get("properties", {})))
        return {k: example(v) for k, v in schema.get("properties", {}).items() if k in required}
    choices = schema.get("anyOf") or schema.get("oneOf")
    if choices:
        return example(choices[0])
    return {"string": "", "integer": 0, "number": 0, "boolean": False, "array": []}.get(str(kind))


async def _document(collector: Collector, url: str, path: str) -> dict[str, Any]:
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        async with collector.session.get(
            url + path, headers=collector.headers(), timeout=TIMEOUT
        ) as response:
            if response.status == 200:
                data = await response.json()
                return data if isinstance(data, dict) else {}
    return {}


def _declared(collector: Collector, services: list[str], path: str) -> dict[str, Any]:
    """The document the app itself gives for ``services``: what a Python process would serve."""
    supervisor = collector.supervisor
    if path == "/openapi.json":
        return openapi_document(supervisor.app.name, [supervisor.app.specs[name] for name in services])
    return asyncapi_document(
        supervisor.app, services, root=supervisor.deployment, broker=supervisor.broker_url
    )


Source = tuple[dict[str, Any], str]  # a document, and whether the process served it or the app declares it


async def _process_document(
    collector: Collector, process: str, url: str, services: list[str], path: str
) -> Source:
    """The process's document; the app's for a foreign process (``[external]``) that serves none."""
    served = await _document(collector, url, path)
    foreign = any(p.foreign for p in collector.supervisor.plan.processes if p.name == process)
    if served or not foreign:
        return served, "served"
    return _declared(collector, services, path), "declared"


async def catalog(collector: Collector) -> list[dict[str, Any]]:
    """Every service with its methods and events, read from one replica of each process; from
    the app's own declarations for a process that serves no documents (another language's)."""
    first: dict[str, tuple[str, list[str]]] = {}  # process -> one replica's URL, its services
    for child in collector.supervisor.children:
        if child.running and not child.retired:
            first.setdefault(child.name, (child.url, list(child.services)))
    documents = await asyncio.gather(
        *(
            asyncio.gather(
                _process_document(collector, name, url, services, "/openapi.json"),
                _process_document(collector, name, url, services, "/asyncapi.json"),
            )
            for name, (url, services) in first.items()
        )
    )
    services = []
    for (child_name, (_, process_services)), ((openapi, origin), (asyncapi, _)) in zip(
        first.items(), documents, strict=True
    ):
        for service in process_services:
            methods = []
            for path, item in sorted(openapi.get("paths", {}).items()):
                operation = item.get("post") if isinstance(item, dict) else None
                if not path.startswith(f"/{service}/") or not isinstance(operation, dict):
                    continue
                content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
                answer = operation.get("responses", {}).get("200", {}).get("content", {})
                request = resolve(content.get("schema", {}), openapi)
                methods.append(
                    {
                        "name": path.rsplit("/", 1)[1],
                        "summary": operation.get("description") or operation.get("summary", ""),
                        "idempotent": bool(operation.get("x-idempotent")),
                        "request": request,
                        "response": resolve(answer.get("application/json", {}).get("schema", {}), openapi),
                        "example": example(request),
                    }
                )
            events = [
                {
                    "action": op.get("action"),
                    "summary": op.get("summary", ""),
                    "channel": resolve(op.get("channel", {}), asyncapi).get("address", ""),
                    "payload": [resolve(m, asyncapi).get("payload", {}) for m in op.get("messages", [])],
                }
                for op in asyncapi.get("operations", {}).values()
                if isinstance(op, dict) and op.get("x-archipel-service") == service
            ]
            services.append(
                {
                    "name": service,
                    "process": child_name,
                    "methods": methods,
                    "events": events,
                    "documents": origin,  # "served" by the process, or "declared" by the app
                }
            )
    return sorted(services, key=lambda s: s["name"])


async def call(collector: Collector, service: str, method: str, body: Any) -> dict[str, Any]:
    """Call ``service.method`` with ``body`` as the operator; the answer, its status, how long it
    took and the id of the trace it started. Raises KeyError for a service nobody hosts."""
    urls = [c.url for c in collector.supervisor.children if service in c.services and c.running and c.listed]
    if not urls:
        raise KeyError(f"no running process hosts a service {service!r}")
    trace_id = os.urandom(16).hex()
    headers = {
        **collector.supervisor.auth_headers(service),
        "content-type": "application/json",
        "traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01",
    }
    started = time.perf_counter()
    try:
        async with collector.session.post(
            f"{urls[0]}/{service}/{method}", data=json.dumps(body), headers=headers, timeout=CALL_TIMEOUT
        ) as response:
            text = await response.text()
            status = response.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        text, status = json.dumps({"error": f"{urls[0]} did not answer: {exc or type(exc).__name__}"}), 0
    elapsed = time.perf_counter() - started
    try:
        answer: Any = json.loads(text)
    except ValueError:
        answer = text
    return {"status": status, "duration_ms": round(elapsed * 1000, 2), "answer": answer, "trace_id": trace_id}
