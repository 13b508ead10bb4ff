"""OpenAPI 3.1 document generated from the RPC signatures: the wire schema is the code.

It describes what the server answers, so that a client generated from it, or a fuzzer checking
responses against it (``tests/boutique/test_schemathesis.py``), finds no surprise:

- each method is ``POST /{service}/{method}``; its request body is the JSON object of its
  arguments (unknown ones are ignored, as a newer caller's are during a rolling update), required
  when a parameter has no default. The constraints of the parameter types (``msgspec.Meta``: bounds,
  lengths, patterns) are in the schema, and the server's decoder enforces them;
- every error answers with the ``Error`` schema, under the statuses the server and the chain can
  produce (bad JSON 400, no or bad credential 401, caller not allowed 403, not found 404, body too
  large 413, invalid argument 422, handler failure 500, unavailable 503, deadline 504), and
  ``4XX`` for the declared errors of the method (an ``ArchipelError`` subclass the service raises:
  a conflict 409, a payment declined 402...);
- internal methods require ``bearerAuth`` (``authorization: Bearer <token>``, ``_security``);
  ``@rpc(public=True)`` methods require nothing;
- a method answers any other HTTP method with 405 and ``Allow: POST`` (RFC 9110): OpenAPI has no
  place for answers to undeclared methods, so this is said in each path's description.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from typing import Any

import msgspec

from .._model import MethodSpec, ServiceSpec

SECURITY_SCHEME = "bearerAuth"
_ERROR = {"$ref": "#/components/schemas/Error"}
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["kind", "message"],
            "properties": {
                "kind": {"type": "string", "description": "the error's class: its wire name"},
                "message": {"type": "string"},
                "service": {"type": "string"},
                "method": {"type": "string"},
                "details": {"description": "by kind: the argument's path for 422, the error id for 500"},
            },
        }
    },
}
_SECURITY_SCHEMES = {
    SECURITY_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "a call credential signed for one caller and this service (archipel._security.tokens)",
    }
}
_CHALLENGE_HEADER = {
    "WWW-Authenticate": {
        "description": "the scheme to authenticate with",
        "required": True,
        "schema": {"type": "string"},
    }
}
_NOT_POST = "Any other HTTP method is answered 405 with `Allow: POST`."

# Statuses any method may answer, and why.
_ERRORS = {
    "400": "the body is not JSON, or a header is malformed (x-archipel-timeout-ms)",
    "404": "not found: a declared NotFound raised by the method",
    "413": "the body is larger than the server's limit",
    "422": "an argument is missing, of the wrong type or breaks a constraint of its type "
    "(details.path names it), or a declared InvalidArgument raised by the method",
    "500": "the method failed; details.error_id finds it in the service's log",
    "503": "a dependency of the method is unavailable (unreachable, overloaded, its breaker open)",
    "504": "the deadline passed (the caller's x-archipel-timeout-ms, capped, or the method's)",
    "4XX": "a declared error of the method (an ArchipelError subclass; error.kind names it)",
}
# Statuses of internal methods only: they check the caller's credential first.
_INTERNAL_ERRORS = {
    "401": "no credential, or one that is malformed, forged, expired or made for another service",
    "403": "the caller may not call this method (it does not declare this service a dependency)",
}


def openapi_document(app: str, services: Iterable[ServiceSpec]) -> dict[str, Any]:
    """The document of the methods of ``services`` (those one server serves)."""
    services = list(services)
    classes = {spec.name: spec.cls for spec in services}
    methods = [m for spec in services for m in spec.methods.values()]
    types: list[Any] = [t for m in methods for t in _wire_types(m, classes[m.service])]
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    paths: dict[str, Any] = {}
    for index, method in enumerate(methods):
        request, response = schemas[2 * index], schemas[2 * index + 1]
        operation: dict[str, Any] = {
            "operationId": f"{method.service}.{method.name}",
            "tags": [method.service],
            "summary": _summary(method.service, method.name, services),
            "x-idempotent": method.idempotent,
            "requestBody": {
                # Optional when every parameter has a default: no body is the empty object.
                "required": any(p.default is msgspec.NODEFAULT for p in method.params),
                "content": {"application/json": {"schema": request}},
            },
            "responses": _responses(method, response),
        }
        if not method.public:
            operation["security"] = [{SECURITY_SCHEME: []}]
        paths[f"/{method.service}/{method.name}"] = {"description": _NOT_POST, "post": operation}
    components["Error"] = _ERROR_SCHEMA
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": f"{app} ({', '.join(s.name for s in services)})", "version": "1"},
        "paths": _split_refs(paths),
        "components": {"schemas": _split_refs(components)},
    }
    if any(not m.public for m in methods):
        document["components"]["securitySchemes"] = _SECURITY_SCHEMES
    return document


def _responses(method: MethodSpec, result: Any) -> dict[str, Any]:
    errors = {**_ERRORS, **({} if method.public else _INTERNAL_ERRORS)}
    responses: dict[str, Any] = {
        "200": {"description": "the result", "content": {"application/json": {"schema": result}}}
    }
    for code in sorted(errors, key=lambda c: (c.endswith("X"), c)):
        responses[code] = {"description": errors[code], "content": {"application/json": {"schema": _ERROR}}}
        if code == "401":
            responses[code]["headers"] = _CHALLENGE_HEADER
    return responses


def _wire_types(method: MethodSpec, cls: type) -> tuple[Any, Any]:
    """The arguments struct and the result type of ``method`` with the ``Annotated`` constraints of
    its annotations kept (``MethodSpec`` may hold them stripped: ``typing.get_type_hints`` drops
    them unless asked), so that the document states the constraints of each parameter."""
    try:
        hints = typing.get_type_hints(getattr(cls, method.name), include_extras=True)
    except Exception:  # the spec was built from these hints: this does not happen
        return method.arguments, method.returns
    fields: list[Any] = [
        (p.name, hints.get(p.name, p.annotation))
        if p.default is msgspec.NODEFAULT
        else (p.name, hints.get(p.name, p.annotation), p.default)
        for p in method.params
    ]
    config = method.arguments.__struct_config__
    arguments = msgspec.defstruct(
        method.arguments.__name__, fields, forbid_unknown_fields=config.forbid_unknown_fields
    )
    return arguments, hints.get("return", method.returns)


def _split_refs(node: Any) -> Any:
    """``{"$ref": ..., "anyOf": ...}`` (a reference with constraints of its own, as msgspec writes
    ``Annotated[Struct, Meta(extra_json_schema=...)]``) as ``{"allOf": [{"$ref": ...}], "anyOf": ...}``:
    the same in OpenAPI 3.1, and understood by tools that still drop a reference's siblings."""
    if isinstance(node, list):
        return [_split_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    split = {key: _split_refs(value) for key, value in node.items()}
    if "$ref" in split and len(split) > 1:
        ref = split.pop("$ref")
        split["allOf"] = [{"$ref": ref}, *split.get("allOf", [])]
    return split


def _summary(service: str, method: str, services: list[ServiceSpec]) -> str:
    for spec in services:
        if spec.name == service:
            doc = getattr(spec.cls, method).__doc__ or ""
            return doc.strip().splitlines()[0] if doc.strip() else method
    return method
