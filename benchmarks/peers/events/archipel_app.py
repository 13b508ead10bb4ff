"""The services of the "events" benchmark's archipel side: ``Emitter`` emits, ``Sink`` handles."""

from __future__ import annotations

from collections.abc import Callable

from archipel import Event, Service, on


class BenchEvent(Event, topic="bench/placed"):
    seq: int
    t: float
    w: int
    order_id: str
    email: str
    note: str


class Emitter(Service, emits=[BenchEvent]):
    pass


HIT: list[Callable[[int, float, int], None]] = []  # the consumer's counter, set before start


class Sink(Service):
    @on(BenchEvent)
    async def got(self, event: BenchEvent) -> None:
        HIT[0](event.seq, event.t, event.w)
