"""An OTLP/HTTP collector on 127.0.0.1 for tests: it keeps every export request it is sent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from archipel._deploy.children import free_port


class Collector:
    """What an OpenTelemetry collector's ``/v1/traces`` received."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []  # (path, content type, body)
        self.arrived = asyncio.Event()

    async def receive(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, request.content_type, await request.read()))
        self.arrived.set()
        return web.Response(body=b"", content_type="application/x-protobuf")

    def spans(self) -> list[tuple[dict[str, str], Any]]:
        """Every span received, with its resource's attributes."""
        found = []
        for _, _, body in self.requests:
            message = ExportTraceServiceRequest.FromString(body)
            for resource in message.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
                for scope in resource.scope_spans:
                    found += [(attributes, span) for span in scope.spans]
        return found

    def span_names(self) -> set[str]:
        return {span.name for _, span in self.spans()}

    async def wait_for(self, name: str, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while name not in self.span_names():
                await self.arrived.wait()
                self.arrived.clear()


@contextlib.asynccontextmanager
async def otlp_collector() -> AsyncIterator[tuple[Collector, str]]:
    """A collector and its endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``), stopped after."""
    kept = Collector()
    application = web.Application()
    application.router.add_post("/v1/traces", kept.receive)
    runner = web.AppRunner(application)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield kept, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
