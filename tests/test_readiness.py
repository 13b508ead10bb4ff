"""The supervisor's readiness check of a new replica of the edge, which shares its port with the
old ones (SO_REUSEPORT): only the new replica's own answer counts. Before this check, an old
replica's 200 could mark the new one ready before it listened, and a rollout of the storefront
then drained the old replica with nothing else listening."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import pytest

from archipel._deploy.children import Child, StartupError, wait_ready
from archipel._deploy.worker import shared_socket


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pid: int) -> None:
    await reader.readuntil(b"\r\n\r\n")
    body = json.dumps({"ready": True, "pid": pid}).encode()
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    writer.write(f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
    await writer.drain()
    writer.close()


@pytest.fixture
async def old_replica() -> AsyncIterator[int]:
    """A ready replica of the edge: another process's pid, on a shared port."""
    sock = shared_socket("127.0.0.1", 0)
    server = await asyncio.start_server(lambda r, w: _answer(r, w, os.getpid()), sock=sock)
    try:
        yield sock.getsockname()[1]
    finally:
        server.close()


async def _child(port: int, code: str) -> Child:
    child = Child("frontend", [], {}, url=f"http://127.0.0.1:{port}", services=("frontend",), replica=1)
    child.process = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    return child


async def test_an_old_replicas_answer_does_not_make_the_new_one_ready(old_replica: int) -> None:
    child = await _child(old_replica, "import time; time.sleep(30)")  # never listens
    try:
        with pytest.raises(StartupError, match="not ready within 2s"):
            await wait_ready(child, timeout=2)
        assert not child.ready
    finally:
        assert child.process is not None
        child.process.kill()
        await child.process.wait()


async def test_the_new_replica_is_ready_once_it_answers_itself(old_replica: int) -> None:
    # The new replica binds the same port and answers with its own pid; the kernel spreads new
    # connections over both, and each look at /readyz is a new connection.
    code = f"""
import asyncio, json, os, socket
async def answer(reader, writer):
    await reader.readuntil(b"\\r\\n\\r\\n")
    body = json.dumps({{"ready": True, "pid": os.getpid()}}).encode()
    head = "HTTP/1.1 200 OK\\r\\ncontent-length: %d\\r\\nconnection: close\\r\\n\\r\\n" % len(body)
    writer.write(head.encode() + body)
    await writer.drain()
    writer.close()
async def main():
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", {old_replica}))
    server = await asyncio.start_server(answer, sock=sock)
    await asyncio.sleep(30)
asyncio.run(main())
"""
    child = await _child(old_replica, code)
    try:
        await wait_ready(child, timeout=20)
        assert child.ready
    finally:
        assert child.process is not None
        child.process.kill()
        await child.process.wait()
