"""The AsyncAPI document of an app's events: valid against the official AsyncAPI 3.0.0 JSON Schema
(``tests/schemas``), naming every event, emitter and handler, served as ``/asyncapi.json`` by real
processes with the access rules of ``/openapi.json``, and printed by ``archipel asyncapi``."""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from archipel._events.asyncapi import asyncapi_document
from archipel._loader import load_app
from archipel.testing import run_app
from tests.apps.shop import app as small_shop
from tests.test_cli import ROOT, archipel

SCHEMA = json.loads((ROOT / "tests" / "schemas" / "asyncapi-3.0.0.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)
BOUTIQUE = "examples/boutique/boutique/app.py:app"
boutique = load_app(BOUTIQUE)


def problems(document: dict[str, Any]) -> list[str]:
    """What the official schema finds wrong, and every ``$ref`` that points nowhere."""
    found = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in VALIDATOR.iter_errors(document)]
    for ref in refs(document):
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                found.append(f"unresolved $ref {ref}")
                break
            node = node[part]
    return found


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_the_shops_document_is_valid_asyncapi_3() -> None:
    document = asyncapi_document(boutique)
    assert problems(document) == []
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "boutique events"
    server = document["servers"]["broker"]
    assert (server["protocol"], server["protocolVersion"], server["host"]) == ("mqtt", "5", "{host}:{port}")
    # Each type defined once, and referenced, never inlined: Address is in both events.
    schemas = document["components"]["schemas"]
    targets = {ref.rsplit("/", 1)[1] for ref in refs(document) if ref.startswith("#/components/schemas/")}
    assert targets == set(schemas)
    assert {"OrderPlaced", "OrderShipped", "Address", "Money", "DeadLetter"} <= set(schemas)
    assert "Address" not in json.dumps(schemas["OrderPlaced"]).replace("#/components/schemas/Address", "")


def test_the_document_names_every_event_its_emitters_and_its_handlers() -> None:
    document = asyncapi_document(boutique)
    channels, operations = document["channels"], document["operations"]
    messages = document["components"]["messages"]
    events = {e for spec in boutique.specs.values() for e in spec.emits} | set(
        boutique.event_types().values()
    )
    assert {e.__name__ for e in events} == {"OrderPlaced", "OrderShipped"}
    for event in events:
        channel_id = event.__topic__.replace("/", ".")
        channel = channels[channel_id]
        assert channel["address"] == f"boutique/{event.__topic__}"
        assert channel["messages"] == {event.__name__: {"$ref": f"#/components/messages/{event.__name__}"}}
        assert channels[f"{channel_id}.dead"]["address"] == f"boutique/$dead/{event.__topic__}"
        message = messages[event.__name__]
        assert message["payload"] == {"$ref": f"#/components/schemas/{event.__name__}"}
        assert message["bindings"]["mqtt"]["payloadFormatIndicator"] == 1
        headers = message["headers"]
        assert set(headers["required"]) == {"specversion", "id", "source", "type", "time"}
        assert "traceparent" in headers["properties"]
        emitters = sorted(s.name for s in boutique.specs.values() if event in s.emits)
        assert headers["properties"]["source"]["enum"] == [f"/boutique/{name}" for name in emitters]
        for service in emitters:
            send = operations[f"{service}.send.{channel_id}"]
            assert send["action"] == "send" and send["channel"] == {"$ref": f"#/channels/{channel_id}"}
            assert send["bindings"]["mqtt"] == {"bindingVersion": "0.2.0", "qos": 1, "retain": False}
        handlers = {
            (spec.name, h.name)
            for spec in boutique.specs.values()
            for h in spec.handlers
            if h.event_type is event
        }
        assert channel["x-archipel-handlers"] == sorted(f"{s}.{h}" for s, h in handlers)
        for service, handler in handlers:
            receive = operations[f"{service}.receive.{channel_id}"]
            assert receive["action"] == "receive" and f"{service}.{handler}" in receive["x-archipel-handlers"]
            group = f"boutique.{service}:{channel_id}"
            assert receive["x-archipel-share-group"] == group
            assert f"$share/{group}/boutique/{event.__topic__}" in receive["description"]
            dead = operations[f"{service}.dead.{channel_id}"]
            assert dead["channel"] == {"$ref": f"#/channels/{channel_id}.dead"}
    assert {op["x-archipel-service"] for op in operations.values()} == {
        "checkout",
        "shipping",
        "cart",
        "email",
    }


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d.update(asyncapi="2.6.0"),
        lambda d: d["operations"]["checkout.send.orders.placed"].update(action="publish"),
        lambda d: d["operations"]["checkout.send.orders.placed"]["bindings"]["mqtt"].update(qos=3),
        lambda d: d["servers"]["broker"].pop("protocol"),
        lambda d: d["channels"]["orders.placed"].update(address=7),
        lambda d: d["components"]["messages"]["OrderPlaced"].update(payload=5),
    ],
    ids=["version", "action", "qos", "no-protocol", "address", "payload"],
)
def test_a_broken_document_fails_validation(break_it: Any) -> None:
    document = copy.deepcopy(asyncapi_document(boutique))
    break_it(document)
    assert problems(document) != []


