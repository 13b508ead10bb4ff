"""Load against an HTTP edge with aiohttp, one mix call at a time.

- :func:`open_loop`: calls start on a fixed schedule (``rate`` per second) whatever the latency,
  so a slow server makes calls queue and their latency, counted from the *scheduled* start,
  shows it (no coordinated omission);
- :func:`closed_loop`: ``users`` visitors each run one call after another, no think time: the
  saturation throughput.

Each visitor has its own cookies (a session, a currency), like a browser; the visitors share one
connection pool without a limit, so the client never queues calls itself. A call's latency runs
from its start to the end of its last request; a call fails when a request gets a status >= 400,
cannot connect, or the call outlives ``timeout``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .mix import BUILTINS, Call, Let, Mix, Request, Response, evaluate

VISITORS = 64  # cookie jars an open-loop run rotates through


@dataclass
class Outcome:
    """What one run measured."""

    latencies_ms: list[float] = field(default_factory=list)  # of the calls that succeeded
    errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    calls: int = 0  # started
    requests: int = 0  # HTTP requests sent
    elapsed: float = 0.0  # seconds from the first start to the last end
    late_starts: int = 0  # open loop: calls the generator started > 10 ms after their schedule

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind[:200]] += 1

    @property
    def throughput(self) -> float | None:
        done = len(self.latencies_ms)
        return done / self.elapsed if self.elapsed > 0 and done else None


class Visitor:
    """One cookie jar running calls of a mix against ``base``."""

    def __init__(self, base: str, connector: aiohttp.BaseConnector, mix: Mix, timeout: float) -> None:
        self.base, self.mix = base.rstrip("/"), mix
        self.session = aiohttp.ClientSession(
            connector=connector,
            connector_owner=False,
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # 127.0.0.1 is an IP address
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def close(self) -> None:
        await self.session.close()

    async def run(self, call: Call, outcome: Outcome) -> None:
        """Run ``call``'s steps; raises on a failed request."""
        scope: dict[str, Any] = {**BUILTINS, **self.mix.constants}
        for step in call.steps:
            if isinstance(step, Let):
                scope[step.name] = evaluate(step.expression, scope)
                continue
            response = await self.request(step, scope, outcome)
            if step.bind:
                scope[step.bind] = response

    async def request(self, step: Request, scope: dict[str, Any], outcome: Outcome) -> Response:
        if step.dynamic:
            path = str(evaluate(step.path, scope))
            data = {k: str(evaluate(v, scope)) for k, v in step.data.items()} if step.data else None
            body = evaluate(step.json, scope) if step.json else None
        else:
            path, data = step.path, dict(step.data) if step.data is not None else None
            body = json.loads(step.json) if step.json else None
        outcome.requests += 1
        async with self.session.request(step.method, self.base + path, data=data, json=body) as response:
            text = await response.text()
            if response.status >= 400:
                raise RequestFailed(f"{step.method} {path}: HTTP {response.status}")
            return Response(response.status, text)


class RequestFailed(Exception):
    pass


async def _timed(visitor: Visitor, call: Call, started: float, outcome: Outcome) -> None:
    try:
        await visitor.run(call, outcome)
    except RequestFailed as exc:
        outcome.error(str(exc))
    except TimeoutError:
        outcome.error(f"{call.name}: timed out")
    except aiohttp.ClientError as exc:
        outcome.error(f"{call.name}: {type(exc).__name__}: {exc}")
    except Exception as exc:  # an expression of the mix that fails is the mix's error, counted
        outcome.error(f"{call.name}: {type(exc).__name__}: {exc}")
    else:
        outcome.latencies_ms.append((time.perf_counter() - started) * 1000)


def _connector() -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=0, force_close=False)


async def open_loop(
    base: str,
    mix: Mix,
    rate: float,
    duration: float,
    *,
    timeout: float = 10.0,
    seed: int = 1,
    progress: Callable[[float], None] | None = None,
) -> Outcome:
    """Start ``rate`` calls per second for ``duration`` seconds, then wait for the last ones."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    rng = random.Random(seed)
    outcome = Outcome()
    connector = _connector()
    visitors = [Visitor(base, connector, mix, timeout) for _ in range(VISITORS)]
    running: set[asyncio.Task[None]] = set()
    total = max(1, round(rate * duration))
    try:
        start = time.perf_counter()
        for index in range(total):
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > 0.010:
                outcome.late_starts += 1
            task = asyncio.create_task(_timed(visitors[index % VISITORS], mix.pick(rng), scheduled, outcome))
            running.add(task)
            task.add_done_callback(running.discard)
            outcome.calls += 1
            if progress is not None and index % 10 == 0:
                progress((index + 1) / total)
        await _drain(running, timeout + 1.0, outcome)
        outcome.elapsed = time.perf_counter() - start
    finally:
        await _close(visitors, connector)
    if progress is not None:
        progress(1.0)
    return outcome


async def closed_loop(
    base: str,
    mix: Mix,
    users: int,
    duration: float,
    *,
    timeout: float = 10.0,
    seed: int = 1,
    progress: Callable[[float], None] | None = None,
) -> Outcome:
    """``users`` visitors each run calls back to back for ``duration`` seconds."""
    if users < 1 or duration <= 0:
        raise ValueError("users must be at least 1 and duration positive")
    outcome = Outcome()
    connector = _connector()
    visitors = [Visitor(base, connector, mix, timeout) for _ in range(users)]
    start = time.perf_counter()
    deadline = start + duration

    async def user(visitor: Visitor, rng: random.Random) -> None:
        while (now := time.perf_counter()) < deadline:
            outcome.calls += 1
            await _timed(visitor, mix.pick(rng), now, outcome)

    async def report() -> None:
        while progress is not None:
            progress(min(1.0, (time.perf_counter() - start) / duration))
            await asyncio.sleep(0.25)

    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*(user(v, random.Random(seed + i)) for i, v in enumerate(visitors)))
        outcome.elapsed = time.perf_counter() - start
    finally:
        reporter.cancel()
        await _close(visitors, connector)
    if progress is not None:
        progress(1.0)
    return outcome


async def _drain(running: set[asyncio.Task[None]], timeout: float, outcome: Outcome) -> None:
    if not running:
        return
    _, pending = await asyncio.wait(set(running), timeout=timeout)
    for task in pending:
        task.cancel()
        outcome.error("still running when the run ended")
    await asyncio.gather(*pending, return_exceptions=True)


async def _close(visitors: list[Visitor], connector: aiohttp.BaseConnector) -> None:
    await asyncio.gather(*(v.close() for v in visitors))
    await connector.close()


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (``fraction`` in 0..1) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]
