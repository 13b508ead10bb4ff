"""``archipel deploy grafana``: a Grafana dashboard of one deployment, from its processes' metrics.

Rows: Calls (served and made: rate, errors, p50/p99 latency, calls per edge caller -> service),
Events (published, handled by outcome, acked, dead letters, outbox, inbox duplicates), Resilience
(retries, rejections by policy, fallbacks, breakers, bulkheads), Processes (up, CPU, memory, open
files, restarts, versions). Every query selects the ``deployment`` and ``process`` labels that
``prometheus.yml`` gives each series (``generate/prometheus.py``); ``$datasource`` picks the
Prometheus, ``$process`` the processes shown. A test checks every metric a query names against
what the processes' registry exposes.

The Compose output's ``observability`` profile provisions it (:func:`grafana_provisioning`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ..plan import DeploymentPlan
from .common import Output, dump_yaml, header

DASHBOARD_FILE = "dashboard.json"
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"
DASHBOARDS_DIR = "/var/lib/grafana/dashboards"  # where the Compose profile mounts the dashboard


class _Panels:
    """Lays panels out on Grafana's 24-column grid, row after row, numbering them."""

    def __init__(self, selector: str) -> None:
        self.selector = selector
        self.panels: list[dict[str, Any]] = []
        self._x = self._y = 0
        self._ids = iter(range(1, 1000))

    def s(self, extra: str = "") -> str:
        """The label matchers of every query, and ``extra`` ones."""
        return "{" + self.selector + (", " + extra if extra else "") + "}"

    def row(self, title: str) -> None:
        if self._x:
            self._x, self._y = 0, self._y + 8
        grid = {"h": 1, "w": 24, "x": 0, "y": self._y}
        self.panels.append(
            {"id": next(self._ids), "type": "row", "title": title, "collapsed": False, "gridPos": grid}
        )
        self._y += 1
        self.panels[-1]["panels"] = []

    def add(
        self,
        title: str,
        description: str,
        queries: list[tuple[str, str]],
        *,
        unit: str = "short",
        kind: str = "timeseries",
        width: int = 8,
    ) -> None:
        if self._x + width > 24:
            self._x, self._y = 0, self._y + 8
        panel: dict[str, Any] = {
            "id": next(self._ids),
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DATASOURCE,
            "gridPos": {"h": 8, "w": width, "x": self._x, "y": self._y},
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                | ({"instant": True, "format": "table"} if kind == "table" else {})
                for i, (expr, legend) in enumerate(queries)
            ],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        }
        if kind == "timeseries":
            panel["options"] = {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        self.panels.append(panel)
        self._x += width


def dashboard(plan: DeploymentPlan, *, description: str = "") -> dict[str, Any]:
    """The dashboard as data."""
    p = _Panels(f'deployment="{plan.deployment}", process=~"$process"')
    _calls(p)
    _events(p)
    _resilience(p)
    _processes(p)
    return {
        "description": description,
        "uid": f"archipel-{plan.deployment}"[:40],
        "title": f"Archipel: {plan.deployment}",
        "tags": ["archipel", plan.deployment],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": []},
        "templating": {"list": _variables(plan)},
        "panels": p.panels,
    }


def _variables(plan: DeploymentPlan) -> list[dict[str, Any]]:
    return [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
        },
        {
            "name": "process",
            "label": "process",
            "type": "query",
            "datasource": DATASOURCE,
            "query": {
                "query": f'label_values(up{{deployment="{plan.deployment}"}}, process)',
                "refId": "process",
            },
            "definition": f'label_values(up{{deployment="{plan.deployment}"}}, process)',
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "refresh": 2,
            "sort": 1,
            "hide": 0,
        },
    ]


