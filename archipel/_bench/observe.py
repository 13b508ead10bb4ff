"""What the placement advisor measures: the app as microservices under the mix, seen through
every process's ``/metrics`` and ``/proc``.

After a warm-up, each process's counters are read before and after one open-loop run; the
differences, divided by the visits of the run, give the calls per edge (``archipel_calls``,
recorded by callers), the caller's mean wait (``archipel_call_duration_seconds``), the callee's
mean handler time (``archipel_rpc_duration_seconds``) and each process's CPU. ``/metrics`` is
read with the deployment's scrape token, derived from its secret like ``archipel token
--scrape`` does, so the measured deployment runs exactly as configured.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .._app import App
from .._security.keyring import scrape_token
from .._security.secrets import SECRET_FILE_NAME, load_secrets
from .._state.collection import CollectionField
from . import procs
from .advisor import Edge, ServiceInfo
from .deployment import MICROSERVICES, Deployment, StartFailed, edge_services
from .load import Outcome, open_loop
from .mix import Mix

Key = tuple[str, ...]
HISTOGRAMS = ("archipel_call_duration_seconds_", "archipel_rpc_duration_seconds_")  # caller's, callee's


@dataclass
class Counters:
    """The metrics the advisor reads from one process, summed over outcomes and statuses."""

    calls: dict[Key, float] = field(default_factory=lambda: defaultdict(float))  # caller, callee, method
    wait: dict[Key, list[float]] = field(default_factory=dict)  # callee, method -> [sum s, count]
    served: dict[Key, float] = field(default_factory=lambda: defaultdict(float))  # service, method
    serve: dict[Key, list[float]] = field(default_factory=dict)  # service, method -> [sum s, count]

    def minus(self, before: Counters) -> Counters:
        return Counters(
            calls=_minus(self.calls, before.calls),
            wait={k: _pair_minus(v, before.wait.get(k)) for k, v in self.wait.items()},
            served=_minus(self.served, before.served),
            serve={k: _pair_minus(v, before.serve.get(k)) for k, v in self.serve.items()},
        )


def _minus(after: Mapping[Key, float], before: Mapping[Key, float]) -> dict[Key, float]:
    return defaultdict(float, {k: v - before.get(k, 0.0) for k, v in after.items()})


def _pair_minus(after: list[float], before: list[float] | None) -> list[float]:
    return [a - b for a, b in zip(after, before or [0.0, 0.0], strict=True)]


def parse(text: str) -> Counters:
    """The counters of one ``/metrics`` page (Prometheus text format)."""
    found = Counters()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, value = sample.labels, float(sample.value)
            if sample.name == "archipel_calls_total":
                found.calls[(labels["caller"], labels["service"], labels["method"])] += value
            elif sample.name == "archipel_rpc_requests_total":
                found.served[(labels["service"], labels["method"])] += value
            elif sample.name.startswith(
                ("archipel_call_duration_seconds_", "archipel_rpc_duration_seconds_")
            ):
                kind = sample.name.rsplit("_", 1)[1]
                if kind not in ("sum", "count"):
                    continue
                into = found.wait if sample.name.startswith("archipel_call_") else found.serve
                pair = into.setdefault((labels["service"], labels["method"]), [0.0, 0.0])
                pair[0 if kind == "sum" else 1] = value
    return found


@dataclass
class Observation:
    services: list[ServiceInfo]
    edges: list[Edge]
    outcome: Outcome
    visits: int  # calls of the mix started in the measured run
    cpu_s: dict[str, float]  # per process, the broker included


def traits(app: App) -> dict[str, dict[str, bool]]:
    """What the app declares about each service: state, event handlers, optional, pages."""
    optional = {dep for spec in app.specs.values() for dep in spec.optional}
    pages = set(edge_services(app))
    return {
        name: {
            "stateful": any(
                isinstance(value, CollectionField) for cls in spec.cls.__mro__ for value in vars(cls).values()
            ),
            "consumer": bool(spec.handlers),
            "optional": name in optional,
            "edge": name in pages,
        }
        for name, spec in app.specs.items()
    }


def scrape_header(state: Mapping[str, Any]) -> str:
    """The deployment's scrape token: its secret from the environment (as the deployment got it)
    or from the data directory where ``archipel run`` made it."""
    secrets = load_secrets()
    secret = (
        secrets[0]
        if secrets
        else (Path(str(state["data_dir"])) / SECRET_FILE_NAME).read_text().strip().encode()
    )
    return "Bearer " + scrape_token(secret, str(state["deployment"]))


async def scrape(session: aiohttp.ClientSession, state: Mapping[str, Any]) -> dict[str, Counters]:
    """Every process's counters, by process name."""
    header = {"authorization": scrape_header(state)}

    async def one(url: str) -> Counters:
        async with session.get(f"{url}/metrics", headers=header) as response:
            if response.status != 200:
                raise StartFailed(f"{url}/metrics answered HTTP {response.status}")
            return parse(await response.text())

    processes = list(state.get("processes", []))
    pages = await asyncio.gather(*(one(str(p["url"])) for p in processes))
    return {str(p["name"]): page for p, page in zip(processes, pages, strict=True)}


