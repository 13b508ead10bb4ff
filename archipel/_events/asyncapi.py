"""AsyncAPI 3.0.0 document of an app's events, generated from the declarations: the wire is the code.

It states what ``_events.mqtt`` and ``_events.dispatch`` do, so that a consumer written without
Archipel (or a tool checking one) finds no surprise:

- one channel per event topic, on ``{root}/{topic}`` (the root is the deployment's name, by default
  the app's), its message the event's JSON (``msgspec``'s JSON Schema, each type defined once in
  ``components/schemas``), its CloudEvents attributes as MQTT 5 user properties (the message's
  ``headers``), content type ``application/json``;
- a ``send`` operation per service that declares the event (``emits=``) and a ``receive`` operation
  per service that handles it, through its shared subscription ``$share/{group}/{root}/{topic}``
  (ADR 0004): QoS 1, never retained;
- per handled topic, the dead-letter channel ``{root}/$dead/{topic}`` with the ``DeadLetter``
  payload, and a ``send`` operation on it for each handling service (it publishes what it refused).

The output is the same for the same app, whatever the order services were given in: keys and
lists are in a fixed order, so two documents can be diffed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from .._app import App
from .._model import Event
from .._rpc.openapi import _split_refs
from .bus import DEAD_PREFIX
from .dispatch import MAX_ATTRIBUTE, DeadLetter
from .endpoint import DEFAULT_PORT, broker_tls, parse_broker_url
from .mqtt import CONTENT_TYPE, share_group, shared_filter, wire_topic

if TYPE_CHECKING:
    from .._runtime import Runtime

ASYNCAPI_VERSION = "3.0.0"
BINDING_VERSION = "0.2.0"  # of the MQTT bindings the 3.0.0 schema knows
SERVER = "broker"
_SCHEMAS = "#/components/schemas/"
_MQTT_OPERATION = {"bindingVersion": BINDING_VERSION, "qos": 1, "retain": False}
_MQTT_MESSAGE = {"bindingVersion": BINDING_VERSION, "contentType": CONTENT_TYPE, "payloadFormatIndicator": 1}
_NOT_AN_ID = re.compile(r"[^\w.-]")  # component and channel ids: no '/' (a JSON pointer would need ~1)
_NAME = r"[A-Za-z0-9._-]+"


def asyncapi_document(
    app: App,
    services: Iterable[str] | None = None,
    *,
    root: str | None = None,
    broker: str | None = None,
    version: str = "1",
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the events of ``services`` (names; default: every service).

    ``root``: the topic root, the deployment's name (default: the app's). ``broker``: its URL
    (``mqtt://host:port`` or ``mqtts://``) when known; otherwise the server's host is a variable.
    Raises ValueError naming an unknown service or a bad broker URL.
    """
    specs = app.specs
    names = sorted(specs if services is None else set(services))
    unknown = [name for name in names if name not in specs]
    if unknown:
        raise ValueError(f"app {app.name!r} has no service named {', '.join(unknown)}")
    root = root or app.name
    senders: dict[type[Event], list[str]] = {}  # every emitter in the app: a consumer checks sources
    for spec in specs.values():
        for event_type in spec.emits:
            senders.setdefault(event_type, []).append(spec.name)
    sends = {(name, e) for name in names for e in specs[name].emits}
    receives: dict[tuple[str, type[Event]], list[str]] = {}
    for name in names:
        for handler in specs[name].handlers:
            receives.setdefault((name, handler.event_type), []).append(f"{name}.{handler.name}")
    events = sorted({e for _, e in sends} | {e for _, e in receives}, key=_event_key)
    channel_ids = _channel_ids(events)

    payloads, schemas = msgspec.json.schema_components(
        [*events, DeadLetter], ref_template=_SCHEMAS + "{name}"
    )
    messages = {
        _message_id(e): _message(e, payload, app.name, sorted(senders.get(e, [])))
        for e, payload in zip(events, payloads[:-1], strict=True)
    }
    messages["DeadLetter"] = _dead_message(payloads[-1], app.name)

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for event_type in events:
        channel = channel_ids[event_type]
        message = _message_id(event_type)
        emitters = sorted(name for name, e in sends if e is event_type)
        handlers = {
            name: found
            for (name, e), found in sorted(receives.items(), key=lambda item: item[0][0])
            if e is event_type
        }
        channels[channel] = _channel(root, event_type, message, emitters, handlers)
        for service in emitters:
            operations[f"{service}.send.{channel}"] = _operation(
                "send", service, channel, message, f"{service} publishes {event_type.__name__}"
            )
        for service, found in handlers.items():
            group = share_group(root, service, event_type.__topic__)
            receive = _operation(
                "receive", service, channel, message, f"{service} handles {event_type.__name__}"
            )
            operations[f"{service}.receive.{channel}"] = {
                **receive,
                "description": _receive_text(root, service, event_type),
                "x-archipel-handlers": found,
                "x-archipel-share-group": group,
                "x-archipel-subscription": shared_filter(root, service, event_type.__topic__),
            }
        if handlers:
            dead = f"{channel}.dead"
            channels[dead] = _dead_channel(root, event_type)
            for service in handlers:
                refused = f"{service} dead-letters the {event_type.__name__} it cannot take"
                operations[f"{service}.dead.{channel}"] = _operation(
                    "send", service, dead, "DeadLetter", refused
                )

    involved = sorted({operation["x-archipel-service"] for operation in operations.values()})
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": f"{app.name} events" + ("" if names == sorted(specs) else f" ({', '.join(names)})"),
            "version": version,
            "description": f"The events of app {app.name!r} that {', '.join(names)} send and receive, "
            "over MQTT 5 at QoS 1: a JSON payload, its CloudEvents attributes as MQTT 5 user "
            "properties.",
            "tags": [{"name": name} for name in involved],
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {SERVER: _server(broker)},
        "channels": dict(sorted(channels.items())),
        "operations": dict(sorted(operations.items())),
        "components": {
            "schemas": {name: _asyncapi_schema(schemas[name]) for name in sorted(schemas)},
            "messages": dict(sorted(messages.items())),
        },
    }


