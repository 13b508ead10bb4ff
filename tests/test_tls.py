"""TLS on both hops: HTTPS between the processes and mqtts:// to the embedded broker, with
certificates from the environment, verified against a private CA."""

from __future__ import annotations

import ssl
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
