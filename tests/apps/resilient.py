"""An app for the resilience tests: a backend that naps, fails or says which process it is, a
relay in front of it (two hops), and a portal with an optional dependency."""

from __future__ import annotations

import asyncio
import os
import time

from archipel import App, NotFound, Service, Struct, Unavailable, optional, rpc


class Backend(Service):
    def __init__(self) -> None:
        self.naps: dict[str, str] = {}  # key -> "done" or "cancelled after N s"
        self.recorded: list[str] = []

    @rpc(idempotent=True)
    async def whoami(self) -> int:
        """The pid of the process that answered: which replica got the call."""
        return os.getpid()

    @rpc
    async def record(self, key: str) -> int:
        """Not idempotent: each call appends; returns the pid."""
        self.recorded.append(key)
        return os.getpid()

    @rpc(idempotent=True)
    async def times_recorded(self, key: str) -> int:
        return self.recorded.count(key)

    @rpc(idempotent=True)
    async def nap(self, key: str, seconds: float) -> str:
        started = time.monotonic()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.naps[key] = f"cancelled after {time.monotonic() - started:.3f} s"
            raise
        self.naps[key] = "done"
        return "rested"

    @rpc(idempotent=True, timeout=0.25)
    async def short_nap(self, key: str, seconds: float) -> str:
        """The decorator sets this method's deadline."""
        return await self.nap(key, seconds)

    @rpc(idempotent=True)
    async def nap_state(self, key: str) -> str | None:
        return self.naps.get(key)


class Relay(Service):
    backend: Backend

    @rpc
    async def relay_nap(self, key: str, seconds: float) -> str:
        return await self.backend.nap(key, seconds)


class Extras(Service):
    @rpc(idempotent=True)
    async def tips(self, topic: str) -> list[str]:
        if topic == "missing":
            raise NotFound(f"no topic {topic!r}")
        if topic == "broken":
            raise ValueError("tips database corrupted")
        if topic == "busy":
            raise Unavailable("tips are being reindexed")
        return [f"a tip about {topic}"]

    @rpc(idempotent=True)
    async def headline(self) -> str:
        return "today's headline"


class Page(Struct):
    tips: list[str]
    headline: str


class Portal(Service):
    extras: Extras = optional(tips=lambda topic: [f"no tips about {topic} for now"], headline="")
    backend: Backend  # a plain dependency: never wrapped in a monolith

    @rpc
    async def page(self, topic: str) -> Page:
        tips, headline = await asyncio.gather(self.extras.tips(topic), self.extras.headline())
        return Page(tips, headline)


app = App("resilient", [Backend, Relay, Extras, Portal])
