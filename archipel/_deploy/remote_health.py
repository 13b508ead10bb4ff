"""Services the deployment reaches by URL but does not run (``[external.NAME] url = ...``): their
``/readyz`` asked every probe interval, so ``archipel status`` and its state file say whether
they answer. For people to see: callers keep their own probes and rotation, as for any peer.

Each address is ``ready`` (200), ``not ready`` (it answers, but not 200: draining, or its broker
is away), ``down`` (no answer within the probe's time: refused, unreachable, frozen) or
``unknown`` before the first look."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping, Sequence

import aiohttp

from .._rpc.membership import readyz_status

PROBE_TIMEOUT = 1.0  # seconds an address has to answer /readyz


class RemoteHealth:
    def __init__(
        self,
        remote: Mapping[str, Sequence[str]],
        *,
        interval: float,
        changed: Callable[[], None],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._urls = [url for urls in remote.values() for url in urls]
        self._interval = interval
        self._changed = changed
        self._tls = tls
        self.states: dict[str, str] = dict.fromkeys(self._urls, "unknown")

    async def watch(self) -> None:
        """Look at every address each interval, until cancelled; ``changed`` after any change."""
        if not self._urls:
            return
        connector = aiohttp.TCPConnector(ssl=self._tls or True, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                states = await asyncio.gather(*(self._look(session, url) for url in self._urls))
                fresh = dict(zip(self._urls, states, strict=True))
                if fresh != self.states:
                    self.states = fresh
                    self._changed()
                await asyncio.sleep(self._interval)  # a probe period, not a wait for a condition

    async def _look(self, session: aiohttp.ClientSession, url: str) -> str:
        status = await readyz_status(session, url.rstrip("/"), PROBE_TIMEOUT)
        return "down" if status is None else "ready" if status == 200 else "not ready"
