"""Archipel: write Python services once, run them as a monolith or as microservices.

The public API lives here; every other module is private (``archipel._*``).
"""

from msgspec import Struct

from ._app import App
from ._errors import (
    ArchipelError,
    BadRequest,
    Conflict,
    DeadlineExceeded,
    DefinitionError,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RemoteError,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
)
from ._model import Event, Service, on, optional, rpc
from ._state import Collection, collection

__version__ = "0.1.0"

__all__ = [
    "App",
    "ArchipelError",
    "BadRequest",
    "Collection",
    "Conflict",
    "DeadlineExceeded",
    "DefinitionError",
    "Event",
    "InvalidArgument",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RemoteError",
    "Service",
    "Struct",
    "TooManyRequests",
    "Unauthenticated",
    "Unavailable",
    "__version__",
    "collection",
    "on",
    "optional",
    "rpc",
]
