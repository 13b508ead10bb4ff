"""Broker logins and access rules (``archipel._deploy.acl``) on a real, private Mosquitto.

Each broker here is started by the test with the generated password and ACL files, on a free
port, and stopped at the end. The app is the test shop: Checkout emits ``orders/placed``; Email and
Ledger handle it; Currency neither emits nor handles anything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import pwd
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import pytest

from archipel._deploy.acl import (
    broker_auth_files,
    broker_users,
    mosquitto_hash,
    observer_username,
    supervisor_username,
    write_password_file,
)
from archipel._deploy.children import free_port
from archipel._deploy.mosquitto import find_mosquitto, write_config
from archipel._deploy.plan import plan
from archipel._deploy.probe import ProbeFailed, end_session, probe, restore_subscriptions
from archipel._events.bus import Envelope
from archipel._events.mqtt import (
    BrokerRefused,
    MqttBus,
    PublishRefused,
    broker_tls,
    parse_broker_url,
    shared_filter,
    subscription_id,
)
from archipel._security.keyring import mqtt_username
from archipel._security.secrets import mqtt_password
from archipel._security.tls import TlsFiles
from tests.apps.shop import Money, OrderPlaced
from tests.apps.shop import app as shop
from tests.test_mqtt_bus import Inbox

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = "aclshop"
SECRET = b"a-test-secret-of-enough-length-0123456789"
PROCESSES = {p.name: p.services for p in plan(shop, "microservices")}
WAIT = 10.0
OBSERVER = "observer"  # the observer's login is aclshop.observer, like a process's
ABSENCE = 0.3  # seconds to wait for a message that must not come, after a positive control came
MOSQUITTO = find_mosquitto()
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")


@dataclass
class Broker:
    host: str
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def user(process: str) -> str:
    return mqtt_username(DEPLOYMENT, process)


class Login(TypedDict):
    username: str
    password: str


def login(username: str) -> Login:
    return {"username": username, "password": mqtt_password(SECRET, username)}


@contextlib.contextmanager
def running_mosquitto(config: Path, port: int) -> Iterator[None]:
    """Mosquitto on ``config`` until the block ends; waits (bounded) until it accepts."""
    assert MOSQUITTO is not None
    log = (config.parent / "mosquitto.log").open("w")
    process = subprocess.Popen([MOSQUITTO, "-c", str(config)], cwd=config.parent, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert process.poll() is None, (config.parent / "mosquitto.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "mosquitto did not listen in time"
            time.sleep(0.02)  # poll interval while it binds its port
        yield
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


@contextlib.contextmanager
def private_broker(directory: Path, tls: TlsFiles | None = None) -> Iterator[Broker]:
    passwords, acl = broker_auth_files(shop, DEPLOYMENT, PROCESSES, SECRET, directory / "auth")
    port = free_port("127.0.0.1")
    config = write_config(
        directory / "broker", "127.0.0.1", port, password_file=passwords, acl_file=acl, tls=tls
    )
    with running_mosquitto(config, port):
        yield Broker("127.0.0.1", port, tls is not None)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    with private_broker(tmp_path_factory.mktemp("acl")) as running:
        yield running


def envelope(order: str, topic: str = "orders/placed") -> Envelope:
    event = OrderPlaced(order_id=order, email="a@b", total=Money("EUR", 10))
    return Envelope(topic=topic, type="testshop.OrderPlaced", source="checkout", event=event, id=order)


class Buses:
    """``await buses(process, subscribe=[...], observe=inbox)``: a started MqttBus logged in as
    that process (``None``: anonymous, unless ``username``/``password`` are given)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.made: list[MqttBus] = []

    async def __call__(
        self,
        process: str | None,
        *,
        subscribe: tuple[tuple[str, Inbox], ...] = (),
        observe: Inbox | None = None,
        client_id: str | None = None,
        **options: Any,
    ) -> MqttBus:
        if process is not None:
            options = {**login(user(process)), **options}
        client = client_id or f"{DEPLOYMENT}-{process}-{uuid.uuid4().hex[:8]}"
        mqtt = MqttBus(self.broker.url, DEPLOYMENT, client, **{"durable": False, **options})
        self.made.append(mqtt)
        for service, inbox in subscribe:
            mqtt.subscribe(service, "orders/placed", inbox)
        if observe is not None:
            mqtt.observe(observe)
        await mqtt.start()
        return mqtt

    async def stop(self) -> None:
        for mqtt in self.made:
            await mqtt.stop()


