"""Children die with their supervisor, whatever kills it (SIGKILL included).

Two layers, because each has a gap:

- ``PR_SET_PDEATHSIG`` (Linux): the kernel sends the child SIGTERM when the parent *thread* that
  forked it exits. Set in the child between fork and exec (:func:`die_with_parent`), so it also
  covers programs that run none of our code (Mosquitto). The supervisor must therefore fork from a
  thread that lives as long as it does: the thread of its event loop. A child that changes its
  user loses the setting (the kernel clears it), which is why Mosquitto is told to keep its user.
- In a worker, :func:`exit_with_parent` watches the stdin pipe from the supervisor (EOF once the
  supervisor is gone, whoever kills it) and the parent pid, for systems without PDEATHSIG and for
  the race where the parent dies before the child ran ``prctl``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import signal
import sys
import threading
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    # Resolved once in the parent: loading a library between fork and exec is unsafe.
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


_PRCTL = _load_prctl()


def set_parent_death_signal(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent exits; False if unsupported."""
    return _PRCTL is not None and _PRCTL(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` for children of process ``parent``: SIGTERM them when it exits."""

    def preexec() -> None:
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect: nobody would tell us
            os._exit(1)

    return preexec


def exit_with_parent(parent: int, poll: float = 1.0) -> threading.Thread:
    """SIGTERM this process (a graceful stop) once stdin reaches EOF or the parent is not ``parent``.

    stdin must be a pipe the parent holds open; the thread is a daemon and costs one ``select`` a
    second.
    """

    def watch() -> None:
        fd = sys.stdin.fileno()
        while os.getppid() == parent:
            try:
                readable, _, _ = select.select([fd], [], [], poll)
                if readable and not os.read(fd, 4096):
                    break  # EOF: the write end closed, so the parent is gone
            except OSError:
                break
        with contextlib.suppress(ProcessLookupError):
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="archipel-parent-watch", daemon=True)
    thread.start()
    return thread
