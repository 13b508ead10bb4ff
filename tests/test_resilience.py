"""Resilience policies: deadlines, retries, circuit breakers, bulkheads and fallbacks.

The state machines are checked with a fake ``call_next``; that each policy works is checked with
real processes that are killed (SIGKILL) or frozen (SIGSTOP) while they are being called.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from archipel import DeadlineExceeded, DefinitionError, NotFound, RemoteError, Unavailable, rpc
from archipel._chain import Invocation, Next, Site, compose
from archipel._deploy.settings import load_settings
from archipel._resilience.breaker import CLOSED, HALF_OPEN, OPEN, Breakers, CircuitBreaker
from archipel._resilience.bulkhead import Bulkhead, Compartment
from archipel._resilience.fallback import Fallback
from archipel._resilience.logs import LimitedLog
from archipel._resilience.policies import Policies, Policy, PolicyError
from archipel._resilience.retry import MAX_BACKOFF, Retry, backoff_delay
from archipel._telemetry.metrics import REGISTRY
from archipel.testing import RunningApp, run_app
from tests.apps.resilient import Backend, Extras, Page, Portal, Relay, app
from tests.conftest import eventually

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]
SITE = Site("call", "backend", "whoami", "caller", remote=True, idempotent=True)
TIMEOUT_HEADER = "x-archipel-timeout-ms"


def new_call(site: Site = SITE, **arguments: Any) -> Invocation:
    return Invocation(site, arguments)


def sample(name: str, **labels: str) -> float:
    """A metric of this process (the test's own callers), 0 when never set."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- Policies: resolution and validation --------------------------------------------------------


def test_the_most_specific_setting_wins() -> None:
    policies = Policies.from_config(
        {
            "timeout": 2.0,
            "retries": 1,
            "backend": {"retries": 4, "max_concurrent": 7},
            "backend.nap": {"timeout": 0.3},
            "relay": {"relay_nap": {"backoff": 0.2}},  # [policies.relay.relay_nap], unquoted
        },
        app,
    )
    assert policies.method("backend", "nap") == Policy(timeout=0.3, retries=4, max_concurrent=7)
    assert policies.method("backend", "whoami").timeout == 2.0  # top level: a default
    assert policies.method("backend", "short_nap").timeout == 0.25  # @rpc(timeout=0.25) beats the default
    assert policies.method("relay", "relay_nap") == Policy(timeout=2.0, retries=1, backoff=0.2)
    assert policies.service("backend").max_concurrent == 7
    assert Policies.from_config(None, app).method("extras", "tips") == Policy()


def test_a_cap_alone_lowers_the_default_timeout_with_it() -> None:
    policies = Policies.from_config({"max_timeout": 4}, app)
    assert policies.method("relay", "relay_nap") == Policy(timeout=4, max_timeout=4)
    assert policies.method("backend", "short_nap").timeout == 0.25  # set on purpose: kept


def test_configuration_overrides_the_decorator() -> None:
    by_service = Policies.from_config({"backend": {"timeout": 0.5}}, app)
    by_method = Policies.from_config({"backend.short_nap": {"timeout": 0.75}}, app)
    assert by_service.method("backend", "short_nap").timeout == 0.5
    assert by_method.method("backend", "short_nap").timeout == 0.75


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"nosuch": {"timeout": 1}}, "policies.nosuch: app 'resilient' has no service 'nosuch'"),
        ({"backend.nosuch": {"timeout": 1}}, "policies.\"backend.nosuch\": service 'backend' has no rpc"),
        ({"backend": {"nosuch": {"timeout": 1}}}, "policies.backend.nosuch: service 'backend' has no rpc"),
        ({"timout": 1}, "policies.timout: unknown policy key"),
        ({"backend": {"retires": 1}}, "policies.backend.retires: unknown policy key"),
        ({"backend": {"timeout": -1}}, "policies.backend.timeout: -1 is not a positive number of seconds"),
        ({"backoff": -0.1}, "policies.backoff: -0.1 is not a number of seconds >= 0"),
        ({"breaker_cooldown": -5}, "policies.breaker_cooldown: -5 is not a number of seconds >= 0"),
        ({"timeout": 0}, "policies.timeout: 0 is not a positive number of seconds"),
        ({"retries": 1.5}, "policies.retries: 1.5 is not a whole number >= 0"),
        ({"max_concurrent": True}, "policies.max_concurrent: True is not a whole number >= 1"),
        ({"timeout": "5s"}, "policies.timeout: '5s' is not a positive number of seconds"),
        ({"max_timeout": float("inf")}, "policies.max_timeout: inf is not a positive number of seconds"),
        ({"backend.nap": {"max_concurrent": 3}}, 'policies."backend.nap".max_concurrent: applies to a whole'),
        ({"backend": {"timeout": 90}}, "backend.nap: timeout 90 is above max_timeout 60"),
    ],
)
def test_bad_policies_are_refused_naming_the_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        Policies.from_config(config, app, source="archipel.toml")
    assert str(caught.value).startswith("archipel.toml: ")
    assert message in str(caught.value)


