"""Shared fixtures: a helper to wait on a condition without sleeping a fixed time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout: float = 10.0, every: float = 0.02
) -> T:
    """Poll ``probe`` until it returns a value other than None (bounded by ``timeout``)."""
    async with asyncio.timeout(timeout):
        while (value := await probe()) is None:
            await asyncio.sleep(every)
        return value
