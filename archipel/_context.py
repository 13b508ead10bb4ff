"""What travels with every call and event: the W3C trace context and the caller's deadline.

Both live in context variables, so a handler's outgoing calls and events inherit them
without any parameter passing, in either topology.
"""

from __future__ import annotations

import os
import re
import time
from contextvars import ContextVar

TRACEPARENT = "traceparent"
TIMEOUT_HEADER = "x-archipel-timeout-ms"

_traceparent: ContextVar[str | None] = ContextVar("archipel_traceparent", default=None)
_deadline: ContextVar[float | None] = ContextVar("archipel_deadline", default=None)

_VALID = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def current_traceparent() -> str | None:
    return _traceparent.get()


def child_traceparent(parent: str | None = None) -> str:
    """A new span id under ``parent``'s trace (or a new trace when there is none or it is invalid)."""
    match = _VALID.match(parent or _traceparent.get() or "")
    trace_id = match.group(1) if match else os.urandom(16).hex()
    flags = match.group(3) if match else "01"
    return f"00-{trace_id}-{os.urandom(8).hex()}-{flags}"


def set_traceparent(value: str | None) -> None:
    _traceparent.set(value if value and _VALID.match(value) else child_traceparent(None))


def remaining_seconds() -> float | None:
    """Seconds left before the inherited deadline, or None when there is no deadline."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def set_timeout(seconds: float | None) -> None:
    _deadline.set(None if seconds is None else time.monotonic() + seconds)