def test_the_decorator_refuses_bad_policies() -> None:
    with pytest.raises(DefinitionError, match=r"Shaky.call: @rpc\(timeout=...\): -1 is not a positive"):

        class Shaky:
            @rpc(timeout=-1)
            async def call(self) -> None: ...


def test_run_app_refuses_bad_policies_before_starting_anything() -> None:
    async def start() -> None:
        async with run_app(app, "microservices", policies={"backend": {"timeout": -1}}):
            raise AssertionError("started")

    with pytest.raises(PolicyError, match=r"policies\.backend\.timeout"):
        asyncio.run(start())


def test_policies_come_from_pyproject_too(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'x'\n[tool.archipel.policies]\nretries = 0\n"
        '[tool.archipel.policies."backend.nap"]\ntimeout = 0.5\n'
    )
    policies = Policies.from_config(load_settings(tmp_path / "pyproject.toml").policies, app)
    assert policies.method("backend", "nap") == Policy(timeout=0.5, retries=0)


def test_readme_policies_are_valid_for_the_shop(tmp_path: Path) -> None:
    """The README's [policies] example, read as archipel.toml, applied to the reference shop."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Resilience policies", 1)[1].split("\n## ", 1)[0]
    toml = re.search(r"```toml\n(.*?)```", section, re.S)
    assert toml is not None
    (tmp_path / "archipel.toml").write_text(toml.group(1))
    sys.path.insert(0, str(ROOT / "examples" / "boutique"))
    try:
        from boutique.app import app as shop
    finally:
        sys.path.remove(str(ROOT / "examples" / "boutique"))
    policies = Policies.from_config(load_settings(tmp_path / "archipel.toml").policies, shop)
    assert policies.method("ads", "get_ads").timeout == 0.5
    assert policies.method("checkout", "place_order").timeout == 15.0
    assert policies.method("cart", "get_cart") == Policy(timeout=5.0, max_timeout=30.0)
    assert "optional(get_ads=[])" in section and "@rpc(idempotent=True, timeout=0.5)" in section
    defaults = dict(re.findall(r"^\| `(\w+)` \| ([\d.]+)", section, re.M))
    assert {key: float(value) for key, value in defaults.items()} == dataclasses.asdict(Policy())


# --- State machines, with a fake call_next ------------------------------------------------------


def test_backoff_doubles_is_capped_and_jittered_to_half_or_more() -> None:
    assert [backoff_delay(n, 0.05, lambda: 1.0) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]
    assert [backoff_delay(n, 0.05, lambda: 0.0) for n in (1, 2, 3)] == [0.025, 0.05, 0.1]
    assert backoff_delay(30, 0.05, lambda: 1.0) == MAX_BACKOFF
    drawn = [backoff_delay(2, 0.05) for _ in range(1000)]
    assert all(0.05 <= d <= 0.1 for d in drawn) and max(drawn) - min(drawn) > 0.03


def test_breaker_opens_after_consecutive_failures_and_probes_after_the_cooldown() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=5.0)
    for now in (0.0, 1.0):
        assert breaker.admit(now) and not breaker.failed(now)
    assert breaker.succeeded() is False and breaker.failures == 0  # an answer resets the count
    assert [breaker.failed(t) for t in (2.0, 2.1, 2.2)] == [False, False, True]
    assert breaker.state == OPEN and not breaker.admit(7.1)  # cooling down until 7.2
    assert breaker.admit(7.2) and breaker.state == HALF_OPEN  # the probe
    assert not breaker.admit(7.3)  # one probe at a time
    assert breaker.failed(7.4) and breaker.state == OPEN  # failed probe: another cool-down
    assert not breaker.admit(12.3) and breaker.admit(12.4)
    breaker.released()  # the probe was cancelled: the next call probes
    assert breaker.admit(12.5)
    assert breaker.succeeded() and breaker.state == CLOSED and breaker.admit(12.6)


def test_an_open_breaker_probes_at_once_when_its_replica_passes_its_health_probe() -> None:
    breakers = Breakers(
        Policies.from_config({"backend": {"breaker_failures": 1}}, app), lambda s: ["http://a"]
    )
    breaker = breakers.breaker("backend", "http://a")
    assert breaker.failed(10.0) and not breaker.admit(10.1)  # open, cooling down (5 s by default)
    breakers.back_in_rotation("http://b")  # another replica: nothing changes here
    assert not breaker.admit(10.2)
    breakers.back_in_rotation("http://a")  # restarted and ready again
    assert breaker.admit(10.3) and breaker.state == HALF_OPEN  # the probe goes now, not at 15.0
    assert not breaker.admit(10.4)  # still one probe at a time
    assert breaker.succeeded() and breaker.state == CLOSED


async def test_breakers_route_around_an_open_replica_then_fail_fast() -> None:
    policies = Policies.from_config({"backend": {"breaker_failures": 2, "breaker_cooldown": 60}}, app)
    breakers = Breakers(policies, lambda service: ["http://a", "http://b"])
    down = {"http://a"}
    sent: list[str | None] = []

    async def send(invocation: Invocation) -> str:
        sent.append(invocation.endpoint)
        if invocation.endpoint in down:
            raise Unavailable("connection refused", never_sent=True)
        if invocation.arguments.get("kind") == "missing":
            raise NotFound("an answer, not an outage")
        return str(invocation.endpoint)

    chain = compose(SITE, [breakers], send)

    async def outcome(**arguments: Any) -> str:
        try:
            return str(await chain(new_call(**arguments)))
        except (Unavailable, NotFound) as exc:
            return type(exc).__name__

    assert [await outcome() for _ in range(6)] == ["Unavailable", "http://b"] * 2 + ["http://b"] * 2
    assert sent.count("http://a") == 2  # open after two failures: no call went there since
    assert sample("archipel_breaker_state", service="backend", endpoint="http://a") == OPEN
    assert await outcome(kind="missing") == "NotFound"  # a declared 4xx does not count
    down.add("http://b")
    assert [await outcome() for _ in range(2)] == ["Unavailable"] * 2
    before = len(sent)
    calls = 1000
    started = time.perf_counter()
    for _ in range(calls):
        with pytest.raises(Unavailable) as caught:
            await chain(new_call())
    per_call = (time.perf_counter() - started) / calls
    assert caught.value.never_sent and "every replica" in str(caught.value)
    assert len(sent) == before  # nothing was sent
    assert per_call < 0.0005, per_call  # "well under a millisecond"


async def test_retry_sends_again_only_what_is_safe_and_avoids_the_replica_tried() -> None:
    policies = Policies.from_config({"retries": 2, "backoff": 0}, app)
    retry = Retry(policies)
    failures: list[Exception] = []
    seen: list[tuple[int, list[str]]] = []

    async def send(invocation: Invocation) -> str:
        seen.append((invocation.attempt, list(invocation.notes.get("avoid", []))))
        invocation.endpoint = f"http://replica-{invocation.attempt}"
        if failures:
            raise failures.pop(0)
        return "ok"

    plain = Site("call", "backend", "record", "caller", remote=True)  # not idempotent
    failures[:] = [Unavailable("refused", never_sent=True)]
    assert await compose(plain, [retry], send)(new_call(plain)) == "ok"
    assert seen == [(1, []), (2, ["http://replica-1"])]

    failures[:] = [Unavailable("reset after the request was written")]  # maybe sent: not again
    with pytest.raises(Unavailable):
        await compose(plain, [retry], send)(new_call(plain))

    seen.clear()
    failures[:] = [DeadlineExceeded("slow")] * 3  # idempotent: tried 1 + retries times
    with pytest.raises(DeadlineExceeded):
        await compose(SITE, [retry], send)(new_call())
    assert [attempt for attempt, _ in seen] == [1, 2, 3]

    failures[:] = [Unavailable("breaker open", never_sent=True)]
    refused = new_call()
    refused.notes["rejected"] = "breaker"  # refused by a local policy: the fast answer stands
    with pytest.raises(Unavailable):
        await compose(SITE, [retry], send)(refused)

    failures[:] = [Unavailable("refused", never_sent=True)]
    late = new_call()
    late.deadline = time.monotonic()  # no time left for another attempt
    with pytest.raises(Unavailable):
        await compose(SITE, [Retry(Policies.from_config({"backoff": 0.01}, app))], send)(late)


async def test_bulkhead_caps_calls_in_flight_and_hands_slots_to_waiters() -> None:
    compartment = Compartment(limit=2)
    assert compartment.try_enter() and compartment.try_enter() and not compartment.try_enter()
    assert not await compartment.enter(0.01)  # nobody left: the wait ends, no slot
    waiter = asyncio.create_task(compartment.enter(5))
    await asyncio.sleep(0)  # let it queue
    assert compartment.waiting == 1
    compartment.leave()  # straight to the waiter
    assert await waiter and compartment.in_flight == 2 and compartment.waiting == 0
    compartment.leave()
    compartment.leave()
    assert compartment.in_flight == 0

    bulkhead = Bulkhead(Policies.from_config({"backend": {"max_concurrent": 2}}, app), wait=0.05)
    release = asyncio.Event()

    async def slow(invocation: Invocation) -> str:
        await release.wait()
        return "ok"

    chain = compose(SITE, [bulkhead], slow)
    running = [asyncio.ensure_future(chain(new_call())) for _ in range(2)]
    await asyncio.sleep(0)
    assert bulkhead.compartment("backend").in_flight == 2
    assert sample("archipel_bulkhead_in_flight", service="backend") == 2
    refused = new_call()
    started = time.monotonic()
    with pytest.raises(Unavailable, match="max_concurrent = 2") as caught:
        await chain(refused)
    assert caught.value.never_sent and refused.notes["rejected"] == "bulkhead"
    assert 0.04 < time.monotonic() - started < 1  # waited briefly, not for the slow calls
    release.set()
    assert await asyncio.gather(*running) == ["ok", "ok"]
    assert bulkhead.compartment("backend").in_flight == 0


async def test_fallback_stands_in_for_outages_only() -> None:
    site = Site("call", "extras", "tips", "portal", remote=True, optional=True)
    fallback = Fallback({"portal": {"extras": {"tips": [], "headline": lambda: "none"}}})
    assert fallback.wants(site) and not fallback.wants(
        Site("call", "extras", "other", "portal", optional=True)
    )
    failure: list[BaseException] = []

    async def send(invocation: Invocation) -> list[str]:
        raise failure[0]

    chain: Next = compose(site, [fallback], send)
    for exc in (
        Unavailable("down"),
        DeadlineExceeded("slow"),
        TimeoutError(),
        RemoteError("boom", http_status=500),
        ValueError("a bug, which a remote caller would get as a 500"),
    ):
        failure[:] = [exc]
        result = await chain(new_call(site))
        assert result == []
        result.append("changed by the caller")  # a fresh copy each time
    for answer in (NotFound("no such topic"), RemoteError("teapot", http_status=418)):
        failure[:] = [answer]
        with pytest.raises(type(answer)):
            await chain(new_call(site))


def test_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    limited = LimitedLog(logging.getLogger("archipel.test"), interval=60)
    with caplog.at_level(logging.WARNING, "archipel.test"):
        logged = [limited.warning("ads", "ads is down (%d)", n) for n in range(100)]
        limited.warning("recommendation", "recommendation is down")
    assert logged.count(True) == 1
    assert [r.getMessage() for r in caplog.records] == ["ads is down (0)", "recommendation is down"]
    limited._last["ads"] -= 60  # an interval later
    with caplog.at_level(logging.WARNING, "archipel.test"):
        limited.warning("ads", "ads is still down")
    assert caplog.records[-1].getMessage().endswith("(99 more like it left out since the last one)")


# --- Real processes -----------------------------------------------------------------------------


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], **headers: str
) -> tuple[int, Any]:
    async with http.post(url, json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def pid_at(http: aiohttp.ClientSession, base: str, running: RunningApp) -> int:
    status, pid = await post(http, f"{base}/backend/whoami", {}, **running.auth_headers("backend"))
    assert status == 200
    return int(pid)


async def refused(base: str) -> bool | None:
    """True once nothing listens at ``base`` any more (None while something does)."""
    host, port = base.removeprefix("http://").split(":")
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return True
    writer.close()
    return None


async def scrape(
    http: aiohttp.ClientSession, base: str, headers: dict[str, str]
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with http.get(f"{base}/metrics", headers=headers) as response:
        text = await response.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Frozen:
    """SIGSTOP a process for the block; SIGCONT it whatever happens."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> Frozen:
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


