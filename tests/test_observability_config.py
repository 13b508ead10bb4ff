"""`archipel deploy prometheus|grafana` and the monitoring parts of the Compose and Kubernetes
files: the scrape configuration finds exactly each process's pods with the scrape token, promtool
accepts it, the dashboard is well formed and names only metrics a process exposes, and a real
Prometheus scrapes a real worker with the generated configuration and token file."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

import archipel._state.metrics  # noqa: F401  (registers the outbox and inbox metrics)
from archipel._deploy.generate import kubernetes_files
from archipel._deploy.generate.grafana import dashboard
from archipel._deploy.generate.prometheus import prometheus_config
from archipel._telemetry.metrics import REGISTRY
from tests.test_deploy_generate import (
    BIN,
    DEPLOY,
    KUBECTL,
    SECRET,
    copy_of_the_repository,
    free_port,
    resources,
    run_in,
    shop_plan,
    start_worker,
    stop,
    wait_ready,
)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"  # Debian's `prometheus` (scripts/setup.sh)
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
COMPOSE_CONFIG = DEPLOY / "compose" / "microservices" / "prometheus.yml"
KUBERNETES_CONFIG = DEPLOY / "prometheus" / "kubernetes" / "microservices" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
TOKEN = "/etc/prometheus/secrets/boutique-scrape-token/token"

pytestmark = pytest.mark.timeout(180)


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


# -- prometheus.yml ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "token"), [(COMPOSE_CONFIG, "/run/secrets/scrape-token"), (KUBERNETES_CONFIG, TOKEN)]
)
def test_one_job_per_process_with_the_scrape_token(path: Path, token: str) -> None:
    config = load(path)
    plan = shop_plan("microservices")
    assert config["global"]["scrape_interval"] == "15s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert sorted(jobs) == sorted(f"boutique-{name}" for name in plan.process_names)
    for process in plan.processes:
        job = jobs[f"boutique-{process.name}"]
        assert job["metrics_path"] == "/metrics"
        assert job["authorization"] == {"type": "Bearer", "credentials_file": token}
        assert {"target_label": "process", "replacement": process.name} in job["relabel_configs"]
        assert {"target_label": "deployment", "replacement": "boutique"} in job["relabel_configs"]
        if "dns_sd_configs" in job:  # Compose: every replica behind the service name
            assert job["dns_sd_configs"] == [{"names": [process.name], "type": "A", "port": 8000}]
        else:
            assert job["kubernetes_sd_configs"] == [{"role": "pod"}]


def meta_labels(pod: dict[str, Any], ip: str) -> dict[str, str]:
    """What Prometheus's pod discovery knows of a pod, named as it names it."""

    def clean(name: str) -> str:
        return re.sub(r"[^a-zA-Z0-9_]", "_", name)

    labels = {"__address__": f"{ip}:8000", "__meta_kubernetes_namespace": "shop"}
    labels["__meta_kubernetes_pod_name"] = pod["labels"]["app.kubernetes.io/name"] + "-0"
    for key, value in pod["labels"].items():
        labels[f"__meta_kubernetes_pod_label_{clean(key)}"] = value
    for key, value in pod.get("annotations", {}).items():
        labels[f"__meta_kubernetes_pod_annotation_{clean(key)}"] = value
    return labels


def relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus's keep and replace relabelling (anchored regexes), enough for these jobs."""
    labels = dict(labels)
    for rule in rules:
        value = ";".join(labels.get(name, "") for name in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if rule.get("action", "replace") == "keep":
            if not match:
                return None
        elif match:
            replacement = re.sub(r"\$(\d+)", r"\\\1", rule.get("replacement", "$1"))
            labels[rule["target_label"]] = match.expand(replacement)
    return labels


def test_kubernetes_jobs_keep_exactly_the_pods_of_their_process() -> None:
    jobs = load(KUBERNETES_CONFIG)["scrape_configs"]
    pods = [
        d["spec"]["template"]["metadata"]
        for d in resources("microservices")
        if "template" in d.get("spec", {})
    ]
    assert len(pods) == len(jobs) + 1  # and the broker
    for number, pod in enumerate(pods):
        name = pod["labels"]["app.kubernetes.io/name"]
        found = {}
        for job in jobs:
            kept = relabel(job["relabel_configs"], meta_labels(pod, f"10.0.0.{number}"))
            if kept is not None:
                found[job["job_name"]] = kept
        if name == "broker":
            assert found == {}
            continue
        assert list(found) == [f"boutique-{name}"]
        target = found[f"boutique-{name}"]
        assert target["__address__"] == f"10.0.0.{number}:8000" and target["__metrics_path__"] == "/metrics"
        assert (target["process"], target["deployment"], target["pod"]) == (name, "boutique", f"{name}-0")
    unannotated = {**pods[0], "annotations": {}}
    assert all(relabel(job["relabel_configs"], meta_labels(unannotated, "10.0.0.9")) is None for job in jobs)


def test_open_metrics_are_scraped_without_a_token() -> None:
    plan = shop_plan("microservices", open_endpoints=["metrics"])
    for target in ("compose", "kubernetes"):
        assert all("authorization" not in job for job in prometheus_config(plan, target)["scrape_configs"])
    files = {
        o.path: o.text
        for o in kubernetes_files(plan, image="i", version="1", command="c", source="s", service_monitor=True)
    }
    monitors = list(yaml.safe_load_all(files["service-monitors.yaml"]))
    assert monitors and all("authorization" not in m["spec"]["endpoints"][0] for m in monitors)
    assert "scrape-token" not in files["kustomization.yaml"]


def promtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *arguments], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_configurations(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    compose = COMPOSE_CONFIG.read_text().replace("/run/secrets/scrape-token", str(token))
    (tmp_path / "compose.yml").write_text(compose)
    # Debian's Prometheus is built without Kubernetes discovery: check the rest with static targets.
    kubernetes = load(KUBERNETES_CONFIG)
    for job in kubernetes["scrape_configs"]:
        job.pop("kubernetes_sd_configs")
        job["static_configs"] = [{"targets": ["10.0.0.1:8000"]}]
        job["authorization"]["credentials_file"] = str(token)
    (tmp_path / "kubernetes.yml").write_text(yaml.safe_dump(kubernetes))
    for name in ("compose.yml", "kubernetes.yml"):
        result = promtool("check", "config", str(tmp_path / name))
        assert result.returncode == 0, result.stdout + result.stderr
    broken = compose.replace("type: A", "type: AAAAA")
    (tmp_path / "broken.yml").write_text(broken)
    assert promtool("check", "config", str(tmp_path / "broken.yml")).returncode != 0


# -- Kubernetes: annotations and ServiceMonitors ----------------------------------------------------------


def test_every_process_pod_is_annotated_for_scraping() -> None:
    for mode in ("microservices", "monolith"):
        workloads = [d for d in resources(mode) if "template" in d.get("spec", {})]
        annotated = {
            d["metadata"]["labels"]["app.kubernetes.io/name"]
            for d in workloads
            if d["spec"]["template"]["metadata"].get("annotations")
            == {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "8000",
                "prometheus.io/path": "/metrics",
            }
        }
        assert annotated == set(shop_plan(mode).process_names)  # and not the broker


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shop = copy_of_the_repository(tmp_path_factory.mktemp("monitored"))
    result = run_in(shop, "archipel deploy kubernetes --mode microservices --service-monitor --out monitored")
    assert result.returncode == 0, result.stdout + result.stderr
    return shop / "monitored"


ENDPOINT_FIELDS = {"port", "path", "scheme", "interval", "honorLabels", "relabelings", "authorization"}


def test_service_monitors_select_each_processs_service_with_the_token(monitored: Path) -> None:
    """kubernetes-validate has no schema for the CRD (it says so and skips it): checked here by
    structure, against the fields of monitoring.coreos.com/v1 ServiceMonitor the files use."""
    rendered = subprocess.run(
        [KUBECTL, "kustomize", str(monitored)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    monitors = [d for d in documents if d["kind"] == "ServiceMonitor"]
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    plan = shop_plan("microservices")
    assert sorted(m["metadata"]["name"] for m in monitors) == sorted(
        f"boutique-{p}" for p in plan.process_names
    )
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(monitor["spec"]) == {"selector", "endpoints"}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert set(endpoint) == ENDPOINT_FIELDS
        assert endpoint["authorization"] == {
            "type": "Bearer",
            "credentials": {"name": "boutique-scrape-token", "key": "token"},
        }
        wanted = monitor["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services.values() if wanted.items() <= s["metadata"]["labels"].items()]
        assert [s["metadata"]["name"] for s in chosen] == [monitor["metadata"]["name"]]
        assert endpoint["port"] in {port["name"] for port in chosen[0]["spec"]["ports"]}
    (monitored / "all.yaml").write_text(rendered)
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", "1.32.0", str(monitored / "all.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    skipped = [line for line in lines if "Couldn't find schema for kind ServiceMonitor" in line]
    assert len(skipped) == len(monitors) and result.returncode == 0, lines
    assert all(" passed " in line for line in lines if line not in skipped)
    assert "boutique-scrape-token" in (monitored / "kustomization.yaml").read_text()


# -- the dashboard ----------------------------------------------------------------------------------------


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return found


def queries() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel.get("targets", [])]


def test_the_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 39 and board["uid"] == "archipel-boutique"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert variables["process"]["type"] == "query" and variables["process"]["includeAll"]
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids))
    rows = [panel["title"] for panel in panels() if panel["type"] == "row"]
    assert rows == ["Calls", "Events", "Resilience", "Processes"]
    cells: set[tuple[int, int]] = set()
    for panel in panels():
        grid = panel["gridPos"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert grid["x"] + grid["w"] <= 24 and not mine & cells, panel["title"]  # no overlap
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"]
            assert 'deployment="boutique", process=~"$process"' in target["expr"], target["expr"]


FUNCTIONS = {"sum", "max", "rate", "increase", "changes", "histogram_quantile", "by"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers outside label matchers, ranges,
    strings and ``by (...)`` lists that are not functions or aggregations."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\bby \([^)]*\)", " ", bare)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare))
    return words - FUNCTIONS


