"""The log files of a local cluster: ``{state dir}/logs/{process}-{replica}.log``.

The supervisor appends each child's lines as it receives them (:class:`RotatingLog`), rotated by
size so a long run cannot fill the disk: ``.log`` then ``.log.1``, ``.log.2`` (``BACKUPS``), each
at most ``MAX_BYTES``. ``archipel logs`` reads their ends (:func:`tail`), follows them across
rotations (:class:`Follower`), and interleaves replicas by the time at the start of each line
(:func:`interleave`).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import msgspec

log = logging.getLogger("archipel.supervisor")

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 2  # three files in all: at most 30 MB per replica


def log_path(log_dir: Path, process: str, replica: int) -> Path:
    return log_dir / f"{process}-{replica}.log"


def backup(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


class RotatingLog:
    """Appends lines to ``path``; past ``max_bytes`` the file is renamed ``.1`` (``.1`` to
    ``.2``...) and a new one begun. Writes are flushed once per turn of the event loop, so a
    burst costs one system call and a reader sees each line within a turn."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._file: BinaryIO | None = None
        self._size = 0
        self._flush_due = False
        self._broken = False

    def write(self, line: bytes) -> None:
        if self._broken:
            return
        if not line.endswith(b"\n"):
            line += b"\n"
        try:
            if self._file is None:
                self._open()
            elif self._size + len(line) > self.max_bytes and self._size:
                self._rotate()
            assert self._file is not None
            self._file.write(line)
        except OSError as exc:  # a full disk stops the file, never the cluster
            self._broken = True
            log.warning("log file %s: %s; no more lines are written to it", self.path, exc)
            return
        self._size += len(line)
        if not self._flush_due:
            self._flush_due = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: write through
                self.flush()

    def flush(self) -> None:
        self._flush_due = False
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self._broken = True
                log.warning("log file %s: %s; no more lines are written to it", self.path, exc)

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115  # kept open between lines
        self._size = self._file.tell()

    def _rotate(self) -> None:
        self.close()
        for index in range(self.backups - 1, 0, -1):
            if backup(self.path, index).exists():
                os.replace(backup(self.path, index), backup(self.path, index + 1))
        if self.backups:
            os.replace(self.path, backup(self.path, 1))
        else:
            self.path.unlink()
        self._open()


def last_lines(path: Path, count: int, end: int | None = None, block: int = 64 * 1024) -> list[bytes]:
    """The last ``count`` complete lines of ``path`` (up to byte ``end``), read from the end."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as file:
            position = file.seek(0, os.SEEK_END) if end is None else end
            data = b""
            while position > 0 and data.count(b"\n") <= count:
                step = min(block, position)
                position -= step
                file.seek(position)
                data = file.read(step) + data
    except OSError:
        return []
    lines = data.splitlines()
    if position > 0:
        lines = lines[1:]  # the first one may be the end of a line that began before
    return lines[-count:]


def tail(path: Path, count: int, end: int | None = None, backups: int = BACKUPS) -> list[bytes]:
    """The last ``count`` lines of ``path``, and of its rotated files when it has fewer."""
    lines = last_lines(path, count, end)
    for index in range(1, backups + 1):
        if len(lines) >= count:
            break
        lines = last_lines(backup(path, index), count - len(lines)) + lines
    return lines


class Follower:
    """New lines of one log file, across its rotations and truncations."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._inode: int | None = None
        self._rest = b""

    def open_at_end(self) -> int | None:
        """Start following from the file's current end; returns that end (None: no file yet)."""
        if not self._reopen():
            return None
        assert self._file is not None
        return self._file.seek(0, os.SEEK_END)

    def read(self) -> list[bytes]:
        """Complete lines written since the previous call."""
        if self._file is None and not self._reopen():
            return []
        assert self._file is not None
        lines = self._drain()
        try:
            stat = self.path.stat()
        except OSError:
            return lines  # rotated, the new one not made yet: next time
        if stat.st_ino != self._inode:  # rotated: the old file is finished, the new one is next
            lines += self._drain()
            self._file.close()
            self._file = None
            self._rest = b""
            if self._reopen():
                lines += self._drain()
        elif stat.st_size < self._file.tell():  # truncated: read it from the start
            self._file.seek(0)
            self._rest = b""
            lines += self._drain()
        return lines

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _reopen(self) -> bool:
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115  # kept open while following
        except OSError:
            return False
        self._inode = os.fstat(self._file.fileno()).st_ino
        return True

    def _drain(self) -> list[bytes]:
        assert self._file is not None
        data = self._rest + self._file.read()
        *lines, self._rest = data.split(b"\n")
        return lines


class _Stamped(msgspec.Struct):
    time: str = ""


_decode_stamp = msgspec.json.Decoder(_Stamped).decode


def line_time(line: str) -> str | None:
    """The time a line starts with (text or JSON format), as a key that sorts in time order;
    None for a line without one (a traceback's, or anything a process printed)."""
    stamp = ""
    if line.startswith("{"):
        try:
            stamp = _decode_stamp(line).time
        except msgspec.DecodeError:
            return None
    elif len(line) > 20 and line[4] == "-" and line[10] == "T":
        stamp = line.split(" ", 1)[0]
    if not stamp.endswith("Z"):
        return None
    whole, _, fraction = stamp[:-1].partition(".")
    return f"{whole}.{fraction:0<6}"  # milliseconds and microseconds compare alike


Entry = tuple[str, int, str, str]  # time key, source index, source label, line


def stamped(index: int, label: str, lines: Iterable[bytes], since: str = "") -> list[Entry]:
    """``lines`` with their time keys; a line without a time takes the one of the line before it
    (a traceback stays under the log line it belongs to)."""
    entries: list[Entry] = []
    key = since
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        key = line_time(line) or key
        entries.append((key, index, label, line))
    return entries


def interleave(sources: Iterable[list[Entry]]) -> Iterator[Entry]:
    """The entries of every source in time order; each source's own order is kept."""
    return heapq.merge(*sources, key=lambda entry: entry[0])