async def test_calls_to_a_killed_replica_go_to_the_other_one(http: aiohttp.ClientSession) -> None:
    async with run_app(app, "microservices", replicas={"backend": 2}) as running:
        urls = running.urls_of("backend")
        killed, survivor = [await pid_at(http, url, running) for url in urls]
        retries = sample("archipel_call_retries_total", caller="operator", service="backend", method="record")
        os.kill(killed, signal.SIGKILL)
        await eventually(lambda: refused(urls[0]))
        backend = running.client(Backend)  # its first call goes to the killed replica
        keys = [f"order-{n}" for n in range(10)]
        answered = [await backend.record(key) for key in keys]  # not idempotent: never sent, so sent again
        answered += [await backend.whoami() for _ in range(10)]
        assert killed not in answered and survivor in answered
        assert (
            sample("archipel_call_retries_total", caller="operator", service="backend", method="record")
            > retries
        )
        for key in keys:  # each order recorded exactly once, wherever it went
            assert sum([await recorded(http, url, key, running) for url in urls]) == 1, key


async def recorded(http: aiohttp.ClientSession, base: str, key: str, running: RunningApp) -> int:
    """How many times the replica at ``base`` recorded ``key`` (0 when it is down)."""
    try:
        operator = running.auth_headers("backend")
        status, count = await post(http, f"{base}/backend/times_recorded", {"key": key}, **operator)
    except aiohttp.ClientConnectorError:
        return 0
    assert status == 200
    return int(count)


