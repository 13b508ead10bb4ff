"""The NetworkPolicies of a deployment: who may open a connection to whom.

From the plan's call graph (``DeploymentPlan.callers``): a process admits connections from the
processes that call it, and from anywhere when it serves pages (the edge); it may connect to
DNS, to the processes it calls, to the ports of the external services it calls (their addresses
are outside the cluster's knowledge) and to the broker. The broker admits the deployment's processes
only. Everything else is refused, in both directions, where the cluster's network plugin
enforces NetworkPolicies (Calico, Cilium, k3s's embedded controller do; check yours).

Kubelet probes are not subject to these; ``kubectl port-forward`` neither.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..plan import ProcessPlan
from .common import BROKER, MQTT_PORT, external_broker
from .names import Names

_DNS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def process_policy(names: Names, process: ProcessPlan) -> dict[str, Any]:
    plan = names.plan
    http = [{"protocol": "TCP", "port": plan.port}]
    if plan.serves_pages(process):
        ingress = [{"ports": http}]  # the edge: open to the cluster's ingress and port-forwards
    else:
        callers = plan.callers(process)
        ingress = [{"from": [_pods(names, name) for name in callers], "ports": http}] if callers else []
    egress: list[dict[str, Any]] = [{"ports": _DNS}]
    callees = [other.name for other in plan.processes if process.name in plan.callers(other)]
    if callees:
        egress.append({"to": [_pods(names, name) for name in callees], "ports": http})
    for service in sorted(plan.called_by(process) & set(plan.remote)):  # external, reached by URL
        ports = sorted({_port(url) for url in plan.remote[service]})
        egress.append({"ports": [{"protocol": "TCP", "port": port} for port in ports]})
    if plan.uses_broker:
        external = external_broker(plan)
        if external is None:
            egress.append({"to": [_pods(names, BROKER)], "ports": [{"protocol": "TCP", "port": MQTT_PORT}]})
        else:  # outside the cluster: its address is not known here, its port is
            url = urlsplit(external)
            port = url.port or (8883 if url.scheme == "mqtts" else MQTT_PORT)
            egress.append({"ports": [{"protocol": "TCP", "port": port}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": names.metadata(process.name, "process"),
        "spec": {
            "podSelector": {"matchLabels": names.selector(process.name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def broker_policy(names: Names) -> dict[str, Any]:
    processes = {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/instance": names.plan.deployment,
                "app.kubernetes.io/component": "process",
            }
        }
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": names.metadata(BROKER, "broker"),
        "spec": {
            "podSelector": {"matchLabels": names.selector(BROKER)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [processes], "ports": [{"protocol": "TCP", "port": MQTT_PORT}]}],
            "egress": [],
        },
    }


def _port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _pods(names: Names, name: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": names.selector(name)}}