@pytest.fixture
async def bus(broker: Broker) -> AsyncIterator[Buses]:
    buses = Buses(broker)
    yield buses
    await buses.stop()


# -- the files ------------------------------------------------------------------------------


def test_password_file_is_hashed_private_and_in_mosquitto_passwd_format(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    path.write_text("left over\n")
    path.chmod(0o644)
    write_password_file(path, {"shop.checkout": "plain-password-1", "shop.email": "plain-password-2"})

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "plain-password" not in text and "left over" not in text
    hashed = r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}=="  # 12-byte salt, 64-byte PBKDF2-SHA512
    assert re.fullmatch(rf"shop\.checkout:{hashed}\nshop\.email:{hashed}\n", text)
    assert not list(tmp_path.glob(".*.tmp"))

    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        return
    theirs = tmp_path / "theirs"
    subprocess.run([tool, "-c", "-b", str(theirs), "someone", "s3cret"], check=True, timeout=10)
    _, _, iterations, salt, _ = theirs.read_text().strip().split(":", 1)[1].split("$")
    assert iterations == "101"
    assert "someone:" + mosquitto_hash("s3cret", salt=base64.b64decode(salt)) == theirs.read_text().strip()


def test_rules_follow_emits_and_handlers() -> None:
    users = {u.username: u for u in broker_users(shop, DEPLOYMENT, PROCESSES)}
    d = DEPLOYMENT
    assert users[user("checkout")].publish == [f"{d}/orders/placed"]
    assert users[user("checkout")].read == [] and users[user("checkout")].subscribe == []
    email = users[user("email")]
    assert email.read == [f"{d}/orders/placed"]
    assert email.subscribe == [shared_filter(d, "email", "orders/placed")]
    # Its dead letters only: it may not publish what it consumes (replays stay in its process).
    assert email.publish == [f"{d}/$dead/orders/placed"]
    assert (users[user("currency")].publish, users[user("currency")].read) == ([], [])
    assert users[supervisor_username(d)].publish == [f"archipel-probe/{d}.supervisor/#"]
    observer = users[observer_username(d)]
    assert (observer.publish, observer.read) == ([], [f"{d}/#"])

    with pytest.raises(ValueError, match="'nope' not a service"):
        broker_users(shop, d, {"x": ["nope"]})
    with pytest.raises(ValueError, match="login of the observer"):
        broker_users(shop, d, {"observer": ["email"]})
    with pytest.raises(ValueError, match="lower case"):
        broker_users(shop, "Bad Name", PROCESSES)


def test_broker_urls() -> None:
    assert parse_broker_url("mqtts://broker") == ("broker", 8883)
    assert parse_broker_url("mqtts://broker:8884") == ("broker", 8884)
    assert broker_tls("mqtts://broker") and not broker_tls("mqtt://broker")
    with pytest.raises(ValueError, match="no user or password") as refused:
        parse_broker_url("mqtt://me:hunter2@broker")
    assert "hunter2" not in str(refused.value)
    with pytest.raises(ValueError, match="use mqtts://"):
        MqttBus("mqtt://broker", "shop", "c", tls=ssl.create_default_context())


# -- a real Mosquitto -----------------------------------------------------------------------