def exposed() -> set[str]:
    """Every series name a process's /metrics can have, from the registry's families: a
    counter's ``_total``, a histogram's ``_bucket``, ``_sum`` and ``_count``; and ``up``, which
    Prometheus records for every target it scrapes."""
    names = {"up"}
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "summary": ["_sum", "_count"],
    }
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
        names.update(sample.name for sample in family.samples)
    return names


def test_every_query_names_only_metrics_a_process_exposes() -> None:
    names = exposed()
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "archipel_process_info"} <= names
    assert {"archipel_rpc_duration_seconds_bucket", "archipel_outbox_pending"} <= names
    typo = metric_names('rate(archipel_rpc_requests{service="a"}[1m])')  # a counter without _total
    assert typo == {"archipel_rpc_requests"} and not typo <= names
    used: set[str] = set()
    for expr in queries():
        found = metric_names(expr)
        assert found, expr
        assert found <= names, (expr, found - names)
        used |= found
    assert len(used) >= 20
    scraped = generate_latest(REGISTRY).decode()  # what /metrics serves now, process metrics included
    assert "process_cpu_seconds_total " in scraped and "process_open_fds " in scraped


def grafana_free(expr: str) -> str:
    """A query with Grafana's variables given values, as Prometheus receives it."""
    return expr.replace("$__rate_interval", "1m").replace("$__range", "5m").replace("$process", ".*")


