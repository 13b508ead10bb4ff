"""``archipel deploy kubernetes``: a kustomize base (``kubectl apply -k DIR``).

Per process of the plan: a workload, a Service, a PodDisruptionBudget, a NetworkPolicy
(``network.py``), its settings as a generated ConfigMap (``config/PROCESS.env``: the process
contract, non-secret) and its keyring from a Secret by reference. Per deployment: the broker, a
Mosquitto StatefulSet with its volume claim, or nothing when the settings name an external one.

Which workload:

- a process that keeps nothing (no collection, no outbox, no inbox, no MQTT session) is a
  Deployment, with a HorizontalPodAutoscaler: any replica can take any call;
- a process that keeps something is a StatefulSet: each replica has a stable name, which is its
  MQTT client id (its durable session resumes after a restart or a rollout instead of being left
  behind with a share of the events), and its own volume for its SQLite store. Replicas of such a
  process therefore do not share state unless ``ARCHIPEL_STORE_URL`` (PostgreSQL, from the
  optional Secret ``DEPLOYMENT-store``) says where it lives; they are not autoscaled.

No Secret is generated: their names are referenced, and ``docs/deploy.md`` tells how to create
them from ``archipel deploy secrets``.

Monitoring: every process's pods carry the ``prometheus.io/*`` scrape annotations (what
``archipel deploy prometheus --target kubernetes`` selects on); with ``service_monitor`` a
Prometheus Operator ``ServiceMonitor`` per process (``service-monitors.yaml``) reads ``/metrics``
with the scrape token from the Secret ``DEPLOYMENT-scrape-token``.
"""

from __future__ import annotations

from typing import Any

from ..._runtime import STORE_URL_VAR
from ..plan import DeploymentPlan, ProcessPlan
from .common import (
    BROKER,
    DATA_DIR,
    KEYRING,
    MOSQUITTO_AUTH,
    MOSQUITTO_CONF,
    MOSQUITTO_IMAGE,
    MOSQUITTO_UID,
    MQTT_PORT,
    PRE_STOP,
    UID,
    Output,
    broker_secret,
    dump_yaml,
    external_broker,
    header,
    keeps_state,
    keyring_secret,
    mosquitto_conf,
    references,
    stop_seconds,
    worker_env,
)
from .names import Names
from .network import broker_policy, process_policy
from .prometheus import SCRAPE_INTERVAL, SCRAPE_KEY, guarded, scrape_secret

KEYRING_DIR = "/etc/archipel/keyring"
STORE_KEY = "url"
BROKER_STOP = 30  # seconds: Mosquitto writes its database at SIGTERM
STORAGE = "1Gi"
MONITORS = "service-monitors.yaml"