def _calls(p: _Panels) -> None:
    served = f"archipel_rpc_requests_total{p.s()}"
    failed = "archipel_rpc_requests_total" + p.s('status!~"2.."')
    not_ok = p.s('outcome!="ok"')
    p.row("Calls")
    p.add(
        "Requests served",
        "Requests each service served, per second, by method.",
        [(f"sum by (service, method) (rate({served}{RATE}))", "{{service}}.{{method}}")],
        unit="reqps",
    )
    p.add(
        "Errors served",
        "Share of requests answered with a status other than 2xx, by method.",
        [
            (
                f"sum by (service, method) (rate({failed}{RATE}))"
                f" / sum by (service, method) (rate({served}{RATE}))",
                "{{service}}.{{method}}",
            )
        ],
        unit="percentunit",
    )
    p.add(
        "Latency served (p50, p99)",
        "Time to serve a request (handler and decoding), by method.",
        [
            (
                f"histogram_quantile({q}, sum by (service, method, le) "
                f"(rate(archipel_rpc_duration_seconds_bucket{p.s()}{RATE})))",
                f"p{int(float(q) * 100)} {{{{service}}}}.{{{{method}}}}",
            )
            for q in ("0.5", "0.99")
        ],
        unit="s",
    )
    p.add(
        "Calls per edge",
        "Calls from a caller service to another service, per second (the call graph's edges).",
        [(f"sum by (caller, service) (rate(archipel_calls_total{p.s()}{RATE}))", "{{caller}} → {{service}}")],
        unit="reqps",
    )
    p.add(
        "Failed calls",
        "Calls that did not end ok, per second, by caller, service and error kind.",
        [
            (
                f"sum by (caller, service, outcome) (rate(archipel_calls_total{not_ok}{RATE}))",
                "{{caller}} → {{service}}: {{outcome}}",
            )
        ],
        unit="reqps",
    )
    p.add(
        "Latency of calls (p50, p99)",
        "Time a caller waited for a remote call, retries included, by method.",
        [
            (
                f"histogram_quantile({q}, sum by (service, method, le) "
                f"(rate(archipel_call_duration_seconds_bucket{p.s()}{RATE})))",
                f"p{int(float(q) * 100)} {{{{service}}}}.{{{{method}}}}",
            )
            for q in ("0.5", "0.99")
        ],
        unit="s",
    )


def _events(p: _Panels) -> None:
    p.row("Events")
    p.add(
        "Published",
        "Events emitted, per second, by topic.",
        [(f"sum by (topic) (rate(archipel_events_published_total{p.s()}{RATE}))", "{{topic}}")],
        unit="ops",
    )
    p.add(
        "Handled",
        "Deliveries to handlers, per second, by outcome (ok, retried, dead).",
        [
            (
                f"sum by (service, handler, outcome) (rate(archipel_events_handled_total{p.s()}{RATE}))",
                "{{service}}.{{handler}}: {{outcome}}",
            )
        ],
        unit="ops",
    )
    p.add(
        "Acknowledged",
        "Events acknowledged to the broker after their handlers returned, per second, by topic.",
        [(f"sum by (topic) (rate(archipel_events_acked_total{p.s()}{RATE}))", "{{topic}}")],
        unit="ops",
    )
    dead = p.s('outcome="dead"')
    p.add(
        "Dead letters",
        "Events given up after their retries, sent to the dead-letter topic, over the time shown.",
        [
            (
                f"sum by (service, handler) (increase(archipel_events_handled_total{dead}[$__range]))",
                "{{service}}.{{handler}}",
            )
        ],
        kind="stat",
    )
    p.add(
        "Outbox",
        "Events waiting in each service's outbox, and failed attempts to publish them per second.",
        [
            (f"sum by (service) (archipel_outbox_pending{p.s()})", "pending {{service}}"),
            (
                f"sum by (service) (rate(archipel_outbox_publish_failures_total{p.s()}{RATE}))",
                "failures/s {{service}}",
            ),
        ],
    )
    p.add(
        "Inbox duplicates",
        "Redelivered events whose handler had already taken them (not handled again), per second.",
        [
            (
                f"sum by (service, handler) (rate(archipel_inbox_duplicates_total{p.s()}{RATE}))",
                "{{service}}.{{handler}}",
            )
        ],
        unit="ops",
    )


