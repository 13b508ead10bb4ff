"""Restart what dies: a process that exits without being asked to is started again, after a
back-off that doubles with each crash in a row (from the supervisor's ``restart_delay``, at most
10 s) and starts afresh once the process has run ``STABLE_AFTER`` seconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from .children import Child, StartupError

log = logging.getLogger("archipel.supervisor")  # the supervisor's voice: one logger for its lines

STABLE_AFTER = 30.0  # seconds a restarted process must live before its back-off resets
MAX_DELAY = 10.0  # seconds between two restarts, at most
READY_WITHIN = 60.0  # seconds a restarted process has to answer /readyz before it counts as dead


async def keep_running(
    child: Child,
    *,
    restart: bool,
    delay: float,
    stopping: Callable[[], bool],
    launch: Callable[[Child], Awaitable[None]],
    wait_ready: Callable[[Child, float], Awaitable[None]],
    changed: Callable[[], None],
    ready_again: Callable[[], None],
) -> None:
    """Wait for ``child`` to exit and start it again, until the supervisor stops or retires it.
    ``restart=False``: note the exit and return. ``changed`` after every change of state,
    ``ready_again`` once a restarted process answers ``/readyz``."""
    while child.process is not None:
        started = time.monotonic()
        code = await child.process.wait()
        if child.process.stdin is not None:
            child.process.stdin.close()
        if stopping() or child.retired:
            return
        child.last_exit, child.ready = code, False
        if not restart:
            log.warning("%s exited with code %s", child.label, code)
            changed()
            return
        if time.monotonic() - started > STABLE_AFTER:
            child.backoff = 0  # it ran fine for a while: a new crash starts the back-off afresh
        pause = min(MAX_DELAY, delay * 2**child.backoff)
        child.backoff += 1
        child.restarts += 1
        log.warning("%s exited with code %s; restart %d in %.1fs", child.label, code, child.restarts, pause)
        changed()
        await asyncio.sleep(pause)  # back-off between restarts of a crashing process
        if stopping() or child.retired:
            return
        await launch(child)
        changed()
        with contextlib.suppress(StartupError):  # it died again: the loop restarts it
            await wait_ready(child, READY_WITHIN)
            ready_again()