def kubernetes_files(
    plan: DeploymentPlan,
    *,
    image: str,
    version: str,
    command: str,
    source: str,
    service_monitor: bool = False,
) -> list[Output]:
    names = Names(plan, version)
    external = external_broker(plan)
    own_broker = plan.uses_broker and external is None
    broker_url = external or f"mqtt://{names.resource(BROKER)}:{MQTT_PORT}"
    top = header(command, source)
    outputs: list[Output] = []
    resources: list[str] = []
    generators: list[dict[str, Any]] = []
    if own_broker:
        outputs.append(Output("broker.yaml", dump_yaml(_broker(names), top)))
        outputs.append(Output(MOSQUITTO_CONF, mosquitto_conf(command, source)))
        resources.append("broker.yaml")
        generators.append(_generated(names, BROKER, "broker", {"files": [MOSQUITTO_CONF]}))
    for process in plan.processes:
        env = worker_env(plan, process, address=names.resource, broker_url=broker_url)
        env.pop("ARCHIPEL_INSTANCE", None)  # the pod's name, from the downward API
        settings = f"config/{process.name}.env"
        outputs.append(Output(settings, top + "".join(f"{key}={value}\n" for key, value in env.items())))
        generators.append(_generated(names, process.name, "process", {"envs": [settings]}))
        documents = _process(names, process, image)
        outputs.append(Output(f"{process.name}.yaml", dump_yaml(documents, top)))
        resources.append(f"{process.name}.yaml")
    if service_monitor:
        monitors = [_service_monitor(names, process.name) for process in plan.processes]
        outputs.append(Output(MONITORS, dump_yaml(monitors, top)))
        resources.append(MONITORS)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
        "configMapGenerator": generators,
    }
    secrets = [keyring_secret(plan, p.name) for p in plan.processes]
    if own_broker:
        secrets.append(broker_secret(plan))
    if service_monitor and guarded(plan):
        secrets.append(scrape_secret(plan))
    intro = top + (
        f"# {plan.app.name} as {plan.mode}: kubectl apply -k <this folder>, once these Secrets exist\n"
        f"# (archipel deploy secrets, then kubectl create secret generic; see docs/deploy.md):\n"
        + "".join(f"#   {name}\n" for name in secrets)
        + f"# and optionally {plan.deployment}-store (key {STORE_KEY}: a PostgreSQL URL for the state).\n"
    )
    outputs.insert(0, Output("kustomization.yaml", dump_yaml([kustomization], intro)))
    outputs.append(Output(".gitignore", top + "/secrets/\n"))
    return outputs


def _generated(names: Names, name: str, component: str, sources: dict[str, Any]) -> dict[str, Any]:
    """A configMapGenerator entry: kustomize names it with a hash of its content, so a change of
    settings rolls the pods that use it."""
    suffix = "-config" if component == "broker" else "-settings"
    return {
        "name": names.resource(name) + suffix,
        **sources,
        "options": {"labels": names.labels(name, component)},
    }


def _process(names: Names, process: ProcessPlan, image: str) -> list[dict[str, Any]]:
    plan = names.plan
    stateful = keeps_state(plan, process)
    resource = names.resource(process.name)
    env: list[dict[str, Any]] = [
        {"name": "ARCHIPEL_INSTANCE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    ]
    env += [{"name": key, "value": value} for key, value in references(f"{KEYRING_DIR}/{KEYRING}").items()]
    if stateful:
        store = {"name": f"{plan.deployment}-store", "key": STORE_KEY, "optional": True}
        env.append({"name": STORE_URL_VAR, "valueFrom": {"secretKeyRef": store}})
    container = {
        "name": "worker",
        "image": process.image or image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": plan.port, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": resource + "-settings"}}],
        "env": env,
        "startupProbe": _probe("/healthz", period=2, failures=30),
        "readinessProbe": _probe("/readyz", period=5, failures=2),
        "livenessProbe": _probe("/healthz", period=10, failures=3),
        # Kubernetes takes the pod out of its Service while this runs; SIGTERM comes after.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP)]}}},
        "resources": _resources(plan.mode == "monolith"),
        "securityContext": _locked_down(),
        "volumeMounts": [
            {"name": "keyring", "mountPath": KEYRING_DIR, "readOnly": True},
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    volumes: list[dict[str, Any]] = [
        {
            "name": "keyring",
            "secret": {"secretName": keyring_secret(plan, process.name), "defaultMode": 0o400},
        },
        {"name": "tmp", "emptyDir": {}},
    ]
    if not stateful:
        volumes.append({"name": "data", "emptyDir": {}})
    pod = {
        "metadata": {
            "labels": names.labels(process.name, "process"),
            "annotations": {  # for a Prometheus that discovers pods (archipel deploy prometheus)
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(plan.port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": stop_seconds(plan, before=PRE_STOP),
            "securityContext": _pod_security(UID),
            "containers": [container],
            "volumes": volumes,
        },
    }
    metadata = names.metadata(process.name, "process")
    selector = {"matchLabels": names.selector(process.name)}
    documents: list[dict[str, Any]]
    if stateful:
        workload: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": metadata,
            "spec": {
                "serviceName": resource,
                "replicas": process.replicas,
                "podManagementPolicy": "Parallel",
                "updateStrategy": {"type": "RollingUpdate"},
                "selector": selector,
                "template": pod,
                "volumeClaimTemplates": [_claim()],
            },
        }
        documents = [workload]
    else:
        workload = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": {  # no replicas: the HorizontalPodAutoscaler owns them
                "revisionHistoryLimit": 5,
                "selector": selector,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": pod,
            },
        }
        documents = [workload, _autoscaler(names, process)]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "selector": names.selector(process.name),
            "ports": [{"name": "http", "port": plan.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata,
        "spec": {"maxUnavailable": 1, "selector": selector},
    }
    return [*documents, service, budget, process_policy(names, process)]


def _service_monitor(names: Names, process: str) -> dict[str, Any]:
    """The Prometheus Operator's scrape job of one process: its Service's endpoints, with the
    ``deployment`` and ``process`` labels ``prometheus.yml`` gives (the dashboard selects on them)."""
    endpoint: dict[str, Any] = {
        "port": "http",
        "path": "/metrics",
        "scheme": "http",
        "interval": SCRAPE_INTERVAL,
        "honorLabels": True,
        "relabelings": [
            {"targetLabel": "deployment", "replacement": names.plan.deployment, "action": "replace"},
            {"targetLabel": "process", "replacement": process, "action": "replace"},
        ],
    }
    if guarded(names.plan):
        token = {"name": scrape_secret(names.plan), "key": SCRAPE_KEY}
        endpoint["authorization"] = {"type": "Bearer", "credentials": token}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": names.metadata(process, "process"),
        "spec": {
            "selector": {"matchLabels": names.selector(process)},
            "endpoints": [endpoint],
        },
    }


