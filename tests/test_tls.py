"""TLS on both hops: HTTPS between the processes and mqtts:// to the embedded broker, with
certificates from the environment, verified against a private CA."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from archipel._security.tls import TlsError, TlsFiles
from archipel.testing import run_app
from tests.apps.shop import Checkout, Item, OrderPlaced, app
from tests.certs import make_certificates
from tests.conftest import eventually


async def test_microservices_call_each_other_over_https(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path / "certs")
    async with run_app(app, "microservices", env=certificates.env()) as running:
        base = running.url_of("checkout")
        assert base.startswith("https://")
        # checkout -> currency crosses a process over HTTPS, verified against the private CA.
        order = await running.client(Checkout).place_order("u", "a@b.c", [Item("a", 1)])
        await running.events.wait_for(OrderPlaced, lambda e: e.order_id == order)

        trusting = ssl.create_default_context(cafile=str(certificates.ca))
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/checkout/echo", json={"value": {"a": 1}}, ssl=trusting) as response:
                assert response.status == 200 and await response.json() == {"a": 1}
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # the system store knows no such CA
                await http.post(f"{base}/checkout/echo", json={"value": {"a": 1}})
            with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served on that port
                await http.post(base.replace("https", "http") + "/checkout/echo", json={"value": {"a": 1}})


async def test_the_hello_example_runs_over_tls_on_both_hops(tmp_path: Path) -> None:
    from tests.test_hello_example import Greeted, Greeter, Guestbook
    from tests.test_hello_example import app as hello

    certificates = make_certificates(tmp_path / "certs")
    async with run_app(hello, "microservices", env=certificates.env()) as running:
        supervisor = running._supervisor
        assert supervisor is not None and supervisor.broker_url is not None
        assert supervisor.broker_url.startswith("mqtts://127.0.0.1:")  # the embedded broker, with TLS
        assert running.url_of("greeter").startswith("https://")
        greeting = await running.client(Greeter).greet("ada")  # greeter -> names over HTTPS
        # Greeted went through the broker over TLS, to the observer and to the guestbook.
        await running.events.wait_for(Greeted, lambda e: e.greeting_id == greeting.greeting_id)

        async def recorded() -> list[str] | None:
            entries = await running.client(Guestbook).entries()
            return entries if "Ada" in entries else None

        assert await eventually(recorded, timeout=15) == ["Ada"]


def test_incomplete_or_wrong_tls_files_are_named(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    with pytest.raises(TlsError, match="go together"):
        TlsFiles.from_env({"ARCHIPEL_TLS_CERT": str(certificates.cert)})
    with pytest.raises(TlsError, match=r"ARCHIPEL_TLS_CA=/nowhere/ca\.pem: the file does not exist"):
        TlsFiles.from_env({"ARCHIPEL_TLS_CA": "/nowhere/ca.pem"})
    with pytest.raises(TlsError, match="not a certificate and its key"):
        TlsFiles.from_env(
            {"ARCHIPEL_TLS_CERT": str(certificates.ca), "ARCHIPEL_TLS_KEY": str(certificates.key)}
        )


def test_the_readme_tls_commands(tmp_path: Path) -> None:
    """examples/hello/README.md's "Over TLS" commands, as written, on free ports."""
    from tests.test_hello_example import ROOT, _status

    readme = (ROOT / "examples/hello/README.md").read_text().split("## Over TLS", 1)[1]
    run_line, curl_line = [
        line
        for line in readme.split("```sh\n", 1)[1].split("```")[0].splitlines()
        if line[:1] not in ("#", "")
    ]
    make_certificates(tmp_path / "certs")
    state = tmp_path / "state"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
    }
    # exec: the shell becomes `archipel run`, which gets the SIGINT below.
    command = run_line.replace("archipel run", "exec archipel run").replace("examples/", f"{ROOT}/examples/")
    command += f" --port 0 --state-dir {state}"
    run = subprocess.Popen(
        ["bash", "-c", command],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (status := _status(state)) is None:
            assert run.poll() is None and time.monotonic() < deadline, run.stdout.read() if run.stdout else ""
            time.sleep(0.2)  # the state file appears once every process is ready
        greeter = next(p["url"] for p in status["processes"] if p["name"] == "greeter")
        assert greeter.startswith("https://") and status["broker"].startswith("mqtts://")
        answer = subprocess.run(
            ["bash", "-c", curl_line.replace("https://127.0.0.1:8000", greeter)],
            cwd=tmp_path, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert json.loads(answer.stdout)["message"] == "Hello, Ada!"
    finally:
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=30)
    assert run.returncode == 0