def test_a_broken_reference_is_found() -> None:
    document = copy.deepcopy(asyncapi_document(boutique))
    document["components"]["schemas"].pop("Address")
    assert "unresolved $ref #/components/schemas/Address" in problems(document)


def test_the_output_is_the_same_whatever_the_order_and_a_subset_describes_its_services_only() -> None:
    everything = json.dumps(asyncapi_document(boutique))
    assert json.dumps(asyncapi_document(boutique, list(reversed(boutique.specs)))) == everything
    email = asyncapi_document(boutique, ["email"], root="prod", broker="mqtts://broker.example:8884")
    assert problems(email) == []
    assert sorted(email["operations"]) == [
        "email.dead.orders.placed",
        "email.dead.orders.shipped",
        "email.receive.orders.placed",
        "email.receive.orders.shipped",
    ]
    assert email["channels"]["orders.placed"]["address"] == "prod/orders/placed"
    assert email["servers"]["broker"]["host"] == "broker.example:8884"
    assert email["servers"]["broker"]["protocol"] == "secure-mqtt"
    # The sources a consumer accepts are every emitter of the app, not only those described.
    headers = email["components"]["messages"]["OrderPlaced"]["headers"]
    assert headers["properties"]["source"]["enum"] == ["/boutique/checkout"]


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="no service named nosuch"):
        asyncapi_document(boutique, ["email", "nosuch"])
    with pytest.raises(ValueError, match="bad broker URL"):
        asyncapi_document(boutique, broker="http://broker:1883")


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.get(url, headers=headers or {}) as response:
        return response.status, await response.json(content_type=None)


async def test_each_process_serves_its_events_to_the_operator_only() -> None:
    async with (
        run_app(small_shop, "microservices", deployment="shop-a") as running,
        aiohttp.ClientSession() as http,
    ):
        url = running.url_of("email") + "/asyncapi.json"
        status, body = await get(http, url)
        assert status == 401 and body["error"]["kind"] == "unauthenticated"
        status, document = await get(http, url, running.auth_headers("email"))
        assert status == 200
        status, other = await get(
            http, running.url_of("checkout") + "/asyncapi.json", running.auth_headers("checkout")
        )
        assert status == 200
    assert problems(document) == [] and problems(other) == []
    assert sorted(document["operations"]) == ["email.dead.orders.placed", "email.receive.orders.placed"]
    assert sorted(other["operations"]) == ["checkout.send.orders.placed"]
    receive = document["operations"]["email.receive.orders.placed"]
    assert receive["x-archipel-subscription"] == "$share/shop-a.email:orders.placed/shop-a/orders/placed"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", document["servers"]["broker"]["host"])  # the broker it uses
    placed = document["components"]["messages"]["OrderPlaced"]
    assert placed == other["components"]["messages"]["OrderPlaced"]  # one contract, seen from both sides


async def test_an_opened_asyncapi_needs_no_credential() -> None:
    async with (
        run_app(small_shop, "monolith", open_endpoints=["asyncapi"]) as running,
        aiohttp.ClientSession() as http,
    ):
        status, document = await get(http, running.url_of("email") + "/asyncapi.json")
        assert status == 200
        status, _ = await get(http, running.url_of("email") + "/openapi.json")
        assert status == 401  # only what was named is opened
    assert problems(document) == []
    # One process hosts every service: the whole app, on a broker it would use.
    assert document == asyncapi_document(small_shop)


def test_the_command_prints_the_documents_function_output(tmp_path: Path) -> None:
    result = archipel("asyncapi", BOUTIQUE)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == asyncapi_document(boutique)
    out = tmp_path / "events.json"
    result = archipel("asyncapi", BOUTIQUE, "--out", str(out), "--deployment", "staging")
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == asyncapi_document(boutique, root="staging")


def test_the_command_names_a_bad_app() -> None:
    result = archipel("asyncapi", "tests.apps.nosuch:app")
    assert result.returncode == 2 and "cannot import 'tests.apps.nosuch'" in result.stderr
    result = archipel("asyncapi", "examples/nosuch.py:app")
    assert result.returncode == 2 and "no such file" in result.stderr


def test_the_documented_command_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"`(archipel asyncapi [^`]+)`", readme)
    assert commands, "the README shows archipel asyncapi"
    for command in commands:
        result = archipel(*shlex.split(command)[1:])
        assert result.returncode == 0, result.stderr
        assert problems(json.loads(result.stdout)) == []