def process_document(runtime: Runtime, version: str = "") -> dict[str, Any]:
    """The document of what one process sends and receives (``/asyncapi.json``): its services'
    operations, on its bus's topic root and broker. AsyncAPI 3 describes an application from its
    own side, and a process's broker login may publish and read only these topics. A monolith's
    events never leave the process: its document says what they would be on a broker."""
    bus = runtime.bus
    root, url = getattr(bus, "app", None), getattr(bus, "url", None)  # an MqttBus's; a LocalBus has none
    return asyncapi_document(
        runtime.app,
        runtime.local,
        root=root if isinstance(root, str) else None,
        broker=url if isinstance(url, str) else None,
        version=version or "1",
    )


def _event_key(event_type: type[Event]) -> tuple[str, str, str]:
    return (event_type.__topic__, event_type.__name__, event_type.__module__)


def _channel_ids(events: list[type[Event]]) -> dict[type[Event], str]:
    """A channel id per event topic (``orders/placed`` -> ``orders.placed``), unique even when two
    topics differ only in characters an id cannot hold."""
    ids: dict[type[Event], str] = {}
    by_topic: dict[str, str] = {}
    for event_type in events:
        topic = event_type.__topic__
        if topic not in by_topic:
            base = _NOT_AN_ID.sub("_", topic.replace("/", "."))
            candidate, n = base, 1
            while candidate in by_topic.values() or candidate.endswith(".dead"):
                n += 1
                candidate = f"{base}_{n}"
            by_topic[topic] = candidate
        ids[event_type] = by_topic[topic]
    return ids


def _message_id(event_type: type[Event]) -> str:
    return _NOT_AN_ID.sub("_", event_type.__name__)


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else cls.__name__


def _server(broker: str | None) -> dict[str, Any]:
    if broker is not None:
        host, port = parse_broker_url(broker)
        return {
            "host": f"{host}:{port}",
            "protocol": "secure-mqtt" if broker_tls(broker) else "mqtt",
            "protocolVersion": "5",
            "description": f"the deployment's MQTT 5 broker, {broker}",
        }
    return {
        "host": "{host}:{port}",
        "protocol": "mqtt",
        "protocolVersion": "5",
        "description": "the deployment's MQTT 5 broker (`archipel run` prints its URL); "
        "mqtts:// (protocol secure-mqtt) when the deployment uses TLS",
        "variables": {
            "host": {"default": "127.0.0.1", "description": "the broker's host"},
            "port": {"default": str(DEFAULT_PORT), "description": "the broker's port (8883 for TLS)"},
        },
    }


