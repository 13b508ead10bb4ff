"""Recent traces, gathered from every process's ``GET /traces`` and grouped by trace id. A process
without that endpoint (404) has no traces to give: the page says so instead of failing."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from .collect import Collector

TIMEOUT = aiohttp.ClientTimeout(total=2)
KINDS = {"client": "http", "server": "http", "producer": "mqtt", "consumer": "mqtt"}


async def _spans(collector: Collector, query: dict[str, str]) -> tuple[list[dict[str, Any]], bool]:
    """Every process's spans matching ``query``, each tagged with its process; and whether any
    process serves /traces at all."""
    children = [c for c in collector.supervisor.children if c.running and not c.retired]

    async def one(url: str, label: str) -> tuple[list[dict[str, Any]], bool]:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            async with collector.session.get(
                url + "/traces", params=query, headers=collector.headers(), timeout=TIMEOUT
            ) as response:
                if response.status != 200:
                    return [], False
                data = await response.json()
                process = str(data.get("process") or label)
                spans = [
                    {**span, "process": process} for span in data.get("spans", []) if isinstance(span, dict)
                ]
                return spans, True
        return [], False

    results = await asyncio.gather(*(one(c.url, c.label) for c in children))
    return [span for spans, _ in results for span in spans], any(served for _, served in results)


def _summary(trace_id: str, spans: list[dict[str, Any]]) -> dict[str, Any]:
    spans.sort(key=lambda s: s.get("start_ns", 0))
    roots = [s for s in spans if not s.get("parent_id")] or spans
    start = min(int(s.get("start_ns", 0)) for s in spans)
    end = max(int(s.get("end_ns", 0)) for s in spans)
    return {
        "trace_id": trace_id,
        "name": roots[0].get("name", ""),
        "service": roots[0].get("service", ""),
        "start_ns": start,
        "duration_ms": round((end - start) / 1e6, 3),
        "spans": len(spans),
        "processes": sorted({str(s["process"]) for s in spans}),
        "error": any(s.get("status") == "error" for s in spans),
    }


async def recent(collector: Collector, limit: int = 50) -> dict[str, Any]:
    spans, available = await _spans(collector, {"limit": "500"})
    grouped: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        grouped.setdefault(str(span.get("trace_id", "")), []).append(span)
    traces = [_summary(trace_id, group) for trace_id, group in grouped.items() if trace_id]
    traces.sort(key=lambda t: t["start_ns"], reverse=True)
    return {"available": available, "traces": traces[:limit]}


async def one_trace(collector: Collector, trace_id: str) -> dict[str, Any] | None:
    spans, _ = await _spans(collector, {"trace_id": trace_id})
    spans = [s for s in spans if s.get("trace_id") == trace_id]
    if not spans:
        return None
    summary = _summary(trace_id, spans)
    for span in spans:
        span["hop"] = KINDS.get(str(span.get("kind")), "")
        span["offset_ms"] = round((int(span.get("start_ns", 0)) - summary["start_ns"]) / 1e6, 3)
        span["duration_ms"] = round((int(span.get("end_ns", 0)) - int(span.get("start_ns", 0))) / 1e6, 3)
    return {**summary, "span_list": spans}