async def observe(
    app_ref: str, app: App, mix: Mix, rate: float, duration: float, warmup: float, workdir: Path
) -> Observation:
    """Run ``app`` as microservices under ``mix`` at ``rate`` visits per second and measure it."""
    deployment = Deployment(app_ref, app, MICROSERVICES, workdir)
    await deployment.start()
    try:
        url, pids = deployment.edge_url, deployment.pids
        if warmup > 0:
            await open_loop(url, mix, rate, warmup)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            before, cpu_before = await scrape(session, deployment.state), procs.cpu_of(pids)
            outcome = await open_loop(url, mix, rate, duration)
            after, cpu_after = await scrape(session, deployment.state), procs.cpu_of(pids)
    finally:
        await deployment.stop()
    cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_after if name in cpu_before}
    deltas = {name: after[name].minus(before.get(name, Counters())) for name in after}
    visits = max(outcome.calls, 1)
    hosts = {str(p["name"]): [str(s) for s in p["services"]] for p in deployment.state["processes"]}
    return Observation(
        services=_services(app, hosts, deltas, cpu, outcome, visits),
        edges=_edges(deltas, hosts, visits),
        outcome=outcome,
        visits=outcome.calls,
        cpu_s=cpu,
    )


def _services(
    app: App,
    hosts: Mapping[str, list[str]],
    deltas: Mapping[str, Counters],
    cpu: Mapping[str, float],
    outcome: Outcome,
    visits: int,
) -> list[ServiceInfo]:
    found = []
    app_traits = traits(app)
    for process, services in hosts.items():
        counters = deltas.get(process, Counters())
        for name in services:  # one service a process, as microservices
            messages = sum(v for (service, _), v in counters.served.items() if service == name)
            messages += sum(v for (caller, _, _), v in counters.calls.items() if caller == name)
            if app_traits[name]["edge"]:
                messages += outcome.requests
            found.append(
                ServiceInfo(
                    name,
                    cpu_ms_per_visit=cpu.get(process, 0.0) * 1000 / visits / len(services),
                    messages_per_visit=messages / visits,
                    **app_traits[name],
                )
            )
    return sorted(found, key=lambda s: s.name)


def _edges(deltas: Mapping[str, Counters], hosts: Mapping[str, list[str]], visits: int) -> list[Edge]:
    serve = _merged(counters.serve for counters in deltas.values())
    edges = []
    for process, counters in sorted(deltas.items()):
        for (caller, callee, method), calls in sorted(counters.calls.items()):
            if calls <= 0 or caller not in hosts[process]:
                continue
            wait = counters.wait.get((callee, method), [0.0, 0.0])
            served = serve.get((callee, method), [0.0, 0.0])
            edges.append(
                Edge(
                    caller,
                    callee,
                    method,
                    per_visit=calls / visits,
                    wait_ms=wait[0] * 1000 / wait[1] if wait[1] > 0 else 0.0,
                    serve_ms=served[0] * 1000 / served[1] if served[1] > 0 else 0.0,
                )
            )
    return edges


def _merged(pairs: Iterable[Mapping[Key, list[float]]]) -> dict[Key, list[float]]:
    total: dict[Key, list[float]] = {}
    for mapping in pairs:
        for key, (seconds, count) in mapping.items():
            into = total.setdefault(key, [0.0, 0.0])
            into[0] += seconds
            into[1] += count
    return total
