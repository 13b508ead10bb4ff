"""The local cluster's control channel: ``archipel rollout`` and ``archipel scale`` reach the
running supervisor through a Unix socket beside its state file.

The socket is mode 0600 in the state directory: only the user who runs the deployment can
change it. One request per connection, a JSON line; the answer is JSON lines of progress, then
one ``{"ok": ...}`` or ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Handler = Callable[[dict[str, Any], Callable[[str], None]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 4096


class ControlError(RuntimeError):
    pass


async def serve_control(path: Path, handle: Handler) -> asyncio.AbstractServer:
    """Listen on ``path`` (replacing a stale socket) and answer requests with ``handle``."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(message: dict[str, Any]) -> None:
            writer.write(json.dumps(message).encode() + b"\n")

        try:
            line = await reader.readline()
            try:
                request = json.loads(line[:MAX_REQUEST])
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
            except ValueError as exc:
                send({"error": f"bad request: {exc}"})
                return
            try:
                result = await handle(request, lambda text: send({"progress": text}))
            except Exception as exc:  # the answer names what went wrong; the supervisor lives on
                send({"error": str(exc) or type(exc).__name__})
            else:
                send({"ok": result})
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

    _replace_stale(path)
    old_mask = os.umask(0o177)  # created 0600: no window where others could connect
    try:
        server = await asyncio.start_unix_server(connection, path=str(path), limit=MAX_REQUEST)
    finally:
        os.umask(old_mask)
    return server


async def request(path: Path, message: dict[str, Any], progress: Callable[[str], None]) -> Any:
    """Send ``message`` to the supervisor listening on ``path``; return its result."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ControlError(f"no running deployment answers at {path}: start one with `archipel run`") from exc
    try:
        writer.write(json.dumps(message).encode() + b"\n")
        await writer.drain()
        while line := await reader.readline():
            answer = json.loads(line)
            if "progress" in answer:
                progress(answer["progress"])
            elif "error" in answer:
                raise ControlError(answer["error"])
            else:
                return answer.get("ok")
        raise ControlError("the supervisor closed the connection without an answer")
    finally:
        writer.close()


def _replace_stale(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a socket left by a supervisor killed with SIGKILL
