"""``archipel deploy compose``: ``compose.yaml`` for one host (Docker Compose v2).

One Compose service per process of the plan, ``deploy.replicas`` replicas each, reaching the
others by service name (Docker's DNS spreads the replicas); in microservices a Mosquitto with the
local cluster's production settings, its sessions and queued events on a named volume. Each
process gets its keyring as a Compose secret, a file under ``secrets/`` that ``archipel deploy
secrets`` writes and git ignores; the broker gets its password and ACL files the same way.

Replicas of a process share its data volume: SQLite on one host is shared safely, as with
``archipel run``. A replica's MQTT client id is its container's host name (the image's
entrypoint): a restarted container resumes its session, a re-created one starts another.

The Compose profile ``observability`` adds a Prometheus scraping every replica (``prometheus.yml``,
the scrape token as a secret) and a Grafana provisioned with it and the deployment's dashboard;
a plain ``docker compose up`` starts neither.
"""

from __future__ import annotations

from typing import Any

from ..plan import DeploymentPlan, ProcessPlan
from . import prometheus as scraping
from .common import (
    BROKER,
    DATA_DIR,
    KEYRING,
    MOSQUITTO_AUTH,
    MOSQUITTO_CONF,
    MOSQUITTO_IMAGE,
    MQTT_PORT,
    Output,
    broker_secret,
    dump_yaml,
    external_broker,
    header,
    keyring_secret,
    mosquitto_conf,
    readiness_check,
    references,
    stop_seconds,
    worker_env,
)
from .grafana import DASHBOARDS_DIR, grafana_provisioning

COMPOSE_FILE = "compose.yaml"
SECRETS = "secrets"  # the folder `archipel deploy secrets` writes into, beside compose.yaml
BROKER_STOP = 30  # seconds: Mosquitto writes its database at SIGTERM
PROMETHEUS_IMAGE = "prom/prometheus:v2.55.1"
GRAFANA_IMAGE = "grafana/grafana:11.3.1"
PROFILE = "observability"  # `docker compose --profile observability up -d`


def compose_files(plan: DeploymentPlan, *, image: str, command: str, source: str) -> list[Output]:
    """``compose.yaml``, the broker's ``mosquitto.conf`` when it runs one, and a ``.gitignore``
    that keeps the secrets folder out of git."""
    own_broker = plan.uses_broker and external_broker(plan) is None
    broker_url = external_broker(plan) or f"mqtt://{BROKER}:{MQTT_PORT}"
    services: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    if own_broker:
        services[BROKER] = _broker()
        volumes[f"{BROKER}-data"] = {}
        for name in ("passwords", "acl"):
            secrets[f"{BROKER}-{name}"] = {"file": f"./{SECRETS}/{broker_secret(plan)}/{name}"}
    published = 8000
    for process in plan.processes:
        service, published = _process(plan, process, image, broker_url, own_broker, published)
        services[process.name] = service
        volumes[f"{process.name}-data"] = {}
        keyring = f"./{SECRETS}/{keyring_secret(plan, process.name)}/{KEYRING}"
        secrets[f"{process.name}-keyring"] = {"file": keyring}
    services.update(_observability(plan, secrets))
    volumes.update({"prometheus-data": {}, "grafana-data": {}})
    document = {"name": f"{plan.deployment}-{plan.mode}", "services": services, "volumes": volumes}
    document["secrets"] = secrets
    edge = [name for name, service in services.items() if "ports" in service and "profiles" not in service]
    top = header(command, source) + (
        f"# {plan.app.name} as {plan.mode} on one host. First write the secrets (never committed):\n"
        f"#   archipel deploy secrets --mode {plan.mode} {SECRETS}\n"
        f"# then: docker compose up -d; the pages are on the published port of {', '.join(edge) or '-'}.\n"
        f"# With Prometheus (127.0.0.1:9090) and Grafana (127.0.0.1:3000):\n"
        f"#   docker compose --profile {PROFILE} up -d\n"
    )
    outputs = [Output(COMPOSE_FILE, dump_yaml([document], top))]
    if own_broker:
        outputs.append(Output(MOSQUITTO_CONF, mosquitto_conf(command, source)))
    outputs += scraping.prometheus_files(plan, "compose", command=command, source=source)
    prometheus_url = "http://prometheus:9090"
    outputs += grafana_provisioning(plan, command=command, source=source, prometheus_url=prometheus_url)
    outputs.append(Output(".gitignore", header(command, source) + f"/{SECRETS}/\n"))
    return outputs


