"""Which replicas of each peer service a process sends calls to, kept current while it runs.

Three sources, from slow to fast:

- the addresses it was started with (``ARCHIPEL_PEERS``), or a peers file (``ARCHIPEL_PEERS_FILE``)
  that the local supervisor rewrites when replicas are added, replaced or removed; the file is
  checked for changes at every probe round, and a replica it adds joins the rotation at its
  first good probe;
- a probe of every known replica's ``/readyz`` each ``interval``: a replica that does not answer
  200 within the interval (down, draining, starting, or cut off the network) leaves the rotation,
  and joins it again at its first good answer;
- a failed connection, which takes the replica out at once, without waiting for the next probe.

A replica that fails two probes in a row while another one can take its calls is unresponsive
(cut off the network, or frozen): the calls waiting on it are given up on at once
(:meth:`Membership.on_unresponsive`), so an idempotent one is retried elsewhere within its
deadline instead of spending all of it there.

When every replica of a service is out, calls go to all of them anyway: failing fast there is the
breaker's job, not this module's, and a stale verdict must never make a healthy service unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Collection, Mapping, Sequence

import aiohttp

log = logging.getLogger("archipel.membership")
# Failed probes in a row (one per interval, each allowed the whole interval) before the calls in
# flight to a replica are given up on; one slow probe on a busy machine is not enough.
UNRESPONSIVE_AFTER = 2


class Membership:
    def __init__(
        self,
        peers: Mapping[str, Sequence[str]],
        *,
        peers_file: str = "",
        interval: float = 1.0,
        only: Collection[str] | None = None,
    ) -> None:
        """``only``: the services this process calls; the peers file lists every service."""
        self._known: dict[str, list[str]] = {name: list(urls) for name, urls in peers.items() if urls}
        self._peers_file = peers_file
        self._only = None if only is None else set(only)
        self._file_stamp: tuple[int, int] | None = None
        self._interval = interval
        self._down: set[str] = set()  # base URLs out of the rotation
        # Replicas seen ready at least once. Until then a replica is starting with everyone else
        # (a deployment coming up): its comings and goings are DEBUG, not a line per peer at INFO.
        self._seen_ready: set[str] = set()
        self._initial: set[str] = set()  # replicas known before probing started
        self._failures: dict[str, int] = {}  # failed probes in a row, per base URL
        self._unresponsive: list[Callable[[str], None]] = []
        self._back: list[Callable[[str], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._read_file()

    def services(self) -> set[str]:
        return set(self._known)

    def endpoints(self, service: str) -> list[str]:
        """Every known replica of ``service``, in rotation or not."""
        return self._known.get(service, [])

    def healthy(self, service: str) -> list[str]:
        """The replicas of ``service`` in rotation; all known ones when none is."""
        known = self._known.get(service, [])
        return [url for url in known if url not in self._down] or known

    def is_down(self, url: str) -> bool:
        return url in self._down

    def mark_down(self, url: str) -> None:
        """A connection to ``url`` failed: leave it out until a probe finds it ready."""
        if url not in self._down:
            self._down.add(url)
            self._announce(url, "replica %s is out of rotation: a connection failed")

    def replace(self, peers: Mapping[str, Sequence[str]]) -> None:
        """Take ``peers`` (service -> base URLs) as the whole list of known replicas."""
        known = {name: [url.rstrip("/") for url in urls] for name, urls in peers.items() if urls}
        if known != self._known:
            before = self._all()
            self._known = known
            urls = self._all()
            self._down &= urls
            if self._task is not None:  # a new replica joins the rotation at its first good probe
                self._down |= urls - before

    @property
    def probing(self) -> bool:
        """Whether replicas are being probed (started, with an interval): only then can one be
        found unresponsive."""
        return self._task is not None

    def on_unresponsive(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(url)`` when a replica has failed UNRESPONSIVE_AFTER probes in a row
        while another replica of one of its services is in rotation: its callers should give up
        waiting on it (a host cut off the network, a frozen process) and try elsewhere."""
        self._unresponsive.append(listener)

    def on_back(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(url)`` when a replica out of rotation passes its probe again (a
        restarted process): its circuit breakers need not wait out their cool-down."""
        self._back.append(listener)

    def _has_alternative(self, url: str) -> bool:
        return any(
            url in urls and any(other != url and other not in self._down for other in urls)
            for urls in self._known.values()
        )

    def _announce(self, url: str, message: str) -> None:
        """A replica leaves the rotation: INFO once it had been ready, else it is still starting."""
        if url in self._seen_ready:
            log.info(message, url)
        else:
            log.debug("replica %s is not ready yet", url)

    def start(self, session: aiohttp.ClientSession) -> None:
        if self._task is None and self._interval > 0 and (self._known or self._peers_file):
            self._initial = self._all()
            self._task = asyncio.create_task(self._probe_forever(session))

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- probes ------------------------------------------------------------------------------

    async def _probe_forever(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            self._read_file()
            urls = sorted(self._all())
            verdicts = await asyncio.gather(*(self._probe(session, url) for url in urls))
            for url, ready in zip(urls, verdicts, strict=True):
                self._failures[url] = 0 if ready else self._failures.get(url, 0) + 1
                if ready and url in self._down:
                    self._down.discard(url)
                    if url in self._seen_ready:
                        log.info("replica %s is back in rotation", url)
                    elif url in self._initial:
                        log.debug("replica %s is ready: in rotation", url)
                    else:  # added while running (scaled up, rolled out)
                        log.info("replica %s joins the rotation", url)
                    for listener in self._back:
                        listener(url)
                elif ready and url not in self._seen_ready:  # found ready at its first probe
                    log.debug("replica %s is ready: in rotation", url)
                elif not ready and url not in self._down:
                    self._down.add(url)
                    self._announce(url, "replica %s is out of rotation: not ready")
                if ready:
                    self._seen_ready.add(url)
                if self._failures[url] == UNRESPONSIVE_AFTER and self._has_alternative(url):
                    log.warning("replica %s fails its probes: calls waiting on it move on", url)
                    for listener in self._unresponsive:
                        listener(url)
            await asyncio.sleep(max(0.0, self._interval - (loop.time() - started)))

    async def _probe(self, session: aiohttp.ClientSession, url: str) -> bool:
        return await readyz_status(session, url, self._interval) == 200

    def _all(self) -> set[str]:
        return {url for urls in self._known.values() for url in urls}

    # -- the peers file ----------------------------------------------------------------------

    def _read_file(self) -> None:
        if not self._peers_file:
            return
        try:
            stat = os.stat(self._peers_file)
        except OSError:
            return  # not written yet: keep what we have
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._file_stamp:
            return
        try:
            with open(self._peers_file, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            log.warning("peers file %s unreadable, keeping the current peers: %s", self._peers_file, exc)
            return
        self._file_stamp = stamp
        if not isinstance(data, dict) or not all(
            isinstance(urls, list) and all(isinstance(u, str) for u in urls) for urls in data.values()
        ):
            log.warning("peers file %s is not {service: [url, ...]}: ignored", self._peers_file)
            return
        self.replace({name: urls for name, urls in data.items() if self._only is None or name in self._only})


async def readyz_status(session: aiohttp.ClientSession, url: str, timeout: float) -> int | None:
    """The status ``url``'s ``/readyz`` answers with, or None when it does not answer in time."""
    try:
        async with session.get(url + "/readyz", timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
