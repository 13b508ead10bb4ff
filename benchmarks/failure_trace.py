"""The load of ``benchmarks/failure.py``: an open loop that keeps every call's timestamps, what a
trace says about one disruption (a kill, a restart, a rollout), and the timeline plot.

Times are seconds from the start of the run; a call's ``start`` is its *scheduled* start (open
loop: a server that stalls makes calls queue, it does not slow the arrivals).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from archipel._bench.load import Outcome, RequestFailed, Visitor, percentile
from archipel._bench.mix import Mix

BIN_S = 0.1  # the timeline's bins
STEADY_S = 2.0  # "steady again": every call started in this long a stretch succeeded


@dataclass(frozen=True)
class CallTrace:
    name: str  # the mix's call (a task of the Locust file)
    start: float
    end: float
    ok: bool
    error: str = ""


@dataclass
class Trace:
    """An open-loop run whose end the caller may push back (until a rollout has finished)."""

    rate: float
    calls: list[CallTrace] = field(default_factory=list)
    started: float = 0.0  # time.perf_counter() at the first scheduled start
    end: float = 0.0  # time.perf_counter() after which no call starts

    def begin(self, duration: float) -> None:
        self.started = time.perf_counter()
        self.end = self.started + duration

    def now(self) -> float:
        return time.perf_counter() - self.started

    def extend(self, until: float) -> None:
        """Keep calling until at least ``until`` (seconds from the start)."""
        self.end = max(self.end, self.started + until)


async def run(trace: Trace, base: str, mix: Mix, *, timeout: float = 10.0, seed: int = 1) -> None:
    """Start ``trace.rate`` calls per second from :meth:`Trace.begin` until ``trace.end``, then
    wait for the last ones to finish or time out."""
    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=0)
    # A visitor's next call comes a few timeouts after its last one: two calls of one cookie jar
    # at once (two checkouts of one basket) would fail for the client's sake, not the server's.
    visitors = [Visitor(base, connector, mix, timeout) for _ in range(math.ceil(trace.rate * 3 * timeout))]
    running: set[asyncio.Task[None]] = set()
    try:
        index = 0
        while (scheduled := trace.started + index / trace.rate) < trace.end:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_call(trace, visitors[index % len(visitors)], mix, rng, scheduled))
            running.add(task)
            task.add_done_callback(running.discard)
            index += 1
        if running:
            await asyncio.wait(set(running), timeout=timeout + 1.0)
    finally:
        await asyncio.gather(*(v.close() for v in visitors))
        await connector.close()


async def _call(trace: Trace, visitor: Visitor, mix: Mix, rng: random.Random, scheduled: float) -> None:
    call = mix.pick(rng)
    error = ""
    try:
        await visitor.run(call, Outcome())
    except RequestFailed as exc:
        error = str(exc)
    except TimeoutError:
        error = "timed out"
    except aiohttp.ClientError as exc:
        error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # an expression of the mix that fails on a broken page, say
        error = f"{type(exc).__name__}: {exc}"
    end = time.perf_counter()
    trace.calls.append(CallTrace(call.name, scheduled - trace.started, end - trace.started, not error, error))


# -- reading a trace ----------------------------------------------------------------------------


def analyse(calls: Sequence[CallTrace], t0: float, back_s: float | None) -> dict[str, Any]:
    """What the disruption at ``t0`` cost; ``back_s``: when the process was ready again (after
    ``t0``), None if it never was.

    - the failed calls that ended after ``t0`` (those before it are counted apart);
    - the window of unavailability: first to last of them (start of the first, end of the last);
    - ``steady_s``: from ``t0`` to the first call, after the first failure, that opens a stretch
      of ``STEADY_S`` where every call succeeded (None if the run never got one): unlike the
      window, a stray failure long after does not stretch it;
    - per call of the mix, the fraction that failed during the outage: from ``t0`` (or the first
      failure) until both the process was back and the last failure was over.
    """
    ordered = sorted(calls, key=lambda c: c.start)
    failed = [c for c in ordered if not c.ok and c.end >= t0]
    first = min((c.start for c in failed), default=None)
    last = max((c.end for c in failed), default=None)
    outage_from = min(t0, first) if first is not None else t0
    outage_to = max(t0 + (back_s or 0.0), last if last is not None else t0)
    during = [c for c in ordered if outage_from <= c.start <= outage_to]
    per_call: dict[str, dict[str, float]] = {}
    for name in sorted({c.name for c in ordered}):
        mine = [c for c in during if c.name == name]
        bad = sum(not c.ok for c in mine)
        per_call[name] = {
            "calls": len(mine),
            "failed": bad,
            "fraction": round(bad / len(mine), 3) if mine else 0.0,
        }
    succeeded = [c.end - c.start for c in ordered if c.ok]
    return {
        "calls": len(ordered),
        "failed": len(failed),
        "failed_fraction": round(len(failed) / len(ordered), 4) if ordered else None,
        "failed_before": sum(not c.ok and c.end < t0 for c in ordered),
        "window_from_s": _round(first - t0 if first is not None else None),
        "window_to_s": _round(last - t0 if last is not None else None),
        "unavailable_s": _round(last - first if first is not None and last is not None else 0.0),
        "steady_s": _round(_steady(ordered, t0)),
        "outage_s": _round(outage_to - outage_from),
        "per_call": per_call,
        "error_kinds": dict(Counter(c.error[:120] for c in failed).most_common(5)),
        "p50_ms": _round(_ms(percentile(succeeded, 0.5))),
        "p99_ms": _round(_ms(percentile(succeeded, 0.99))),
    }


def _steady(ordered: Sequence[CallTrace], t0: float) -> float | None:
    """From ``t0`` to the first call, after the first failure, that opens ``STEADY_S`` of
    successes: 0 when nothing failed, None when the run never got there."""
    failures = [c.start for c in ordered if not c.ok and c.end >= t0]
    if not failures:
        return 0.0
    opened: CallTrace | None = None  # the first call of the current stretch of successes
    for call in ordered:
        if call.start < min(failures):
            continue
        if not call.ok:
            opened = None
            continue
        opened = opened or call
        if call.start - opened.start >= STEADY_S:
            return max(0.0, opened.start - t0)
    return None


def timeline(calls: Sequence[CallTrace], length: float) -> dict[str, Any]:
    """Successes and failures per ``BIN_S`` bin of their scheduled start."""
    bins = max(1, int(length / BIN_S) + 1)
    ok, failed = [0] * bins, [0] * bins
    for call in calls:
        slot = min(bins - 1, max(0, int(call.start / BIN_S)))
        (ok if call.ok else failed)[slot] += 1
    return {"bin_s": BIN_S, "ok": ok, "failed": failed}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# -- the plot -----------------------------------------------------------------------------------


def plot(panels: Sequence[tuple[str, dict[str, Any]]], title: str, stem: Path) -> list[Path]:
    """One panel per trial: successes and failures per bin, the disruption and the moment the
    process was back marked; ``stem``.png and .svg. Nothing without matplotlib."""
    try:
        import matplotlib
    except ImportError:  # the bench extra is not installed: the table alone
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        return []
    figure, axes_list = plt.subplots(
        len(panels), 1, figsize=(9, 1.6 * len(panels) + 0.8), sharex=True, squeeze=False, layout="constrained"
    )
    for axes, (name, extra) in zip((row[0] for row in axes_list), panels, strict=True):
        line = extra["timeline"]
        t0, width = extra["t0_s"], line["bin_s"]
        xs = [i * width - t0 for i in range(len(line["ok"]))]
        axes.bar(xs, line["ok"], width=width, align="edge", color="tab:green", label="succeeded")
        axes.bar(
            xs, line["failed"], width=width, align="edge", bottom=line["ok"], color="tab:red", label="failed"
        )
        axes.axvline(0, color="black", linewidth=1)
        back = extra.get("back_s")
        if back is not None:
            axes.axvline(back, color="tab:blue", linestyle="--", linewidth=1)
        axes.set_title(name, fontsize="small", loc="left")
        axes.set_ylabel("calls / bin", fontsize="x-small")
    last = axes_list[-1][0]
    last.set_xlabel(
        f"seconds from the kill or update (black); back and ready: dashed; bins of {BIN_S * 1000:.0f} ms"
    )
    axes_list[0][0].legend(fontsize="x-small", loc="upper right")
    figure.suptitle(title, fontsize="medium")
    written = []
    for suffix in (".png", ".svg"):
        path = stem.with_suffix(suffix)
        figure.savefig(path)
        written.append(path)
    plt.close(figure)
    return written