def _resilience(p: _Panels) -> None:
    p.row("Resilience")
    p.add(
        "Retries",
        "Remote calls sent again after a failed attempt, per second.",
        [
            (
                f"sum by (caller, service, method) (rate(archipel_call_retries_total{p.s()}{RATE}))",
                "{{caller}} → {{service}}.{{method}}",
            )
        ],
        unit="ops",
    )
    p.add(
        "Rejections",
        "Calls refused before being sent, per second, by the policy that refused them.",
        [
            (
                f"sum by (service, policy) (rate(archipel_call_rejections_total{p.s()}{RATE}))",
                "{{service}}: {{policy}}",
            )
        ],
        unit="ops",
    )
    p.add(
        "Fallbacks",
        "Calls to an optional dependency answered by its fallback, per second, by reason.",
        [
            (
                f"sum by (service, reason) (rate(archipel_fallbacks_total{p.s()}{RATE}))",
                "{{service}}: {{reason}}",
            )
        ],
        unit="ops",
    )
    p.add(
        "Circuit breakers",
        "State of each caller's breaker per target replica: 0 closed, 1 open, 2 half-open.",
        [
            (
                f"max by (process, service, endpoint) (archipel_breaker_state{p.s()})",
                "{{process}} → {{endpoint}}",
            )
        ],
        width=12,
    )
    p.add(
        "Bulkheads",
        "Calls in flight from each process to each service (at most its max_concurrent).",
        [(f"sum by (process, service) (archipel_bulkhead_in_flight{p.s()})", "{{process}} → {{service}}")],
        width=12,
    )


def _processes(p: _Panels) -> None:
    p.row("Processes")
    p.add(
        "Replicas up",
        "Replicas whose /metrics Prometheus read at its last scrape, by process.",
        [(f"sum by (process) (up{p.s()})", "{{process}}")],
        kind="stat",
    )
    p.add(
        "CPU",
        "CPU time used per second (1 = one core), by replica.",
        [
            (
                f"sum by (process, instance) (rate(process_cpu_seconds_total{p.s()}{RATE}))",
                "{{process}} {{instance}}",
            )
        ],
        unit="percentunit",
    )
    p.add(
        "Resident memory",
        "Resident memory of each replica.",
        [(f"process_resident_memory_bytes{p.s()}", "{{process}} {{instance}}")],
        unit="bytes",
    )
    p.add(
        "Restarts",
        "Restarts in place (a new start time under the same target) over the time shown; a pod "
        "replaced by Kubernetes is a new target, counted by the orchestrator instead.",
        [(f"sum by (process) (changes(process_start_time_seconds{p.s()}[$__range]))", "{{process}}")],
        kind="stat",
    )
    p.add(
        "Open files",
        "File descriptors each replica has open (sockets included).",
        [(f"process_open_fds{p.s()}", "{{process}} {{instance}}")],
    )
    p.add(
        "Versions",
        "What each replica runs: its process, replica and version.",
        [(f"max by (process, replica, version) (archipel_process_info{p.s()})", "")],
        kind="table",
    )


def grafana_files(plan: DeploymentPlan, *, command: str, source: str) -> list[Output]:
    """``dashboard.json``: the header's two lines as its description (JSON has no comments)."""
    note = " ".join(line.lstrip("# ") for line in header(command, source).splitlines())
    return [Output(DASHBOARD_FILE, dashboard_text(plan, note))]


def dashboard_text(plan: DeploymentPlan, description: str) -> str:
    return json.dumps(dashboard(plan, description=description), indent=2, ensure_ascii=False) + "\n"


def grafana_provisioning(
    plan: DeploymentPlan, *, command: str, source: str, prometheus_url: str
) -> Iterator[Output]:
    """The files a Grafana container reads at start: the Prometheus data source, the dashboard
    folder to load, and the dashboard."""
    top = header(command, source)
    datasource = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "type": "prometheus",
                "uid": "prometheus",
                "access": "proxy",
                "url": prometheus_url,
                "isDefault": True,
                "editable": False,
            }
        ],
    }
    provider = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "archipel",
                "folder": "Archipel",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "options": {"path": DASHBOARDS_DIR},
            }
        ],
    }
    yield Output("grafana/provisioning/datasources/prometheus.yaml", dump_yaml([datasource], top))
    yield Output("grafana/provisioning/dashboards/archipel.yaml", dump_yaml([provider], top))
    note = " ".join(line.lstrip("# ") for line in top.splitlines())
    yield Output(f"grafana/dashboards/{plan.deployment}.json", dashboard_text(plan, note))