async def test_a_frozen_replica_opens_its_breaker_and_calls_go_to_the_other_one(
    http: aiohttp.ClientSession,
) -> None:
    policies = {"backend": {"timeout": 0.5, "breaker_failures": 2, "breaker_cooldown": 60}}
    async with run_app(app, "microservices", replicas={"backend": 2}, policies=policies) as running:
        urls = running.urls_of("backend")
        frozen, healthy = [await pid_at(http, url, running) for url in urls]
        backend = running.client(Backend)
        with Frozen(frozen):
            outcomes: list[object] = []
            for _ in range(4):  # round-robin: the frozen replica times out twice, then its breaker opens
                try:
                    outcomes.append(await backend.whoami())
                except DeadlineExceeded:
                    outcomes.append("timed out")
            assert outcomes.count("timed out") == 2 and set(outcomes) == {"timed out", healthy}
            assert sample("archipel_breaker_state", service="backend", endpoint=urls[0]) == OPEN
            for _ in range(20):
                started = time.monotonic()
                assert await backend.whoami() == healthy
                assert time.monotonic() - started < 0.5  # never waits on the frozen one again


async def test_with_every_replica_frozen_calls_fail_fast_then_recover_after_the_cooldown(
    http: aiohttp.ClientSession,
) -> None:
    policies = {"backend": {"timeout": 0.3, "breaker_failures": 2, "breaker_cooldown": 1.0}}
    async with run_app(app, "microservices", policies=policies) as running:
        [url] = running.urls_of("backend")
        pid = await pid_at(http, url, running)
        backend = running.client(Backend)
        with Frozen(pid):
            for _ in range(2):
                with pytest.raises(DeadlineExceeded):
                    await backend.whoami()
            calls = 200
            started = time.perf_counter()
            for _ in range(calls):
                with pytest.raises(Unavailable, match="circuit breaker of every replica"):
                    await backend.whoami()
            per_call = (time.perf_counter() - started) / calls
            print(f"\nfail-fast with the breaker open: {per_call * 1e6:.0f} us per call")
            assert per_call < 0.001
        # Thawed: once the cool-down has passed, one probe goes through and closes the breaker.
        assert await eventually(lambda: _answer(backend.whoami()), timeout=10) == pid
        assert sample("archipel_breaker_state", service="backend", endpoint=url) == CLOSED


