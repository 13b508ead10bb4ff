"""``archipel deploy prometheus``: ``prometheus.yml``, a scrape job per process of the plan.

Each process serves ``/metrics`` behind the deployment's scrape token (a static bearer derived
from its secret, ``archipel token --scrape``) unless ``open_endpoints`` opens it. Prometheus
reads the token from a file: ``archipel deploy secrets`` writes it into ``DEPLOYMENT-scrape-token/
token``, which Compose mounts as the secret ``scrape-token`` and Kubernetes holds as the Secret
``DEPLOYMENT-scrape-token`` (mounted where the Prometheus Operator mounts a Prometheus's
``secrets``: ``/etc/prometheus/secrets/SECRET/KEY``).

Targets are found, not listed, so replicas come and go without a change here:

- Compose: a DNS lookup of each process's service name, which Docker answers with every replica;
- Kubernetes: the pods of each process (its ``app.kubernetes.io/name`` and ``instance`` labels)
  that carry the ``prometheus.io/scrape`` annotation, on the port it names.

Every series gets ``deployment`` and ``process`` labels; ``honor_labels`` keeps the process's own
``process`` label of ``archipel_process_info`` (the same value) rather than renaming it.
"""

from __future__ import annotations

from typing import Any, Literal

from ..plan import DeploymentPlan
from .common import Output, dump_yaml, header, resource_name

Target = Literal["compose", "kubernetes"]
TARGETS: tuple[Target, ...] = ("compose", "kubernetes")
PROMETHEUS_FILE = "prometheus.yml"
SCRAPE_INTERVAL = "15s"
SCRAPE_KEY = "token"  # the file in the scrape token's folder, the key of its Secret
COMPOSE_SECRET = "scrape-token"  # Compose's name of the secret, mounted at /run/secrets/NAME
PROMETHEUS_SECRETS = "/etc/prometheus/secrets"  # where a Prometheus pod mounts its Secrets


def scrape_secret(plan: DeploymentPlan) -> str:
    """The Secret, or the folder of ``archipel deploy secrets``, with the scrape token."""
    return resource_name(plan, "scrape-token")


def token_file(plan: DeploymentPlan, target: Target) -> str:
    """Where Prometheus reads the scrape token in ``target``."""
    if target == "compose":
        return f"/run/secrets/{COMPOSE_SECRET}"
    return f"{PROMETHEUS_SECRETS}/{scrape_secret(plan)}/{SCRAPE_KEY}"


def guarded(plan: DeploymentPlan) -> bool:
    """Whether /metrics needs the scrape token (``open_endpoints`` may open it to anyone)."""
    return "metrics" not in plan.open_endpoints


def prometheus_config(plan: DeploymentPlan, target: Target) -> dict[str, Any]:
    """The configuration as data: global settings and one scrape job per process."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    jobs = [_job(plan, process.name, target) for process in plan.processes]
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": jobs,
    }


def prometheus_files(plan: DeploymentPlan, target: Target, *, command: str, source: str) -> list[Output]:
    top = header(command, source) + (
        f"# Prometheus scraping {plan.app.name} ({plan.deployment}, {plan.mode}) on {target}"
        + (f"; the scrape token is read from {token_file(plan, target)}.\n" if guarded(plan) else ".\n")
    )
    return [Output(PROMETHEUS_FILE, dump_yaml([prometheus_config(plan, target)], top))]


def _job(plan: DeploymentPlan, process: str, target: Target) -> dict[str, Any]:
    job: dict[str, Any] = {
        "job_name": resource_name(plan, process),
        "honor_labels": True,
        "metrics_path": "/metrics",
        "scheme": "http",
    }
    if guarded(plan):
        job["authorization"] = {"type": "Bearer", "credentials_file": token_file(plan, target)}
    labels = [
        {"target_label": "deployment", "replacement": plan.deployment},
        {"target_label": "process", "replacement": process},
    ]
    if target == "compose":
        job["dns_sd_configs"] = [{"names": [process], "type": "A", "port": plan.port}]
        job["relabel_configs"] = labels
        return job
    meta = "__meta_kubernetes_pod_"
    job["kubernetes_sd_configs"] = [{"role": "pod"}]
    job["relabel_configs"] = [
        _keep(f"{meta}annotation_prometheus_io_scrape", "true"),
        _keep(f"{meta}label_app_kubernetes_io_instance", plan.deployment),
        _keep(f"{meta}label_app_kubernetes_io_name", process),
        _keep(f"{meta}label_app_kubernetes_io_component", "process"),
        {  # the port the annotation names, on the pod's address
            "source_labels": ["__address__", f"{meta}annotation_prometheus_io_port"],
            "regex": r"([^:]+)(?::\d+)?;(\d+)",
            "replacement": "$1:$2",
            "target_label": "__address__",
        },
        {
            "source_labels": [f"{meta}annotation_prometheus_io_path"],
            "regex": "(.+)",
            "target_label": "__metrics_path__",
        },
        *labels,
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": [f"{meta}name"], "target_label": "pod"},
    ]
    return job


def _keep(label: str, value: str) -> dict[str, Any]:
    return {"source_labels": [label], "regex": value, "action": "keep"}