def _observability(plan: DeploymentPlan, secrets: dict[str, Any]) -> dict[str, Any]:
    """Prometheus and Grafana, in the profile that keeps them out of a plain ``up``; their ports
    on the host's loopback only."""
    prometheus: dict[str, Any] = {
        "image": PROMETHEUS_IMAGE,
        "profiles": [PROFILE],
        "command": [
            "--config.file=/etc/prometheus/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
            "--storage.tsdb.retention.time=15d",
        ],
        "volumes": [
            f"./{scraping.PROMETHEUS_FILE}:/etc/prometheus/prometheus.yml:ro",
            "prometheus-data:/prometheus",
        ],
        "ports": ["127.0.0.1:9090:9090"],
        "restart": "unless-stopped",
    }
    if scraping.guarded(plan):  # the image's user (nobody) must be able to read it: docs/deploy.md
        token = f"./{SECRETS}/{scraping.scrape_secret(plan)}/{scraping.SCRAPE_KEY}"
        secrets[scraping.COMPOSE_SECRET] = {"file": token}
        prometheus["secrets"] = [scraping.COMPOSE_SECRET]
    grafana = {
        "image": GRAFANA_IMAGE,
        "profiles": [PROFILE],
        "volumes": [
            "./grafana/provisioning:/etc/grafana/provisioning:ro",
            f"./grafana/dashboards:{DASHBOARDS_DIR}:ro",
            "grafana-data:/var/lib/grafana",
        ],
        "ports": ["127.0.0.1:3000:3000"],
        "depends_on": ["prometheus"],
        "restart": "unless-stopped",
    }
    return {"prometheus": prometheus, "grafana": grafana}


def _process(
    plan: DeploymentPlan, process: ProcessPlan, image: str, broker_url: str, own_broker: bool, port: int
) -> tuple[dict[str, Any], int]:
    keyring = f"{process.name}-keyring"
    env = worker_env(plan, process, address=lambda name: name, broker_url=broker_url)
    env.update(references(f"/run/secrets/{keyring}"))
    service: dict[str, Any] = {
        "image": process.image or image,
        "environment": env,
        "secrets": [keyring],
        "volumes": [f"{process.name}-data:{DATA_DIR}"],
        "tmpfs": ["/tmp"],
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "healthcheck": {
            "test": ["CMD", "python", "-c", readiness_check("/readyz")],
            "interval": "5s",
            "timeout": "3s",
            "retries": 3,
            "start_period": "30s",
        },
        "stop_grace_period": f"{stop_seconds(plan)}s",
        "restart": "unless-stopped",
    }
    if process.foreign:  # no Python in its image: the HEALTHCHECK its own image declares, if any
        del service["healthcheck"]
    if own_broker:
        service["depends_on"] = {BROKER: {"condition": "service_healthy"}}
    if plan.serves_pages(process):  # the edge: one host port per replica
        last = port + process.replicas - 1
        published = f"{port}" if last == port else f"{port}-{last}"
        service["ports"] = [f"{published}:{plan.port}"]
        port = last + 1
    memory = "1G" if plan.mode == "monolith" else "512M"
    service["deploy"] = {
        "replicas": process.replicas,
        "resources": {"limits": {"cpus": "1", "memory": memory}},
    }
    return service, port


# Mosquitto reads its password and ACL files as the user "mosquitto", and Compose mounts secret
# files with the owner and mode they have on the host (0600, the operator's): the container starts
# as root, copies them for that user, then Mosquitto drops to it.
_BROKER_START = f"""\
set -e
chown mosquitto:mosquitto {MOSQUITTO_AUTH} /mosquitto/data
chmod 0700 {MOSQUITTO_AUTH}
install -o mosquitto -g mosquitto -m 0600 /run/secrets/{BROKER}-passwords {MOSQUITTO_AUTH}/passwords
install -o mosquitto -g mosquitto -m 0600 /run/secrets/{BROKER}-acl {MOSQUITTO_AUTH}/acl
exec /usr/sbin/mosquitto -c /mosquitto/config/{MOSQUITTO_CONF}
"""

# Alive and refusing anonymous clients: CONNACK "not authorized" is the healthy answer.
_BROKER_CHECK = (
    f"mosquitto_sub -V 5 -h 127.0.0.1 -p {MQTT_PORT} -t archipel/health -C 1 -W 2 2>&1"
    " | grep -qi 'not authori'"
)


def _broker() -> dict[str, Any]:
    return {
        "image": MOSQUITTO_IMAGE,
        "entrypoint": ["/bin/sh", "-c"],
        "command": [_BROKER_START],
        "volumes": [
            f"./{MOSQUITTO_CONF}:/mosquitto/config/{MOSQUITTO_CONF}:ro",
            f"{BROKER}-data:/mosquitto/data",
        ],
        "tmpfs": [MOSQUITTO_AUTH],
        "secrets": [f"{BROKER}-passwords", f"{BROKER}-acl"],
        "read_only": True,
        "security_opt": ["no-new-privileges:true"],
        "healthcheck": {
            "test": ["CMD-SHELL", _BROKER_CHECK],
            "interval": "5s",
            "timeout": "5s",
            "retries": 5,
            "start_period": "10s",
        },
        "stop_grace_period": f"{BROKER_STOP}s",
        "restart": "unless-stopped",
        "deploy": {"resources": {"limits": {"cpus": "1", "memory": "512M"}}},
    }
