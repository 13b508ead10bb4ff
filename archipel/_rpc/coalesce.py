"""Coalescing: concurrent remote calls of a method sent as one call of its batch method.

``@rpc(batch="convert_all")`` on ``convert`` (see ``_model.Batching``) makes a remote proxy
collect the calls of ``convert`` made in one iteration of the event loop, the DataLoader way:
``asyncio.gather(*(currency.convert(p, code) for p in page))`` becomes one HTTP request of
``convert_all`` instead of one per product. The flush is scheduled with ``loop.call_soon``, so
a call waits for no timer: only for the other callers of the same iteration to enqueue theirs.

Calls are grouped by their other arguments (equal JSON), each group split into chunks of
``max_batch``. A chunk goes through the batch method's own chain (deadline, retries, breaker,
metrics, credentials) as one call, under the earliest deadline of its callers; each caller gets
its item of the answer, or the chunk's error. A caller alone in its group makes its own call of
the single method, in its own task, exactly as without coalescing. A caller cancelled while
waiting leaves the others' call running; the call is cancelled when no caller is left.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .. import _context
from .._chain import Invocation, Next, Site
from .._errors import RemoteError
from .._model import Batching, MethodSpec

_ALONE: Any = object()  # a future's result telling its caller to make the single call itself


@dataclass(slots=True)
class _Group:
    """The pending calls with equal other arguments."""

    invocation: Invocation  # the first caller's: its other arguments stand for the group's
    context: contextvars.Context  # the first caller's (trace), where the batch call runs
    items: list[Any] = field(default_factory=list)
    futures: list[asyncio.Future[Any]] = field(default_factory=list)
    deadlines: list[float | None] = field(default_factory=list)  # monotonic, None: no deadline
    calls: dict[int, _Call] = field(default_factory=dict)  # caller's index -> its batch call, once sent


@dataclass(slots=True)
class _Call:
    """A batch call in flight, and how many of its callers still wait for it."""

    task: asyncio.Task[None]
    waiting: int


class Coalescer:
    """The ``Next`` a remote proxy runs for a batched method: enqueues the call's item and waits
    for its answer. One per proxy method, so per caller and callee."""

    def __init__(self, single: MethodSpec, batching: Batching, chain: Next, site: Site, batch: Next) -> None:
        self._single = single
        self._chain = chain  # the single method's own chain: for a caller alone in its group
        self._item = batching.item
        self._items = batching.items
        self._max = batching.max_batch
        self._site = site  # the batch method's site and chain
        self._batch = batch
        default = next(p.default for p in single.params if p.name == batching.item)
        self._default = None if default is msgspec.NODEFAULT else default
        self._pending: dict[bytes, _Group] = {}
        self._flushing = False
        self._tasks: set[asyncio.Task[None]] = set()  # batch calls in flight (a task needs a holder)

    async def __call__(self, invocation: Invocation) -> Any:
        arguments = invocation.arguments
        others = {k: v for k, v in arguments.items() if k != self._item}
        key = msgspec.json.encode(others)  # equal other arguments: equal JSON (what the callee sees)
        group = self._pending.get(key)
        if group is None:
            group = self._pending[key] = _Group(invocation, contextvars.copy_context())
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        remaining = _context.remaining_seconds()
        group.items.append(arguments.get(self._item, self._default))
        group.futures.append(future)
        group.deadlines.append(None if remaining is None else time.monotonic() + remaining)
        index = len(group.futures) - 1
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)
        try:
            result = await future
        except asyncio.CancelledError:
            call = group.calls.get(index)
            if call is not None:
                call.waiting -= 1
                if call.waiting == 0:
                    call.task.cancel()  # every caller gave up: nobody waits for the answer
            raise
        if result is _ALONE:
            return await self._chain(invocation)
        return result

    def _flush(self) -> None:
        self._flushing = False
        groups, self._pending = self._pending, {}
        for group in groups.values():
            live = [i for i, future in enumerate(group.futures) if not future.done()]  # not cancelled
            if len(live) == 1:
                group.futures[live[0]].set_result(_ALONE)
                continue
            for start in range(0, len(live), self._max):
                chunk = live[start : start + self._max]
                if len(chunk) == 1:  # the last of a split group
                    group.futures[chunk[0]].set_result(_ALONE)
                    continue
                self._start(group, chunk)

    def _start(self, group: _Group, chunk: list[int]) -> None:
        futures = [group.futures[i] for i in chunk]
        deadlines = [d for i in chunk if (d := group.deadlines[i]) is not None]
        context = group.context.copy()
        # The chain's CallDeadline reads the inherited deadline: the earliest of the callers'.
        context.run(_context.set_timeout, min(deadlines) - time.monotonic() if deadlines else None)
        arguments = {**group.invocation.arguments, self._items: [group.items[i] for i in chunk]}
        invocation = Invocation(self._site, arguments)
        task = asyncio.get_running_loop().create_task(self._call(invocation, futures), context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        call = _Call(task, len(chunk))
        for i in chunk:
            group.calls[i] = call

    async def _call(self, invocation: Invocation, futures: list[asyncio.Future[Any]]) -> None:
        try:
            answers = await self._batch(invocation)
            if not isinstance(answers, list) or len(answers) != len(futures):
                count = len(answers) if isinstance(answers, list) else type(answers).__name__
                raise RemoteError(
                    f"{self._site.qualname} answered {count} items for {len(futures)}: a batch "
                    f"method must answer one item per item, in order (for {self._single.qualname})",
                    service=self._site.service,
                    method=self._site.method,
                    remote_kind="invalid_response",
                    http_status=502,
                )
        except Exception as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled: every caller had already left
            for future in futures:
                future.cancel()
            raise
        for future, answer in zip(futures, answers, strict=True):
            if not future.done():
                future.set_result(answer)


def coalesce(method: MethodSpec, site: Site, chain: Next, sites: dict[str, tuple[Site, Next]]) -> Next:
    """What a proxy runs for ``method``: its ``chain``, or a coalescer when the method declares a
    batch method and the call is remote to a dependency without fallbacks (the fallback of a
    single call must stand for that call alone)."""
    if method.batch is None or not site.remote or site.optional:
        return chain
    batch_site, batch_chain = sites[method.batch.method]
    return Coalescer(method, method.batch, chain, batch_site, batch_chain)
