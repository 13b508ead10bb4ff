"""Jittered exponential back-off, the one pause every retry loop of the package takes: call
retries, handler redelivery, dead-letter and outbox publishing."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(attempt: int, base: float, cap: float, draw: Callable[[], float] = random.random) -> float:
    """The pause after failed attempt number ``attempt`` (1-based): ``base`` doubling with each
    attempt, capped at ``cap``, then jittered down to 50-100 % so the callers that failed
    together do not come back in step."""
    delay: float = min(cap, base * 2 ** min(attempt - 1, 60))
    return delay * (0.5 + 0.5 * draw())
