"""Errors: definition mistakes found at start-up, and the typed errors that cross the wire.

A declared error (a subclass of :class:`ArchipelError`) carries a ``kind`` and an HTTP
``status``. Raised in a handler, it travels as ``{"error": {...}}`` and is raised again in a
remote caller as the same class, because every subclass registers its kind here.
"""

from __future__ import annotations

from typing import Any, ClassVar

_DECLARED: dict[str, type[ArchipelError]] = {}


class DefinitionError(TypeError):
    """A service or an app is defined in a way that cannot start. The message names the culprit."""


class ArchipelError(Exception):
    """Base of the errors a service may raise on purpose; they keep their class across the wire."""

    kind: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, message: str = "", *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            cls.kind = cls.__name__
        _DECLARED[cls.kind] = cls


class BadRequest(ArchipelError):
    kind = "bad_request"
    status = 400


class Unauthenticated(ArchipelError):
    """The call carries no valid credential (missing, forged, expired, or for another service)."""

    kind = "unauthenticated"
    status = 401


class PermissionDenied(ArchipelError):
    """The caller is known but may not call this method (not a declared dependency)."""

    kind = "permission_denied"
    status = 403


class NotFound(ArchipelError):
    kind = "not_found"
    status = 404


class Conflict(ArchipelError):
    kind = "conflict"
    status = 409


class PayloadTooLarge(ArchipelError):
    kind = "payload_too_large"
    status = 413


class InvalidArgument(ArchipelError):
    kind = "invalid_argument"
    status = 422


class TooManyRequests(ArchipelError):
    kind = "too_many_requests"
    status = 429


class Unavailable(ArchipelError):
    """The target could not be reached or refused to take the call (overloaded, breaker open)."""

    kind = "unavailable"
    status = 503

    def __init__(self, message: str = "", *, details: Any = None, never_sent: bool = False) -> None:
        super().__init__(message, details=details)
        # True when the request provably never reached the target (no connection was made, or a
        # local policy refused it): safe to send again even for a non-idempotent method.
        self.never_sent = never_sent


class DeadlineExceeded(ArchipelError):
    kind = "deadline_exceeded"
    status = 504


class RemoteError(ArchipelError):
    """A remote call failed with an error that is not one of the declared classes."""

    kind = "remote"

    def __init__(
        self,
        message: str = "",
        *,
        details: Any = None,
        service: str = "",
        method: str = "",
        remote_kind: str = "internal",
        http_status: int = 500,
    ) -> None:
        super().__init__(message, details=details)
        self.service = service
        self.method = method
        self.remote_kind = remote_kind
        self.http_status = http_status

    def __str__(self) -> str:
        return f"{self.service}.{self.method} failed ({self.http_status} {self.remote_kind}): {self.message}"


def declared_error(kind: str) -> type[ArchipelError] | None:
    """The declared error class registered for ``kind``, if any."""
    return _DECLARED.get(kind)
