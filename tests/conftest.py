"""Shared fixtures: a helper to wait on a condition without sleeping a fixed time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout: float = 10.0, every: float = 0.02
) -> T:
    """Poll ``probe`` until it returns a value other than None (bounded by ``timeout``)."""
    async with asyncio.timeout(timeout):
        while (value := await probe()) is None:
            await asyncio.sleep(every)
        return value


MEASURED = "measured"  # a user property: one line of numbers a test reports, shown after the run


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the lines tests recorded with ``request.node.user_properties.append(("measured",
    text))``: the numbers CI logs must show (failover time, failed requests), passed or not."""
    lines = [
        f"{report.nodeid.split('::')[-1]}: {value}"
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        if report.when == "call"
        for name, value in report.user_properties
        if name == MEASURED
    ]
    if lines:
        terminalreporter.section("measured")
        for line in lines:
            terminalreporter.line(line)