async def _answer(call: Any) -> Any:
    """The call's result, or None when it failed (to poll with ``eventually``)."""
    try:
        return await call
    except (Unavailable, DeadlineExceeded):
        return None


async def test_the_deadline_travels_two_hops_and_the_callee_stops_when_it_passes(
    http: aiohttp.ClientSession,
) -> None:
    async with run_app(app, "microservices", policies={"relay": {"timeout": 0.5}}) as running:
        relay = running.client(Relay)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await relay.relay_nap("two-hops", 5)  # relay -> backend, which would nap 5 s
        assert time.monotonic() - started < 2.5
        backend = running.client(Backend)
        state = await eventually(lambda: backend.nap_state("two-hops"), timeout=5)
        assert state.startswith("cancelled after"), state  # the backend stopped working...
        assert float(state.split()[2]) < 1.0  # ...when the caller's 0.5 s were up (give or take), not 5 s


async def test_servers_cap_the_deadline_asked_and_default_when_none_is(http: aiohttp.ClientSession) -> None:
    policies = {"timeout": 2.0, "backend.nap": {"timeout": 0.3, "max_timeout": 1.0}}
    async with run_app(app, "microservices", policies=policies) as running:
        base = running.url_of("backend")

        async def nap(method: str, key: str, **headers: str) -> float:
            started = time.monotonic()
            arguments = {"key": key, "seconds": 5}
            operator = running.auth_headers("backend")
            status, body = await post(http, f"{base}/backend/{method}", arguments, **operator, **headers)
            assert status == 504 and body["error"]["kind"] == "deadline_exceeded"
            return time.monotonic() - started

        capped = await nap("nap", "capped", **{TIMEOUT_HEADER: "999999999"})  # ~11 days asked
        assert 1.0 <= capped < 2.0  # max_timeout = 1.0
        assert 0.3 <= await nap("nap", "no-header") < 1.0  # an outside caller gets the timeout
        assert 0.25 <= await nap("short_nap", "decorated") < 1.0  # @rpc(timeout=0.25), not the 2.0 default
        backend = running.client(Backend)
        for key in ("capped", "no-header", "decorated"):
            state = await eventually(functools.partial(backend.nap_state, key))
            assert state.startswith("cancelled"), (key, state)