async def test_anonymous_and_wrong_logins_are_refused_at_once(broker: Broker, bus: Buses) -> None:
    with pytest.raises(ProbeFailed, match=r"anonymous client refused: not authorized \(0x87\)"):
        await probe(broker.host, broker.port, "anonymous-probe")
    wrong: Login = {"username": supervisor_username(DEPLOYMENT), "password": "not-the-password"}
    with pytest.raises(ProbeFailed, match=rf"user '{DEPLOYMENT}.supervisor' refused: not authorized"):
        await probe(broker.host, broker.port, "wrong-probe", **wrong)

    async with asyncio.timeout(5):  # refused at once, not retried until connect_timeout (30 s)
        with pytest.raises(BrokerRefused, match=f"{broker.url} refused an anonymous client"):
            await bus(None)
        with pytest.raises(BrokerRefused) as refused:
            await bus(None, username=user("email"), password="not-the-password")
    message = str(refused.value)
    assert f"{broker.url} refused the login of user '{DEPLOYMENT}.email': not authorized (0x87)" in message
    assert "not-the-password" not in message and "not-the-password" not in repr(refused.value.args)


async def test_probe_logs_in_as_the_supervisor(broker: Broker) -> None:
    elapsed = await probe(
        broker.host, broker.port, "supervisor-probe", **login(supervisor_username(DEPLOYMENT))
    )
    assert 0 < elapsed < 1
    # Another login may not use the supervisor's probe topics: told so, not left to time out.
    with pytest.raises(ProbeFailed, match=r"PUBLISH to archipel-probe/aclshop.email/.* not authorized"):
        await probe(broker.host, broker.port, "email-probe", **login(user("email")))


async def test_a_process_publishes_only_the_events_it_emits(bus: Buses) -> None:
    watched = Inbox()
    await bus(OBSERVER, observe=watched)
    checkout, currency, email = await bus("checkout"), await bus("currency"), await bus("email")

    await checkout.publish(envelope("allowed"))  # returns once the PUBACK says success
    with pytest.raises(PublishRefused, match=r"user 'aclshop.currency' a publish on 'aclshop/orders/placed'"):
        await currency.publish(envelope("forged"))
    with pytest.raises(PublishRefused, match=r"not authorized \(0x87\)"):
        await email.publish(envelope("elsewhere", topic="payments/done"))
    await email.publish(envelope("dead", topic="$dead/orders/placed"))  # its dead letters
    await checkout.publish(envelope("control"))

    # Mosquitto handled the refused publishes before the control, so they would have come first.
    assert [e.id for e in await watched.wait(3)] == ["allowed", "dead", "control"]
    assert watched.items[1].topic == "$dead/orders/placed"


async def test_consumers_get_their_events_and_no_others(bus: Buses) -> None:
    mail, intruder, watched = Inbox(), Inbox(), Inbox()
    await bus("email", subscribe=(("email", mail),))
    # Mosquitto's acl_file grants the SUBSCRIBE and checks the read rule on each delivery.
    await bus("currency", subscribe=(("currency", intruder),))
    observer = await bus(OBSERVER, observe=watched)
    checkout = await bus("checkout")

    await checkout.publish(envelope("o-1"))

    assert [e.id for e in await mail.wait(1)] == ["o-1"]
    assert (await watched.wait(1))[0].id == "o-1"
    await asyncio.sleep(ABSENCE)  # the positive controls came; now prove an absence
    assert intruder.items == [] and mail.ids() == ["o-1"]
    with pytest.raises(PublishRefused, match=r"user 'aclshop\.observer'"):
        await observer.publish(envelope("from-the-observer"))


async def test_sessions_are_repaired_as_their_own_consumer(broker: Broker, bus: Buses) -> None:
    """The supervisor restores a consumer's shared subscription logged in as that consumer:
    restored under another login, the session drops the events published while it is away."""
    email = login(user("email"))
    topic_filter = shared_filter(DEPLOYMENT, "email", "orders/placed")
    filters = [(topic_filter, subscription_id(topic_filter))]
    checkout = await bus("checkout")
    for restorer, expected in (
        (supervisor_username(DEPLOYMENT), ["after"]),
        (user("email"), ["away", "after"]),
    ):
        session = f"{DEPLOYMENT}-email-{uuid.uuid4().hex[:6]}"
        await restore_subscriptions(broker.host, broker.port, session, filters, 60, **login(restorer))
        await checkout.publish(envelope("away"))  # queued for the session, or dropped
        mail = Inbox()
        consumer = await bus("email", subscribe=(("email", mail),), client_id=session, durable=True)
        await checkout.publish(envelope("after"))
        await mail.wait(len(expected))
        assert mail.ids() == expected, f"restored by {restorer}"
        await consumer.stop()
        await end_session(broker.host, broker.port, session, **email)