def _headers(app: str, type_name: str, sources: list[str], required: list[str]) -> dict[str, Any]:
    """The CloudEvents attributes of a message, as the MQTT 5 user properties they travel in."""
    attribute = {"type": "string", "maxLength": MAX_ATTRIBUTE}
    source: dict[str, Any] = {
        **attribute,
        "description": "/{app}/{service}: the emitting service; a consumer dead-letters an event "
        "from a service that does not declare it",
    }
    if sources:
        source["enum"] = [f"/{app}/{name}" for name in sources]
    else:
        source["pattern"] = f"^/{_NAME}/{_NAME}$"
    return {
        "type": "object",
        "description": "CloudEvents 1.0 attributes, sent as MQTT 5 user properties",
        "required": required,
        "properties": {
            "specversion": {"type": "string", "const": "1.0"},
            "id": {
                **attribute,
                "minLength": 1,
                "description": "unique per event: handlers deduplicate on it",
            },
            "source": source,
            "type": {
                **attribute,
                "pattern": f"^([^.]*\\.)*{re.escape(type_name)}$",
                "description": f"{type_name}, or a dotted name ending in .{type_name}",
            },
            "time": {**attribute, "format": "date-time", "description": "RFC 3339, with an offset"},
            "traceparent": {
                "type": "string",
                "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                "description": "W3C Trace Context; a malformed one is ignored",
            },
        },
    }


def _message(event_type: type[Event], payload: Any, app: str, sources: list[str]) -> dict[str, Any]:
    return {
        "name": event_type.__name__,
        "title": event_type.__name__,
        "summary": _summary(event_type),
        "contentType": CONTENT_TYPE,
        "headers": _headers(
            app, event_type.__name__, sources, ["specversion", "id", "source", "type", "time"]
        ),
        "payload": _asyncapi_schema(payload),
        "bindings": {"mqtt": _MQTT_MESSAGE},
        "x-archipel-emitters": sources,
    }


def _dead_message(payload: Any, app: str) -> dict[str, Any]:
    return {
        "name": "DeadLetter",
        "title": "DeadLetter",
        "summary": _summary(DeadLetter),
        "description": "The event a handler could not take (a payload or attribute that does not "
        "validate, a declared 4xx error, or a transient failure past the redelivery window), the "
        "reason, and at most 64 KiB of its payload (`truncated` says when it was cut). The source "
        "is the handling service.",
        "contentType": CONTENT_TYPE,
        "headers": _headers(app, "DeadLetter", [], ["specversion", "id", "source", "type", "time"]),
        "payload": _asyncapi_schema(payload),
        "bindings": {"mqtt": _MQTT_MESSAGE},
    }


def _channel(
    root: str, event_type: type[Event], message: str, emitters: list[str], handlers: dict[str, list[str]]
) -> dict[str, Any]:
    return {
        "address": wire_topic(root, event_type.__topic__),
        "title": event_type.__topic__,
        "summary": _summary(event_type),
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        "x-archipel-emitters": emitters,
        "x-archipel-handlers": sorted(h for found in handlers.values() for h in found),
    }


def _dead_channel(root: str, event_type: type[Event]) -> dict[str, Any]:
    topic = event_type.__topic__
    return {
        "address": wire_topic(root, DEAD_PREFIX + topic),
        "title": f"dead letters of {topic}",
        "summary": f"What the handlers of {event_type.__name__} could not take, with the reason",
        "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
    }


def _operation(action: str, service: str, channel: str, message: str, summary: str) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
        "summary": summary,
        "tags": [{"name": service}],
        "bindings": {"mqtt": _MQTT_OPERATION},
        "x-archipel-service": service,
    }


def _receive_text(root: str, service: str, event_type: type[Event]) -> str:
    topic = event_type.__topic__
    return (
        f"The replicas of {service} share one shared subscription, "
        f"`{shared_filter(root, service, topic)}` (group `{share_group(root, service, topic)}`): "
        "the service gets each event once. A message is acknowledged after its handler returned "
        "or its dead letter was published; a transient failure is retried, unacknowledged."
    )


def _asyncapi_schema(node: Any) -> Any:
    """A component schema as AsyncAPI's Schema Object wants it: references with constraints of their
    own split (see ``_split_refs``), and msgspec's OpenAPI-style ``discriminator`` object of a tagged
    union written as AsyncAPI's, the name of the property."""
    node = _split_refs(node)

    def fix(value: Any) -> Any:
        if isinstance(value, list):
            return [fix(item) for item in value]
        if not isinstance(value, dict):
            return value
        fixed = {key: fix(item) for key, item in value.items()}
        discriminator = fixed.get("discriminator")
        if isinstance(discriminator, dict) and "propertyName" in discriminator:
            fixed["discriminator"] = discriminator["propertyName"]
        return fixed

    return fix(node)
