"""The outbox relay: publishes committed events, then removes them from the outbox.

Rows are leased before publishing (inserted leased by a commit of this process, or claimed
later), so replicas relaying one shared outbox do not publish the same row at once, and the
rows of a replica that died are taken over when its lease runs out. A row leaves the outbox
only after ``publish`` returned: delivery is at least once (a crash between the two publishes
it again), never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from .._backoff import backoff_delay
from .._events.bus import Envelope
from .metrics import OUTBOX_PENDING, OUTBOX_PUBLISH_FAILURES, OUTBOX_PUBLISHED
from .records import OutboxRecord
from .store import Store

log = logging.getLogger("archipel.outbox")

Publish = Callable[[Envelope], Awaitable[None]]


class OutboxRelay:
    """Moves ``store``'s outbox to ``publish``: at most ``max_in_flight`` events at a time.

    ``max_in_flight`` is a soft bound: a commit that ran while the relay was claiming may hand
    over its rows beyond it.

    ``owner`` names this relay in the leases; it must differ between live replicas. Started, the
    relay attaches itself to the store object: a commit through it inserts its events already
    leased to this relay and hands them over (``take``), so they are published at once without
    a claim query; events beyond the free slots are announced with ``notify()``. Every
    ``sweep_interval`` seconds the relay also claims what other processes committed and rows
    whose lease expired.
    """

    def __init__(
        self,
        store: Store,
        publish: Publish,
        *,
        owner: str,
        max_in_flight: int = 100,
        lease_seconds: float = 30.0,
        sweep_interval: float = 1.0,
        retry_initial: float = 0.05,
        retry_max: float = 5.0,
        stop_timeout: float = 1.0,
    ) -> None:
        if max_in_flight < 1 or lease_seconds <= 0 or sweep_interval <= 0:
            raise ValueError("max_in_flight, lease_seconds and sweep_interval must be positive")
        self.store = store
        self.owner = owner
        self.max_in_flight = max_in_flight
        self.lease_seconds = lease_seconds
        self.sweep_interval = sweep_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.stop_timeout = stop_timeout
        self._publish = publish
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._done: list[str] = []  # published, to delete in the loop's next batch
        self._wake = asyncio.Event()
        self._claim_more = True  # rows may be waiting: the next loop turn claims
        self._saturated = False  # the last claim filled every slot, so a freed slot should claim
        self._stopping = False
        self._loop: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()
        self._published = OUTBOX_PUBLISHED.labels(store.service)
        self._failures = OUTBOX_PUBLISH_FAILURES.labels(store.service)
        self._pending = OUTBOX_PENDING.labels(store.service)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        """Attach to the store and start relaying; returns once the rows already waiting (left
        by a previous run) are claimed."""
        if self._loop is not None:
            return
        self._stopping, self._claim_more = False, True
        # Our name outlives our process: rows leased to it were left by a predecessor that was
        # killed mid-publish. Taken back now, not after their lease runs out.
        taken_back = await self.store.outbox_release_owner(self.owner)
        if taken_back:
            log.info(
                "%s: %d event(s) left in flight by a previous run, publishing again", self.owner, taken_back
            )
        self.store.attach_relay(self)
        first_turn = asyncio.Event()
        self._loop = asyncio.create_task(self._run(first_turn), name=f"outbox relay {self.owner}")
        self._loop.add_done_callback(lambda task: first_turn.set())
        self._loop.add_done_callback(self._loop_ended)
        await first_turn.wait()

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: the outbox relay stopped on an error", self.owner, exc_info=task.exception())

    def notify(self) -> None:
        """New rows were committed unleased: claim them now rather than at the next sweep."""
        self._claim_more = True
        self._wake.set()

    def free_slots(self) -> int:
        if self._loop is None or self._stopping:
            return 0
        return self.max_in_flight - len(self._in_flight)

    def take(self, records: Sequence[OutboxRecord]) -> None:
        """Publish rows just committed already leased to this relay."""
        if self._loop is None or self._stopping:  # stopped while their commit was under way
            task = asyncio.create_task(self._release([r.id for r in records]))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)
            return
        for record in records:
            if record.id not in self._in_flight:
                self._launch(record)

    async def stop(self) -> None:
        """Stop claiming, give publishes in flight ``stop_timeout`` seconds, and hand the rest
        back to the outbox (released, so the next relay publishes them without waiting)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        self.store.attach_relay(None)
        self._stopping = True
        self._wake.set()
        # The loop ends at its next turn; a claim it is making completes, so no lease is lost.
        await _wait_or_cancel([loop], self.stop_timeout)
        in_flight = list(self._in_flight)
        await _wait_or_cancel(list(self._in_flight.values()), self.stop_timeout)
        published = set(self._done)
        await self._flush_done()
        await self._release([record_id for record_id in in_flight if record_id not in published])
        if self._releasing:
            await asyncio.gather(*self._releasing)

    async def _run(self, first_turn: asyncio.Event) -> None:
        while not self._stopping:
            await self._flush_done()
            free = self.max_in_flight - len(self._in_flight)
            if self._claim_more and free > 0:
                self._claim_more = False
                try:
                    records = await self.store.outbox_claim(self.owner, free, self.lease_seconds)
                except Exception:
                    log.exception("%s: claiming outbox rows failed; retrying at the next sweep", self.owner)
                    records = []
                for record in records:
                    # A row of ours claimed again had its lease run out while we retried: the
                    # claim just renewed the lease; the publish already in flight carries on.
                    if record.id not in self._in_flight:
                        self._launch(record)
                self._saturated = len(records) >= free
                first_turn.set()
                if self._saturated:
                    self._claim_more = True
                    if len(self._in_flight) < self.max_in_flight:
                        continue
            first_turn.set()
            if self._stopping:
                break
            try:
                async with asyncio.timeout(self.sweep_interval):
                    await self._wake.wait()
            except TimeoutError:
                self._claim_more = True
                await self._update_pending()
            self._wake.clear()

    def _launch(self, record: OutboxRecord) -> None:
        task = asyncio.create_task(self._deliver(record), name=f"outbox {record.id}")
        self._in_flight[record.id] = task

    async def _deliver(self, record: OutboxRecord) -> None:
        envelope = record.to_envelope()
        attempt = 0
        try:
            while True:
                try:
                    await self._publish(envelope)
                    break
                except Exception as exc:
                    attempt += 1
                    self._failures.inc()
                    # Jittered: replicas that failed together do not retry together.
                    delay = backoff_delay(attempt, self.retry_initial, self.retry_max)
                    if attempt & (attempt - 1) == 0:  # attempts 1, 2, 4, 8...: logged, not flooded
                        log.warning(
                            "%s: publishing event %s on %s failed (attempt %d, next in %.2fs): %r",
                            self.owner,
                            record.id,
                            record.topic,
                            attempt,
                            delay,
                            exc,
                        )
                    await asyncio.sleep(delay)
            self._published.inc()
            self._done.append(record.id)
        finally:
            del self._in_flight[record.id]
            if self._saturated:
                self._claim_more = True
            self._wake.set()

    async def _flush_done(self) -> None:
        # One DELETE for every publish that finished since the last turn of the loop.
        done, self._done = self._done, []
        if not done:
            return
        try:
            await self.store.outbox_done(done)
        except Exception:
            log.exception(
                "%s: could not remove %d published rows from the outbox; they will be published "
                "again when their lease expires",
                self.owner,
                len(done),
            )

    async def _release(self, ids: list[str]) -> None:
        if not ids:
            return
        try:
            await self.store.outbox_release(ids)
        except Exception:
            log.exception(
                "%s: could not release %d outbox rows; their lease must expire first", self.owner, len(ids)
            )

    async def _update_pending(self) -> None:
        try:
            self._pending.set(await self.store.outbox_pending_count())
        except Exception:
            log.debug("%s: counting the outbox failed", self.owner, exc_info=True)


async def _wait_or_cancel(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
