"""Version skew during a rolling update: old and new replicas of a service side by side.

Version 2 of the app (``tests/apps/skew_v2.py``) adds optional fields to version 1's request,
response and event, and an optional keyword parameter. Each direction runs for real: each service
behind its own HTTP server on 127.0.0.1, events through a Mosquitto, one deployment (topic root)
per test. ``tests/apps/skew_breaking.py`` holds the incompatible changes, each with the error an
old replica answers with. docs/evolution.md states the rules and cites these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from archipel import App, InvalidArgument, NotFound, RemoteError
from archipel._events.mqtt import MqttBus
from archipel._rpc.client import HttpTransport
from archipel._rpc.server import RpcServer
from archipel._runtime import Runtime
from archipel.testing import EventRecorder
from tests.apps import skew_breaking as breaking
from tests.apps import skew_v1 as v1
from tests.apps import skew_v2 as v2
from tests.conftest import eventually

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
WAIT = 10.0  # seconds any one condition may take


@dataclass
class Node:
    """One process of the deployment: some services of one version, behind one HTTP server."""

    url: str
    runtime: Runtime

    def instance(self, service: str) -> Any:
        return self.runtime.instances[service]


class Fleet:
    """The processes of one deployment, each started as a worker builds it (runtime, MQTT bus,
    HTTP server and client), in this test's process so that the test can read what each service
    received. Calls are not authenticated: credentials are beside the point here."""

    def __init__(self, broker: str, root: str, folder: Path, stack: contextlib.AsyncExitStack) -> None:
        self.broker = broker
        self.root = root
        self.events = EventRecorder()  # every event and dead letter of the deployment
        self._folder = folder
        self._stack = stack

    async def start(self, app: App, service: str, *, calls: Sequence[Node] = ()) -> Node:
        """Serve ``service`` of ``app`` (one version); its dependencies are the ``calls`` nodes."""
        peers: dict[str, list[str]] = {}
        for node in calls:
            for name in node.runtime.local:
                peers.setdefault(name, []).append(node.url)
        return await self._stack.enter_async_context(self._serve(app, service, peers))

    @contextlib.asynccontextmanager
    async def _serve(self, app: App, service: str, peers: dict[str, list[str]]) -> AsyncIterator[Node]:
        instance = f"{service}-{uuid.uuid4().hex[:6]}"
        bus = MqttBus(self.broker, self.root, client_id=f"{self.root}-{instance}", durable=False)
        transport = HttpTransport(peers)
        runtime = Runtime(app, [service], bus, remote=transport.proxy, data_dir=self._folder / instance)
        rpc = RpcServer(runtime, on_startup=transport.start, on_shutdown=transport.close)
        config = uvicorn.Config(rpc, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            async with asyncio.timeout(WAIT):
                while not server.started:
                    if task.done():
                        task.result()
                        raise RuntimeError(f"{instance} stopped during start-up")
                    await asyncio.sleep(0.01)  # uvicorn exposes no start-up event to await
            port = server.servers[0].sockets[0].getsockname()[1]
            yield Node(f"http://127.0.0.1:{port}", runtime)
        finally:
            server.should_exit = True
            await task


@pytest.fixture
async def fleet(archipel_mosquitto_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    root = f"skew{uuid.uuid4().hex[:8]}"  # this test's deployment: its own topics and share groups
    async with contextlib.AsyncExitStack() as stack:
        fleet = Fleet(archipel_mosquitto_url, root, tmp_path, stack)
        observer = MqttBus(archipel_mosquitto_url, root, client_id=f"{root}-observer", durable=False)
        observer.observe(fleet.events.record)
        await observer.start()
        stack.push_async_callback(observer.stop)
        yield fleet


async def until(condition: Callable[[], Any]) -> Any:
    """``condition()`` once it is truthy; waits for it at most WAIT seconds."""

    async def probe() -> Any:
        return condition() or None

    return await eventually(probe, WAIT)


# -- the eight compatible directions ----------------------------------------------------------


async def old_caller_and_new_callee(fleet: Fleet) -> tuple[v1.Shop, v2.Pricing]:
    pricing = await fleet.start(v2.app, "pricing")
    shop = await fleet.start(v1.app, "shop", calls=[pricing])
    return shop.instance("shop"), pricing.instance("pricing")


async def new_caller_and_old_callee(fleet: Fleet) -> tuple[v2.Shop, v1.Pricing]:
    pricing = await fleet.start(v1.app, "pricing")
    shop = await fleet.start(v2.app, "shop", calls=[pricing])
    return shop.instance("shop"), pricing.instance("pricing")


async def test_request_field_old_caller_to_new_callee_gets_the_default(fleet: Fleet) -> None:
    shop, pricing = await old_caller_and_new_callee(fleet)
    await shop.ask("tea", 2)
    [(request, _)] = pricing.received
    assert request == v2.QuoteRequest("tea", 2, coupon="")


async def test_request_field_new_caller_to_old_callee_is_ignored(fleet: Fleet) -> None:
    shop, pricing = await new_caller_and_old_callee(fleet)
    await shop.ask("tea", 2, coupon="SAVE10")
    assert pricing.received == [v1.QuoteRequest("tea", 2)]


async def test_keyword_old_caller_to_new_callee_gets_the_default(fleet: Fleet) -> None:
    shop, pricing = await old_caller_and_new_callee(fleet)
    await shop.ask("tea", 2)
    assert pricing.received == [(v2.QuoteRequest("tea", 2), False)]


async def test_keyword_new_caller_to_old_callee_is_ignored(fleet: Fleet) -> None:
    shop, pricing = await new_caller_and_old_callee(fleet)
    quote = await shop.ask("tea", 2, rush=True)  # sends "rush": true, unknown to version 1
    assert pricing.received == [v1.QuoteRequest("tea", 2)]
    assert quote == v2.Quote("tea", 20)  # no rush fee: the old callee knows nothing of it


async def test_response_field_new_callee_to_old_caller_is_ignored(fleet: Fleet) -> None:
    shop, _ = await old_caller_and_new_callee(fleet)
    quote = await shop.ask("tea", 2)  # the callee answers {"sku", "total", "unit_price": 10}
    assert type(quote) is v1.Quote and quote == v1.Quote("tea", 20)


async def test_response_field_old_callee_to_new_caller_gets_the_default(fleet: Fleet) -> None:
    shop, _ = await new_caller_and_old_callee(fleet)
    quote = await shop.ask("tea", 2)
    assert type(quote) is v2.Quote and quote == v2.Quote("tea", 20, unit_price=None)


async def test_event_field_old_publisher_to_new_handler_gets_the_default(fleet: Fleet) -> None:
    pricing = await fleet.start(v1.app, "pricing")
    shop: v2.Shop = (await fleet.start(v2.app, "shop", calls=[pricing])).instance("shop")
    await pricing.instance("pricing").announce("tea", 12)
    assert await until(lambda: shop.seen) == [v2.PriceChanged("tea", 12, reason="unspecified")]


async def test_event_field_new_publisher_to_old_handler_is_ignored(fleet: Fleet) -> None:
    pricing = await fleet.start(v2.app, "pricing")
    shop: v1.Shop = (await fleet.start(v1.app, "shop", calls=[pricing])).instance("shop")
    await pricing.instance("pricing").announce("tea", 12, reason="sale")
    assert await until(lambda: shop.seen) == [v1.PriceChanged("tea", 12)]
    sent = await fleet.events.wait_for(v2.PriceChanged, timeout=WAIT)  # as it went over the wire
    assert sent == v2.PriceChanged("tea", 12, reason="sale")


async def test_new_caller_and_new_callee_use_the_new_fields(fleet: Fleet) -> None:
    """The control: between version 2 replicas the new fields do change the answer."""
    pricing = await fleet.start(v2.app, "pricing")
    shop: v2.Shop = (await fleet.start(v2.app, "shop", calls=[pricing])).instance("shop")
    assert await shop.ask("tea", 2, coupon="SAVE10", rush=True) == v2.Quote("tea", 15, unit_price=10)
    await pricing.instance("pricing").announce("tea", 12, reason="sale")
    assert await until(lambda: shop.seen) == [v2.PriceChanged("tea", 12, reason="sale")]


async def test_a_rolling_update_with_both_versions_serving(fleet: Fleet) -> None:
    """Half the fleet updated: each caller's calls alternate between an old and a new callee, each
    consumer group holds an old and a new handler, both versions publish. Nothing fails."""
    old_pricing = await fleet.start(v1.app, "pricing")
    new_pricing = await fleet.start(v2.app, "pricing")
    both = [old_pricing, new_pricing]
    old_shop: v1.Shop = (await fleet.start(v1.app, "shop", calls=both)).instance("shop")
    new_shop: v2.Shop = (await fleet.start(v2.app, "shop", calls=both)).instance("shop")

    old_quotes = [await old_shop.ask("tea", 2) for _ in range(4)]
    new_quotes = [await new_shop.ask("tea", 2, coupon="SAVE10", rush=True) for _ in range(4)]
    assert old_quotes == [v1.Quote("tea", 20)] * 4
    # Round-robin: two answers honour the coupon and the rush fee (version 2), two cannot.
    assert sorted((q.total, q.unit_price) for q in new_quotes) == [(15, 10), (15, 10), (20, None), (20, None)]
    assert len(old_pricing.instance("pricing").received) == len(new_pricing.instance("pricing").received) == 4

    for i in range(3):
        await old_pricing.instance("pricing").announce(f"old-{i}", i)
        await new_pricing.instance("pricing").announce(f"new-{i}", i, reason="sale")
    # Each event reaches one of the two handlers of the group, whatever the versions.
    await until(lambda: len(old_shop.seen) + len(new_shop.seen) == 6)
    skus = {e.sku for e in old_shop.seen} | {e.sku for e in new_shop.seen}
    assert skus == {f"{version}-{i}" for version in ("old", "new") for i in range(3)}
    assert fleet.events.dead_letters() == []


# -- incompatible changes: the error each one produces ----------------------------------------


async def old_caller_of(fleet: Fleet, callee: App) -> v1.Shop:
    pricing = await fleet.start(callee, "pricing")
    shop: v1.Shop = (await fleet.start(v1.app, "shop", calls=[pricing])).instance("shop")
    return shop


async def test_a_required_request_field_is_a_422_naming_it(fleet: Fleet) -> None:
    shop = await old_caller_of(fleet, breaking.required_request_field())
    with pytest.raises(InvalidArgument) as refused:
        await shop.ask("tea", 2)
    assert (refused.value.kind, refused.value.status) == ("invalid_argument", 422)
    assert refused.value.message == "Object missing required field `region` - at `$.request`"
    assert refused.value.details == {"path": "$.request"}


async def test_a_removed_request_field_is_a_422_from_old_callees_and_ignored_by_new_ones(
    fleet: Fleet,
) -> None:
    removed = breaking.removed_request_field()
    old_pricing = await fleet.start(v1.app, "pricing")
    new_shop = await fleet.start(removed, "shop", calls=[old_pricing])
    with pytest.raises(InvalidArgument) as refused:
        await new_shop.instance("shop").ask("tea")
    assert (refused.value.kind, refused.value.status) == ("invalid_argument", 422)
    assert refused.value.message == "Object missing required field `quantity` - at `$.request`"
    assert old_pricing.instance("pricing").received == []

    old_shop = await old_caller_of(fleet, removed)  # still sends `quantity`: dropped without a word
    assert await old_shop.ask("tea", 2) == v1.Quote("tea", 0)


async def test_a_renamed_request_field_is_a_422_naming_the_new_name(fleet: Fleet) -> None:
    shop = await old_caller_of(fleet, breaking.renamed_request_field())
    with pytest.raises(InvalidArgument) as refused:
        await shop.ask("tea", 2)
    assert refused.value.message == "Object missing required field `count` - at `$.request`"


async def test_a_retyped_request_field_is_a_422_naming_it(fleet: Fleet) -> None:
    shop = await old_caller_of(fleet, breaking.retyped_request_field())
    with pytest.raises(InvalidArgument) as refused:
        await shop.ask("tea", 2)
    assert refused.value.message == "Expected `str`, got `int` - at `$.request.quantity`"
    assert refused.value.details == {"path": "$.request.quantity"}


async def test_a_required_keyword_is_a_422_naming_it(fleet: Fleet) -> None:
    shop = await old_caller_of(fleet, breaking.required_keyword())
    with pytest.raises(InvalidArgument) as refused:
        await shop.ask("tea", 2)
    assert refused.value.message == "Object missing required field `currency`"
    assert refused.value.details == {"path": "$"}


async def test_a_renamed_or_removed_method_is_a_404_naming_it(fleet: Fleet) -> None:
    renamed = breaking.renamed_method()
    old_shop = await old_caller_of(fleet, renamed)  # `quote` is gone from the new callee
    with pytest.raises(NotFound) as refused:
        await old_shop.ask("tea", 2)
    assert (refused.value.kind, refused.value.status) == ("not_found", 404)
    assert refused.value.message == "service 'pricing' has no rpc method 'quote'"

    old_pricing = await fleet.start(v1.app, "pricing")
    new_shop = await fleet.start(renamed, "shop", calls=[old_pricing])
    with pytest.raises(NotFound) as refused:
        await new_shop.instance("shop").ask("tea", 2)
    assert refused.value.message == "service 'pricing' has no rpc method 'estimate'"


@pytest.mark.parametrize(
    ("callee", "message"),
    [
        (breaking.retyped_response_field, "Expected `int`, got `str` - at `$.total`"),
        (breaking.removed_response_field, "Object missing required field `total`"),
    ],
)
async def test_an_incompatible_response_fails_in_the_caller_naming_the_field(
    fleet: Fleet, callee: Callable[[], App], message: str
) -> None:
    shop = await old_caller_of(fleet, callee())
    with pytest.raises(RemoteError, match=re.escape(message)) as caught:
        await shop.ask("tea", 2)
    assert caught.value.remote_kind == "invalid_response" and "pricing.quote" in caught.value.message


async def old_handler_of(fleet: Fleet, publisher: App) -> tuple[v1.Shop, Node]:
    pricing = await fleet.start(publisher, "pricing")
    shop: v1.Shop = (await fleet.start(v1.app, "shop", calls=[pricing])).instance("shop")
    return shop, pricing


@pytest.mark.parametrize(
    ("publisher", "reason"),
    [
        (breaking.removed_event_field, "invalid payload: Object missing required field `price`"),
        (breaking.retyped_event_field, "invalid payload: Expected `int`, got `str` - at `$.price`"),
        (
            breaking.renamed_event_type,
            "type 'PriceUpdated' is not PriceChanged, the event of topic 'prices/changed'",
        ),
    ],
)
async def test_an_incompatible_event_is_dead_lettered_by_an_old_handler_with_the_reason(
    fleet: Fleet, publisher: Callable[[], App], reason: str
) -> None:
    shop, pricing = await old_handler_of(fleet, publisher())
    await pricing.instance("pricing").announce("tea")
    letter = await fleet.events.wait_for_dead_letter("prices/changed", timeout=WAIT)
    assert (letter.reason, letter.handler, letter.attempts) == (reason, "shop.price_changed", 0)
    assert shop.seen == []


async def test_a_required_event_field_is_dead_lettered_by_the_new_handler(fleet: Fleet) -> None:
    pricing = await fleet.start(v1.app, "pricing")
    new_shop = await fleet.start(breaking.required_event_field(), "shop", calls=[pricing])
    await pricing.instance("pricing").announce("tea", 12)
    letter = await fleet.events.wait_for_dead_letter("prices/changed", timeout=WAIT)
    assert letter.reason == "invalid payload: Object missing required field `currency`"
    assert letter.handler == "shop.price_changed" and new_shop.instance("shop").seen == []


async def test_a_renamed_topic_reaches_no_old_handler_and_says_nothing(fleet: Fleet) -> None:
    shop, pricing = await old_handler_of(fleet, breaking.renamed_event_topic())
    await pricing.instance("pricing").announce("tea")
    await until(lambda: [e for e in fleet.events.envelopes if e.topic == "prices/updated"])
    # A later event on the old topic arrives; the renamed one never does, and nothing says so.
    old_publisher = await fleet.start(v1.app, "pricing")
    await old_publisher.instance("pricing").announce("after", 1)
    assert await until(lambda: shop.seen) == [v1.PriceChanged("after", 1)]
    assert fleet.events.dead_letters() == []


# -- docs/evolution.md cites only tests that exist ----------------------------------------------


def test_every_test_the_evolution_doc_cites_exists() -> None:
    doc = (ROOT / "docs" / "evolution.md").read_text()
    cited = set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", doc))
    assert len(cited) >= 10, cited
    defined: dict[str, set[str]] = {}
    for path, name in sorted(cited):
        if path not in defined:
            source = (ROOT / path).read_text()
            defined[path] = set(re.findall(r"^(?:async )?def (test_\w+)\(", source, re.M))
        assert name in defined[path], f"docs/evolution.md cites {path}::{name}, which does not exist"