# -- the command, and TLS -------------------------------------------------------------------


def archipel(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archipel", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_mosquitto
async def test_broker_auth_command_writes_files_mosquitto_accepts(tmp_path: Path) -> None:
    settings = tmp_path / "archipel.toml"
    settings.write_text('app = "tests.apps.shop:app"\n[groups]\nback = ["email", "ledger"]\n')
    secret = "cli-secret-" + uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIPEL_SECRET")}
    out, port = tmp_path / "out", free_port("127.0.0.1")
    args = ("broker-auth", "--out", str(out), "--config", str(settings), "--deployment", "cli")

    missing = archipel(*args, env=env)
    assert missing.returncode == 2
    assert "ARCHIPEL_SECRET" in missing.stderr and "ARCHIPEL_SECRET_FILE" in missing.stderr

    done = archipel(*args, "--port", str(port), "--host", "127.0.0.1", env={**env, "ARCHIPEL_SECRET": secret})
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["acl", "mosquitto.conf", "passwords"]
    assert "user cli.back\n" in (out / "acl").read_text()  # the placement's process, not the services
    config = out / "mosquitto.conf"
    # What an operator adds around the snippet: as root, Mosquitto must not switch users.
    config.write_text(config.read_text() + f"user {pwd.getpwuid(os.geteuid()).pw_name}\nlog_dest stderr\n")

    with running_mosquitto(config, port):
        supervisor = "cli.supervisor"
        password = mqtt_password(secret.encode(), supervisor)
        await probe("127.0.0.1", port, "cli-probe", username=supervisor, password=password)
        with pytest.raises(ProbeFailed, match="anonymous client refused"):
            await probe("127.0.0.1", port, "cli-anonymous")


def make_certificates(folder: Path) -> tuple[Path, TlsFiles]:
    """A throwaway CA and a certificate for 127.0.0.1 it signed (openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    ca, ca_key, cert, key, csr = (folder / n for n in ("ca.pem", "ca.key", "cert.pem", "key.pem", "cert.csr"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        [*ec, "-x509", "-days", "1", "-subj", "/CN=archipel test CA", "-keyout", ca_key, "-out", ca,
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
        [*ec, "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr],
    ]  # fmt: skip
    for step in steps:
        subprocess.run([openssl, "req", *map(str, step)], check=True, capture_output=True, timeout=30)
    extensions = folder / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    sign = ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "1"]
    sign += ["-out", cert, "-extfile", extensions]
    subprocess.run([openssl, *map(str, sign)], check=True, capture_output=True, timeout=30)
    return ca, TlsFiles(cert=str(cert), key=str(key))


@needs_mosquitto
async def test_mqtts_with_logins(tmp_path: Path) -> None:
    ca, files = make_certificates(tmp_path)
    trusted = TlsFiles(ca=str(ca)).client_context()  # as processes get ARCHIPEL_TLS_CA
    assert trusted is not None
    with private_broker(tmp_path, tls=files) as broker:
        assert broker.url.startswith("mqtts://")
        await probe(
            broker.host, broker.port, "tls-probe", tls=trusted, **login(supervisor_username(DEPLOYMENT))
        )
        mail, buses = Inbox(), Buses(broker)
        try:
            await buses("email", subscribe=(("email", mail),), tls=trusted)
            checkout = await buses("checkout", tls=trusted)
            await checkout.publish(envelope("over-tls"))
            assert [e.id for e in await mail.wait(1)] == ["over-tls"]
            with pytest.raises(ConnectionError, match="is its certificate trusted"):
                await buses("email", connect_timeout=1.0)  # the system's CAs: ours is not among them
        finally:
            await buses.stop()
        # The plain protocol on the TLS listener gets nowhere.
        with pytest.raises(ProbeFailed):
            await probe(
                broker.host, broker.port, "plain-probe", timeout=1.0, **login(supervisor_username(DEPLOYMENT))
            )