async def test_bulkhead_refuses_calls_over_the_cap_without_sending_them() -> None:
    async with run_app(app, "microservices", policies={"backend": {"max_concurrent": 2}}) as running:
        backend = running.client(Backend)
        labels = {"caller": "operator", "service": "backend", "method": "nap", "policy": "bulkhead"}
        rejected = sample("archipel_call_rejections_total", **labels)
        results = await asyncio.gather(
            *(backend.nap(f"bulkhead-{n}", 1.0) for n in range(6)), return_exceptions=True
        )
        assert results.count("rested") == 2
        assert [type(r) for r in results if r != "rested"] == [Unavailable] * 4
        assert all(isinstance(r, Unavailable) and r.never_sent for r in results if r != "rested")
        napped = [await backend.nap_state(f"bulkhead-{n}") for n in range(6)]
        assert napped.count("done") == 2 and napped.count(None) == 4  # the others never reached it
        assert sample("archipel_call_rejections_total", **labels) - rejected == 4


async def test_an_optional_dependency_frozen_answers_with_fallbacks(http: aiohttp.ClientSession) -> None:
    policies = {"extras": {"timeout": 0.3, "breaker_failures": 4, "breaker_cooldown": 60}}
    async with run_app(app, "microservices", policies=policies) as running:
        portal = running.client(Portal)
        fallback = Page(["no tips about x for now"], "")
        assert await portal.page("x") == Page(["a tip about x"], "today's headline")
        assert (await portal.page("broken")).tips == ["no tips about broken for now"]  # a 500
        assert (await portal.page("busy")).tips == ["no tips about busy for now"]  # a 503
        assert await portal.page("x") == Page(["a tip about x"], "today's headline")
        with pytest.raises(NotFound, match="no topic 'missing'"):  # a declared 4xx still raises
            await portal.page("missing")
        with Frozen(running.pid_of("extras")):
            times = []
            for _ in range(8):
                started = time.monotonic()
                assert await portal.page("x") == fallback
                times.append(time.monotonic() - started)
            assert 1 <= sum(t >= 0.3 for t in times) <= 2  # waited out the timeout until the breaker opened
            assert all(t < 0.3 for t in times[-5:])  # then no waiting at all
            metrics = await scrape(http, running.url_of("portal"), running.auth_headers("portal"))

        def metric(name: str, **labels: str) -> float:
            return metrics.get((name, frozenset(labels.items())), 0.0)

        base = {"caller": "portal", "service": "extras"}
        assert metric("archipel_fallbacks_total", **base, method="tips", reason="error") == 1
        assert metric("archipel_fallbacks_total", **base, method="tips", reason="deadline") >= 1
        assert metric("archipel_fallbacks_total", **base, method="tips", reason="breaker") >= 5
        assert metric("archipel_call_rejections_total", **base, method="headline", policy="breaker") >= 5
        assert metric("archipel_call_retries_total", **base, method="tips") >= 2  # "busy": 503, idempotent
        assert metric("archipel_breaker_state", service="extras", endpoint=running.url_of("extras")) == OPEN