def _autoscaler(names: Names, process: ProcessPlan) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": names.metadata(process.name, "process"),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": names.resource(process.name),
            },
            "minReplicas": process.replicas,
            "maxReplicas": max(3, 2 * process.replicas),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
        },
    }


def _broker(names: Names) -> list[dict[str, Any]]:
    resource = names.resource(BROKER)
    metadata = names.metadata(BROKER, "broker")
    container = {
        "name": "mosquitto",
        "image": MOSQUITTO_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/usr/sbin/mosquitto", "-c", f"/mosquitto/config/{MOSQUITTO_CONF}"],
        "ports": [{"name": "mqtt", "containerPort": MQTT_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": "mqtt"}, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"tcpSocket": {"port": "mqtt"}, "periodSeconds": 10, "failureThreshold": 3},
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "securityContext": _locked_down(),
        "volumeMounts": [
            {"name": "config", "mountPath": "/mosquitto/config", "readOnly": True},
            {"name": "auth", "mountPath": MOSQUITTO_AUTH, "readOnly": True},
            {"name": "data", "mountPath": "/mosquitto/data"},
        ],
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata,
        "spec": {
            "serviceName": resource,
            "replicas": 1,
            "selector": {"matchLabels": names.selector(BROKER)},
            "template": {
                "metadata": {"labels": names.labels(BROKER, "broker")},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": BROKER_STOP,
                    "securityContext": _pod_security(MOSQUITTO_UID),
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": resource + "-config"}},
                        {
                            "name": "auth",
                            "secret": {"secretName": broker_secret(names.plan), "defaultMode": 0o400},
                        },
                    ],
                },
            },
            "volumeClaimTemplates": [_claim()],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "selector": names.selector(BROKER),
            "ports": [{"name": "mqtt", "port": MQTT_PORT, "targetPort": "mqtt", "protocol": "TCP"}],
        },
    }
    return [statefulset, service, broker_policy(names)]


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _resources(monolith: bool) -> dict[str, Any]:
    if monolith:
        return {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}
    return {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}


def _pod_security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,  # secrets and volumes readable by the group the process runs in
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _locked_down() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _claim() -> dict[str, Any]:
    return {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": STORAGE}}},
    }
