"""What the dashboard shows of a running deployment, gathered once a second: the topology from
the app and the supervisor, each process's health, CPU and memory, and the call and event rates
from two successive scrapes of every process's ``/metrics``."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from .._deploy.statefile import is_stopped
from .._model import Service
from .._security.keyring import scrape_token
from .metrics import Scrape, call_edges, event_rates, parse
from .procstat import CpuMeter, rss_bytes

if TYPE_CHECKING:
    from .._deploy.children import Child
    from .._deploy.supervisor import Supervisor

INTERVAL = 1.0  # seconds between scrapes, as the page polls
WINDOW = 5  # scrapes a rate is measured over: steady enough to read, recent enough to follow
IDLE = 15.0  # seconds without a page asking: scraping pauses, and costs the processes nothing
TIMEOUT = aiohttp.ClientTimeout(total=1)  # a paused or hung process shows within a scrape or two


class Collector:
    def __init__(self, supervisor: Supervisor, session: aiohttp.ClientSession) -> None:
        self.supervisor = supervisor
        self.session = session
        self._cpu = CpuMeter()
        # By replica: the pid scraped, and its last scrapes (a restarted process starts afresh).
        self._scrapes: dict[str, tuple[int | None, collections.deque[Scrape]]] = {}
        self._responsive: dict[str, bool] = {}
        self._asked = time.monotonic()  # when the page last asked for a snapshot
        self._built = 0.0
        self._topic_of = {
            (h.service, h.name): h.topic for spec in supervisor.app.specs.values() for h in spec.handlers
        }
        self.snapshot: dict[str, Any] = self._build(time.monotonic())

    def headers(self) -> dict[str, str]:
        """The deployment's scrape token: reads /metrics, /openapi.json, /asyncapi.json, /traces."""
        secret = self.supervisor.credentials.secrets[0]
        return {"authorization": "Bearer " + scrape_token(secret, self.supervisor.deployment)}

    async def run(self) -> None:
        idle = False
        while True:
            started = time.monotonic()
            if started - self._asked > IDLE:
                idle = True
            else:
                if idle:  # scrapes from before the pause would average rates over it
                    self._scrapes.clear()
                    idle = False
                await self.refresh()
            await asyncio.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))

    async def current(self) -> dict[str, Any]:
        """The snapshot, refreshed first if scraping was paused while nobody looked."""
        self._asked = time.monotonic()
        if self._asked - self._built > 2 * INTERVAL:
            await self.refresh()
        return self.snapshot

    async def refresh(self) -> None:
        children = [c for c in self.supervisor.children if not c.retired]
        await asyncio.gather(*(self._scrape(child) for child in children))
        live = {c.label for c in children}
        for label in set(self._scrapes) - live:
            del self._scrapes[label]
        self._built = time.monotonic()
        self.snapshot = self._build(self._built)

    async def _scrape(self, child: Child) -> None:
        ok = False
        if child.running and child.pid is not None and not is_stopped(child.pid):
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                async with self.session.get(
                    child.url + "/metrics", headers=self.headers(), timeout=TIMEOUT
                ) as response:
                    if response.status == 200:
                        scrape = parse(await response.text(), time.monotonic(), child.services)
                        pid, kept = self._scrapes.get(child.label, (None, collections.deque()))
                        if pid != child.pid:
                            kept = collections.deque(maxlen=WINDOW + 1)
                        kept.append(scrape)
                        self._scrapes[child.label] = (child.pid, kept)
                        ok = True
        self._responsive[child.label] = ok

    def health(self, child: Child) -> str:
        """As ``archipel status`` says, but a process that is stopped (SIGSTOP) or does not answer
        its scrape within a second is not ready whatever the supervisor last saw."""
        state = child.health
        if state == "ready" and child.pid is not None and is_stopped(child.pid):
            return "paused"
        if state == "ready" and not self._responsive.get(child.label, True):
            return "unresponsive"
        return state

    def _build(self, now: float) -> dict[str, Any]:
        sup, app = self.supervisor, self.supervisor.app
        children = [c for c in sup.children if not c.retired]
        hosts: dict[str, list[str]] = {}
        for child in children:
            for service in child.services:
                hosts.setdefault(service, []).append(child.name)
        pairs = [(kept[0] if len(kept) > 1 else None, kept[-1]) for _, kept in self._scrapes.values()]
        measured = {(e["caller"], e["service"]): e for e in call_edges(pairs)}
        calls = []
        for spec in app.specs.values():
            for dependency in spec.dependencies.values():
                callee = dependency.__service_name__
                local = set(hosts.get(spec.name, [])) <= set(hosts.get(callee, []))
                edge = measured.pop((spec.name, callee), None) or {
                    "caller": spec.name, "service": callee, "rate": 0.0, "error_rate": 0.0,
                    "p50_ms": None, "p99_ms": None,
                }  # fmt: skip
                calls.append({**edge, "local": local})
        calls.extend(measured.values())  # an operator's calls, or a caller the app does not declare
        rates = event_rates(pairs, self._topic_of)
        topics: dict[str, dict[str, Any]] = {}
        for spec in app.specs.values():
            for event in spec.emits:
                topics.setdefault(event.__topic__, {"emitters": [], "handlers": []})["emitters"].append(
                    spec.name
                )
            for handler in spec.handlers:
                topics.setdefault(handler.topic, {"emitters": [], "handlers": []})["handlers"].append(
                    spec.name
                )
        events = [
            {
                "topic": topic,
                **sides,
                "rate": round(rates.get(topic, {}).get("published", 0.0), 2),
                "handled": {
                    s: round(rates.get(topic, {}).get("handled:" + s, 0.0), 2) for s in sides["handlers"]
                },
                "dead": {s: round(rates.get(topic, {}).get("dead:" + s, 0.0), 2) for s in sides["handlers"]},
            }
            for topic, sides in sorted(topics.items())
        ]
        return {
            "app": app.name,
            "deployment": sup.deployment,
            "mode": sup.mode,
            "time": time.time(),
            "broker": None
            if sup.broker_url is None
            else {"url": sup.broker_url, "kind": sup.broker_kind, "health": sup.health.state},
            "services": [
                {
                    "name": spec.name,
                    "processes": sorted(set(hosts.get(spec.name, []))),
                    "methods": sorted(spec.methods),
                    "emits": sorted(e.__topic__ for e in spec.emits),
                    "handles": sorted(h.topic for h in spec.handlers),
                    "depends_on": sorted(d.__service_name__ for d in spec.dependencies.values()),
                    "pages": spec.cls.asgi_app is not Service.asgi_app,
                    # Reached by URL, run elsewhere: each address as the supervisor last saw it.
                    "external": {
                        url: sup.remote_health.states.get(url, "unknown")
                        for url in sup.plan.remote.get(spec.name, ())
                    },
                }
                for spec in app.specs.values()
            ],
            "processes": [self._process(child, now) for child in children],
            "calls": calls,
            "events": events,
        }

    def _process(self, child: Child, now: float) -> dict[str, Any]:
        running = child.running and child.pid is not None
        return {
            "label": child.label,
            "name": child.name,
            "replica": child.replica,
            "services": list(child.services),
            "url": child.url,
            "pid": child.pid if running else None,
            "health": self.health(child),
            "restarts": child.restarts,
            "last_exit_code": child.last_exit,
            "uptime": round(time.time() - child.since, 1) if running and child.since else None,
            "version": child.version,
            "cpu_percent": self._cpu.percent(child.pid, now) if running and child.pid else None,
            "rss_bytes": rss_bytes(child.pid) if running and child.pid else None,
        }
