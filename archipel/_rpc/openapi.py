"""OpenAPI 3.1 document generated from the RPC signatures: the wire schema is the code."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from .._model import ServiceSpec

_ERROR = {"$ref": "#/components/schemas/Error"}
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["kind", "message"],
            "properties": {
                "kind": {"type": "string"},
                "message": {"type": "string"},
                "service": {"type": "string"},
                "method": {"type": "string"},
                "details": {},
            },
        }
    },
}


def openapi_document(app: str, services: Iterable[ServiceSpec]) -> dict[str, Any]:
    services = list(services)
    methods = [m for spec in services for m in spec.methods.values()]
    types: list[Any] = [t for m in methods for t in (m.arguments, m.returns)]
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    paths: dict[str, Any] = {}
    for index, method in enumerate(methods):
        request, response = schemas[2 * index], schemas[2 * index + 1]
        paths[f"/{method.service}/{method.name}"] = {
            "post": {
                "operationId": f"{method.service}.{method.name}",
                "tags": [method.service],
                "summary": _summary(method.service, method.name, services),
                "x-idempotent": method.idempotent,
                "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                "responses": {
                    "200": {"description": "result", "content": {"application/json": {"schema": response}}},
                    **{
                        code: {"description": text, "content": {"application/json": {"schema": _ERROR}}}
                        for code, text in _ERRORS.items()
                    },
                },
            }
        }
    components["Error"] = _ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{app} ({', '.join(s.name for s in services)})", "version": "1"},
        "paths": paths,
        "components": {"schemas": components},
    }


_ERRORS = {
    "400": "body is not JSON",
    "404": "unknown service or method",
    "413": "body too large",
    "422": "an argument is missing or has the wrong type (details.path names it)",
    "500": "the handler raised",
    "504": "the deadline passed",
}


def _summary(service: str, method: str, services: list[ServiceSpec]) -> str:
    for spec in services:
        if spec.name == service:
            doc = getattr(spec.cls, method).__doc__ or ""
            return doc.strip().splitlines()[0] if doc.strip() else method
    return method
