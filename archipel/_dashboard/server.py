"""The dashboard's web server, inside the supervisor's event loop: the page (static files, no
build step, nothing from the network) and its JSON API.

It listens on 127.0.0.1 only, and refuses a request whose ``Host`` or ``Origin`` names anything
but 127.0.0.1 or localhost on its port: it can call methods with the operator's rights, so a page
of another site must not reach it, not even through a DNS name rebound to 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from .catalog import call, catalog
from .collect import Collector
from .controls import ControlRefused, Controls
from .feed import EventFeed
from .traces import one_trace, recent

if TYPE_CHECKING:
    from .._deploy.supervisor import Supervisor

log = logging.getLogger("archipel.dashboard")
HOST = "127.0.0.1"
LOCAL_NAMES = ("127.0.0.1", "localhost")
STATIC = Path(__file__).with_name("static")
FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
MAX_BODY = 1 << 20
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def local_request(host: str | None, origin: str | None, port: int) -> str | None:
    """Why a request is refused (None: it is not): Host and Origin must name this server."""
    if host is None:
        return "no Host header"
    parsed = urlsplit("//" + host)
    if parsed.hostname not in LOCAL_NAMES or parsed.port != port:
        return f"Host {host!r} is not 127.0.0.1:{port} or localhost:{port}"
    if origin is not None:
        seen = urlsplit(origin)
        if seen.scheme != "http" or seen.hostname not in LOCAL_NAMES or seen.port != port:
            return f"Origin {origin!r} is not this dashboard"
    return None


class Dashboard:
    def __init__(self, supervisor: Supervisor, *, port: int = 0, controls: bool = False) -> None:
        self.supervisor = supervisor
        self.port = port
        self.controls_enabled = controls
        self.controls = Controls(supervisor)
        self.feed = EventFeed(supervisor)
        self._session: aiohttp.ClientSession | None = None
        self._collector: Collector | None = None
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    @property
    def collector(self) -> Collector:
        assert self._collector is not None, "the dashboard is not started"
        return self._collector

    async def start(self) -> str:
        connector = aiohttp.TCPConnector(ssl=self.supervisor.tls.client_context() or True)
        self._session = aiohttp.ClientSession(connector=connector)
        self._collector = Collector(self.supervisor, self._session)
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/traces", self._traces)
        app.router.add_get("/api/traces/{trace_id}", self._trace)
        app.router.add_get("/api/catalog", self._catalog)
        app.router.add_post("/api/call", self._call)
        app.router.add_post("/api/control", self._control)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, self.port)  # never beyond this machine
        await site.start()
        server = site._server
        if self.port == 0 and server is not None:
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1])
        await self.feed.start()
        await self._collector.refresh()
        self._task = asyncio.create_task(self._collector.run())
        return self.url

    async def stop(self) -> None:
        self.controls.release()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.feed.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        reason = local_request(request.headers.get("Host"), request.headers.get("Origin"), self.port)
        if reason is not None:
            return _refuse(403, f"refused: {reason} (the dashboard answers its own page only)")
        response = await handler(request)
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self' data:"
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"content-type": "text/html"})

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in FILES:
            return _refuse(404, f"no file {name!r}")
        return web.FileResponse(STATIC / name, headers={"content-type": FILES[name]})

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        snapshot = await self.collector.current()
        feed = {"dead_letters": self.feed.dead_letters, "note": self.feed.note}
        return web.json_response({**snapshot, "controls": self.controls_enabled, "feed": feed})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            return _refuse(400, f"since must be an integer, not {request.query['since']!r}")
        return web.json_response({"note": self.feed.note, "items": self.feed.since(since)})

    async def _traces(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await recent(self.collector))

    async def _trace(self, request: web.Request) -> web.StreamResponse:
        trace_id = request.match_info["trace_id"]
        if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
            return _refuse(400, f"{trace_id!r} is not a trace id (32 lower-case hex digits)")
        trace = await one_trace(self.collector, trace_id)
        return (
            _refuse(404, f"no spans of trace {trace_id} (yet)") if trace is None else web.json_response(trace)
        )

    async def _catalog(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"services": await catalog(self.collector)})

    async def _json(self, request: web.Request, *keys: str) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise ValueError("send the request as application/json")
        try:
            body = await request.json()
        except json.JSONDecodeError as exc:
            raise ValueError(f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        missing = [k for k in keys if not isinstance(body.get(k), str) or not body[k]]
        if missing:
            raise ValueError(f"missing {', '.join(missing)} (strings)")
        return body

    async def _call(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._json(request, "service", "method")
            return web.json_response(
                await call(self.collector, body["service"], body["method"], body.get("body", {}))
            )
        except ValueError as exc:
            return _refuse(400, str(exc))
        except KeyError as exc:
            return _refuse(404, str(exc.args[0]))

    async def _control(self, request: web.Request) -> web.StreamResponse:
        if not self.controls_enabled:
            return _refuse(403, "controls are off: start with `archipel run --dashboard-controls`")
        try:
            body = await self._json(request, "process", "action")
            result = self.controls.apply(body["process"], body["action"])
        except ControlRefused as exc:
            return _refuse(404 if "no replica" in str(exc) else 409, str(exc))
        except ValueError as exc:
            return _refuse(400, str(exc))
        log.info("dashboard: %s %s (pid %s)", body["action"], body["process"], result["pid"])
        await self.collector.refresh()
        return web.json_response(result)
