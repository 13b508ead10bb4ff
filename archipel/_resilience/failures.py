"""Which failures mean the target could not answer, as opposed to answering "no" on purpose.

Breakers count them and fallbacks stand in for them; a declared 4xx error (``NotFound``,
``InvalidArgument``...) is an answer, so it neither opens a breaker nor gets a fallback.
"""

from __future__ import annotations

from .._errors import ArchipelError, DeadlineExceeded, RemoteError, Unavailable


def is_outage(exc: BaseException) -> bool:
    """A transport failure, a timeout, a 5xx, or (local call sites) an undeclared exception, which
    a remote caller would have received as a 500."""
    if isinstance(exc, RemoteError):
        return exc.http_status >= 500
    if isinstance(exc, ArchipelError):
        return exc.status >= 500
    return isinstance(exc, Exception)


def reason_of(exc: BaseException, rejected_by: str | None) -> str:
    """A short label for metrics and logs: the refusing policy, or the kind of failure."""
    if rejected_by:
        return rejected_by
    if isinstance(exc, DeadlineExceeded | TimeoutError):
        return "deadline"
    if isinstance(exc, Unavailable):
        return "unavailable"
    return "error"
