"""HTTP limits, with raw sockets against a real server on 127.0.0.1.

The server is the one every process runs (``archipel._deploy.worker.uvicorn_config`` with its
defaults, as ``run_app`` builds it), serving a public method. What is proven:

- a body over the limit gets 413 before it is read in full: declared too long (answered from the
  headers, nothing sent), lied about (more bytes than declared), or chunked without a length
  (answered once it passes the limit; the connection is then closed, so the rest is never read);
- a header block over the limit is refused (431) and the connection closed, and so is a request
  with both a length and chunked encoding (400);
- a client that opens a connection and sends nothing, or trickles its headers, or its body, is cut
  off within the request timeout (408 when it had begun a request);
- while 50 such slow clients hold connections, a normal request is answered at once;
- an idle kept-alive connection is closed after the keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator

import pytest

from archipel import App, Service, rpc
from archipel._deploy.worker import uvicorn_config
from archipel._rpc.server import DEFAULT_MAX_BODY
from archipel.testing import RunningApp, run_app

pytestmark = pytest.mark.timeout(60)

_DEFAULTS = inspect.signature(uvicorn_config).parameters
REQUEST_TIMEOUT: float = _DEFAULTS["request_timeout"].default
MAX_HEADER_BYTES: int = _DEFAULTS["max_header_bytes"].default
KEEP_ALIVE: int = _DEFAULTS["keep_alive"].default
GRACE = 2.0  # scheduling slack on a busy 2-core machine
PATH = "/echo/echo"


class Echo(Service):
    @rpc(public=True)
    async def echo(self, value: dict[str, int]) -> dict[str, int]:
        return value


app = App("httplimits", [Echo])


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int]]:
    running: RunningApp
    async with run_app(app, "monolith") as running:
        host, port = running.url_of("echo").removeprefix("http://").split(":")
        yield host, int(port)


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(server: tuple[str, int]) -> Connection:
    return await asyncio.open_connection(*server)


def head(length: int | None = None, *, chunked: bool = False, extra: bytes = b"") -> bytes:
    lines = [f"POST {PATH} HTTP/1.1".encode(), b"host: 127.0.0.1", b"content-type: application/json"]
    if length is not None:
        lines.append(f"content-length: {length}".encode())
    if chunked:
        lines.append(b"transfer-encoding: chunked")
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


async def response(reader: asyncio.StreamReader, within: float = 5.0) -> tuple[int, bytes]:
    """Status and body of the next response (read until the connection closes or the body ends)."""
    async with asyncio.timeout(within):
        status_line = await reader.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        headers: dict[bytes, bytes] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while size := int((await reader.readline()).split(b";")[0], 16):
                body += await reader.readexactly(size)
                await reader.readline()
            await reader.readline()
        else:
            body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
        return int(status_line.split()[1]), body


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closes the connection within ``within`` seconds (reading what it sends)."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def test_a_normal_request_is_answered(server: tuple[str, int]) -> None:
    reader, writer = await connect(server)
    body = b'{"value": {"a": 1}}'
    writer.write(head(len(body)) + body)
    assert await response(reader) == (200, b'{"a":1}')
    writer.close()


async def test_a_declared_body_over_the_limit_is_refused_from_its_headers(server: tuple[str, int]) -> None:
    reader, writer = await connect(server)
    writer.write(head(DEFAULT_MAX_BODY + 1))  # and not one byte of the body
    status, body = await response(reader)
    assert status == 413 and json.loads(body)["error"]["kind"] == "payload_too_large"
    assert await closed(reader, GRACE)  # the body it announced is not waited for
    writer.close()


async def test_a_chunked_body_is_refused_once_it_passes_the_limit(server: tuple[str, int]) -> None:
    reader, writer = await connect(server)
    writer.write(head(chunked=True))
    chunk = b"x" * 65536
    answer = asyncio.create_task(response(reader, within=20))
    sent = 0
    try:
        while not answer.done() and sent < 64 * DEFAULT_MAX_BODY:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            sent += len(chunk)
    except ConnectionError:
        pass  # closed by the server while we were still sending: the point
    status, body = await answer
    assert status == 413 and json.loads(body)["error"]["kind"] == "payload_too_large"
    # Refused once past the limit; what else was sent sat in socket buffers, never read.
    assert sent < 16 * DEFAULT_MAX_BODY
    assert await closed(reader, GRACE)
    writer.close()


async def test_a_content_length_lie_is_not_a_way_past_the_limit(server: tuple[str, int]) -> None:
    # Declares a small body, sends a large one: the declared bytes are the body (not JSON: 400),
    # the rest is read as a next request and refused as such; the connection is closed.
    reader, writer = await connect(server)
    writer.write(head(16) + b"y" * (4 * DEFAULT_MAX_BODY))
    status, body = await response(reader)
    assert status == 400 and json.loads(body)["error"]["kind"] == "bad_request"
    assert await closed(reader, GRACE)
    writer.close()
    # Both a length and chunked: ambiguous (request smuggling), refused.
    reader, writer = await connect(server)
    writer.write(head(16, chunked=True) + b"10\r\n" + b"z" * 16 + b"\r\n0\r\n\r\n")
    status, body = await response(reader)
    assert status == 400 and b"content-length and transfer-encoding" in body
    assert await closed(reader, GRACE)
    writer.close()


@pytest.mark.parametrize(
    "extra",
    [
        b"x-big: " + b"a" * (MAX_HEADER_BYTES + 1) + b"\r\n",  # one header line
        b"".join(b"x-h%d: %s\r\n" % (i, b"b" * 100) for i in range(MAX_HEADER_BYTES // 100)),  # many
    ],
    ids=["one-long-header", "many-headers"],
)
async def test_a_header_block_over_the_limit_is_refused(server: tuple[str, int], extra: bytes) -> None:
    reader, writer = await connect(server)
    try:
        writer.write(head(2, extra=extra) + b"{}")
        await writer.drain()
    except ConnectionError:
        pass
    status, body = await response(reader)
    assert status == 431 and json.loads(body)["error"]["kind"] == "headers_too_large"
    assert await closed(reader, GRACE)
    writer.close()


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float = 0.5) -> None:
    """Send ``data`` one byte at a time (what a slowloris client does); stops when cut off."""
    try:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every)  # the slowness under test
    except ConnectionError:
        return


async def cut_off(reader: asyncio.StreamReader, started: float) -> tuple[bytes, float]:
    """What the server sent before closing the connection, and when it closed it."""
    received = b""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT + 10):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionError:
        pass
    return received, time.monotonic() - started


async def test_slow_clients_are_cut_off_and_do_not_hold_up_others(server: tuple[str, int]) -> None:
    started = time.monotonic()
    slow: list[tuple[str, asyncio.StreamReader, asyncio.StreamWriter, asyncio.Task[None] | None]] = []
    for number in range(50):
        reader, writer = await connect(server)
        kind = ("silent", "headers", "body")[number % 3]
        if kind == "silent":  # connects, says nothing
            task = None
        elif kind == "headers":  # the request line, then a header a byte at a time
            writer.write(f"POST {PATH} HTTP/1.1\r\n".encode())
            task = asyncio.create_task(trickle(writer, b"x-slow: " + b"z" * 200))
        else:  # the whole head, then the body a byte at a time (longer than the timeout lets through)
            body = b'{"value": {"%s": 1}}' % (b"k" * 200)
            writer.write(head(len(body)))
            task = asyncio.create_task(trickle(writer, body))
        slow.append((kind, reader, writer, task))
    endings = [asyncio.create_task(cut_off(reader, started)) for _, reader, _, _ in slow]

    # Meanwhile, normal requests are answered at once, on fresh connections.
    for _ in range(5):
        t0 = time.monotonic()
        reader, writer = await connect(server)
        body = b'{"value": {"b": 2}}'
        writer.write(head(len(body)) + body)
        assert await response(reader, within=2.0) == (200, b'{"b":2}')
        assert time.monotonic() - t0 < 1.0
        writer.close()
        await asyncio.sleep(0.2)  # spread over the slow clients' lifetime

    results = await asyncio.gather(*endings)
    for (kind, _, writer, task), (received, elapsed) in zip(slow, results, strict=True):
        assert elapsed <= REQUEST_TIMEOUT + GRACE, (kind, elapsed)
        if kind == "silent":
            assert received == b"", received
        else:
            assert received.startswith(b"HTTP/1.1 408 "), (kind, received[:80])
            assert b"request_timeout" in received
        if task is not None:
            await task  # ends once the server cut it off
        writer.close()


async def test_an_idle_kept_alive_connection_is_closed(server: tuple[str, int]) -> None:
    reader, writer = await connect(server)
    body = b'{"value": {}}'
    writer.write(head(len(body)) + body)
    assert await response(reader) == (200, b"{}")
    t0 = time.monotonic()
    assert await closed(reader, KEEP_ALIVE + GRACE)
    assert time.monotonic() - t0 >= KEEP_ALIVE - 1  # the keep-alive timeout, not the request one
    writer.close()
