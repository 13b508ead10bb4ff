"""Rate-limited warnings: a dead dependency called a thousand times a second must not write a
thousand log lines a second. One line per key per interval; the next says how many were left out.
"""

from __future__ import annotations

import logging
import time

INTERVAL = 10.0


class LimitedLog:
    def __init__(self, logger: logging.Logger, interval: float = INTERVAL) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``key`` was logged less than an interval ago; returns
        whether it was logged."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        left_out = self._suppressed.pop(key, 0)
        if left_out:
            message += f" ({left_out} more like it left out since the last one)"
        self._logger.warning(message, *args)
        return True
