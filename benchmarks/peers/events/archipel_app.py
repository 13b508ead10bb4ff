"""The services of the "events" benchmark's archipel side: ``Emitter`` emits, ``Sink`` handles."""

from __future__ import annotations

from collections.abc import Callable

from archipel import Event, Service, collection, on


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


# The same pair with state: the emitter emits inside a unit of work (the event commits to its
# outbox with the state, and the relay publishes it), the sink's handler runs with its inbox.


class Ledger(Service, emits=[BenchEvent]):
    entries = collection("entries", int)


class LedgerSink(Service):
    entries = collection("entries", int)

    @on(BenchEvent)
    async def got(self, event: BenchEvent) -> None:
        HIT[0](event.seq, event.t, event.w)