def test_promtool_parses_every_query(tmp_path: Path) -> None:
    rules = [{"record": f"dashboard:query{n}", "expr": grafana_free(e)} for n, e in enumerate(queries())]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(tmp_path / "rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    rules.append({"record": "dashboard:broken", "expr": "sum by (service (rate(x[1m]))"})
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert promtool("check", "rules", str(tmp_path / "rules.yml")).returncode != 0


def test_the_dashboard_is_the_same_in_the_compose_profile() -> None:
    provisioned = json.loads(
        (DEPLOY / "compose" / "microservices" / "grafana" / "dashboards" / "boutique.json").read_text()
    )
    alone = json.loads(DASHBOARD.read_text())
    assert {**provisioned, "description": ""} == {**alone, "description": ""}
    assert dashboard(shop_plan("monolith"))["panels"] == alone["panels"]
    source = load(
        DEPLOY / "compose" / "microservices" / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
    )
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


def test_compose_starts_prometheus_and_grafana_only_in_their_profile() -> None:
    compose = load(DEPLOY / "compose" / "microservices" / "compose.yaml")
    assert compose["services"]["prometheus"]["profiles"] == ["observability"]
    assert compose["services"]["grafana"]["profiles"] == ["observability"]
    assert all(
        "profiles" not in s for n, s in compose["services"].items() if n not in ("prometheus", "grafana")
    )
    assert compose["secrets"]["scrape-token"] == {"file": "./secrets/boutique-scrape-token/token"}
    assert compose["services"]["prometheus"]["secrets"] == ["scrape-token"]
    assert all(
        port.startswith("127.0.0.1:")
        for n in ("prometheus", "grafana")
        for port in compose["services"][n]["ports"]
    )


# -- a real Prometheus scrapes a real worker ----------------------------------------------------------------


def query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


@pytest.fixture
def worker_and_token(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    shop = copy_of_the_repository(tmp_path / "repo")
    written = run_in(shop, "archipel deploy secrets --mode monolith out", ARCHIPEL_SECRET=SECRET)
    assert written.returncode == 0, written.stdout + written.stderr
    token = shop / "out" / "boutique-scrape-token" / "token"
    assert token.stat().st_mode & 0o777 == 0o600 and token.read_text() not in written.stdout
    env = load(DEPLOY / "compose" / "monolith" / "compose.yaml")["services"]["monolith"]["environment"]
    port = free_port()
    worker = start_worker(
        env,
        ARCHIPEL_KEYRING_FILE=str(shop / "out" / "boutique-monolith-keyring" / "keyring.json"),
        ARCHIPEL_DATA_DIR=str(tmp_path / "data"),
        ARCHIPEL_PORT=str(port),
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", worker)
        yield port, token
    finally:
        output = stop(worker)
    assert worker.returncode == 0, output


def test_prometheus_scrapes_a_worker_with_the_generated_configuration(
    tmp_path: Path, worker_and_token: tuple[int, Path]
) -> None:
    port, token = worker_and_token
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert refused.value.code == 401
    config = load(DEPLOY / "compose" / "monolith" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["authorization"]["credentials_file"] == "/run/secrets/scrape-token"
    job["authorization"]["credentials_file"] = str(token)  # where Compose mounts it, here
    job.pop("dns_sd_configs")  # Docker's DNS, here
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    config["global"]["scrape_interval"] = "1s"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    web = free_port()
    prometheus = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{web}"
    try:
        deadline = time.monotonic() + 60
        up: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not up:
            assert prometheus.poll() is None, prometheus.communicate()[0]
            with contextlib.suppress(OSError):  # not listening yet
                up = query(base, 'up{deployment="boutique", process="monolith"} == 1')
            if not up:
                time.sleep(0.2)
        assert up, "Prometheus never scraped the worker"
        (info,) = query(base, 'archipel_process_info{deployment="boutique"}')
        assert info["metric"]["process"] == "monolith" and info["metric"]["version"] == "0.1.0"
        assert info["metric"]["replica"] == "monolith-0"
        assert query(base, 'process_resident_memory_bytes{process="monolith"}')
        deadline = time.monotonic() + 30  # a rate needs two scrapes
        while not query(base, "rate(process_cpu_seconds_total[1m])") and time.monotonic() < deadline:
            time.sleep(0.2)
        for expr in queries():  # each one runs; the process rows have data already
            result = query(base, grafana_free(expr))
            if "process_" in expr or "up{" in expr:
                assert result, expr
    finally:
        prometheus.terminate()
        prometheus.communicate(timeout=30)