async def test_in_a_monolith_only_optional_dependencies_are_wrapped() -> None:
    async with run_app(app, "monolith") as running:
        portal = running.instance(Portal)
        assert isinstance(portal.backend, Backend)  # plain dependency: the object itself
        assert isinstance(running.instance(Relay).backend, Backend)
        assert not isinstance(portal.extras, Extras)  # optional: a local proxy with the fallback
        client = running.client(Portal)
        assert await client.page("x") == Page(["a tip about x"], "today's headline")
        assert await client.page("broken") == Page(["no tips about broken for now"], "today's headline")
        assert (await client.page("busy")).tips == ["no tips about busy for now"]
        with pytest.raises(NotFound):
            await client.page("missing")


# --- Configuration through the command line -----------------------------------------------------


def archipel(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archipel", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def settings(tmp_path: Path, policies: str) -> Path:
    path = tmp_path / "archipel.toml"
    path.write_text(f'app = "{ROOT}/tests/apps/resilient.py:app"\nport = 0\n{policies}')
    return path


@pytest.mark.parametrize("command", ["check", "run"])
def test_the_cli_refuses_bad_policies_naming_the_key(tmp_path: Path, command: str) -> None:
    settings(tmp_path, '[policies."backend.nap"]\ntimeout = -2\n')
    result = archipel(tmp_path, command, *(["--state-dir", str(tmp_path)] if command == "run" else []))
    assert result.returncode != 0
    assert 'policies."backend.nap".timeout: -2 is not a positive number of seconds' in result.stderr


def test_policies_from_archipel_toml_reach_the_workers(tmp_path: Path) -> None:
    settings(tmp_path, "[policies.backend]\ntimeout = 0.3\n")
    runner = subprocess.Popen(
        [sys.executable, "-m", "archipel", "run", "--state-dir", str(tmp_path / "state"), "--quiet"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        status = _wait_for_state(tmp_path / "state" / "state.json", runner)
        [url] = [p["url"] for p in status["processes"] if "backend" in p["services"]]
        credential = archipel(tmp_path, "token", "backend", "--state-dir", str(tmp_path / "state"))
        assert credential.returncode == 0, credential.stderr
        request = urllib.request.Request(
            f"{url}/backend/nap",
            data=b'{"key": "k", "seconds": 5}',
            headers={"content-type": "application/json", "authorization": credential.stdout.strip()},
        )
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 504 and 0.3 <= time.monotonic() - started < 2.0
    finally:
        runner.send_signal(signal.SIGTERM)
        output, _ = runner.communicate(timeout=30)
    assert runner.returncode == 0, output


def _wait_for_state(state: Path, runner: subprocess.Popen[str], timeout: float = 60) -> Any:
    for _ in _until(timeout):
        assert runner.poll() is None, runner.stdout.read() if runner.stdout else ""
        if state.exists():
            return json.loads(state.read_text())
    raise AssertionError("archipel run never reported ready")


def _until(timeout: float) -> Iterator[None]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        yield
        time.sleep(0.1)  # polling the state file `archipel run` writes once every process is ready
