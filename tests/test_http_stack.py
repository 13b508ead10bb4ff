"""The HTTP stack every process serves with (``archipel._deploy.worker.uvicorn_config``: uvicorn's
httptools protocol with ``_rpc.limits``), with raw sockets against a real server on
127.0.0.1, for what tests/test_fuzz_http.py does not already prove on it:

- a head over the limit is refused (431) however it arrives: here in small pieces;
- a head or a body that does not arrive within the request timeout is cut off (408), and a
  request that did is answered however long the app takes;
- pipelined requests are each answered, in order, and a head after a large pipelined body is not
  counted with that body;
- a malformed request after one being answered lets that answer out, then closes the connection;

and that benchmarks/http_stack.py runs and writes its result file.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from archipel._bench.result import read
from archipel._deploy.worker import uvicorn_config

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
LOOPS = ("asyncio", "uvloop")
REQUEST_TIMEOUT = 1.0  # short here: the deadline itself is under test
MAX_HEADER_BYTES = 4096
GRACE = 2.0  # scheduling slack on a busy 2-core machine
Message = MutableMapping[str, Any]


async def echo(
    scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    """Answers with the request's body; ``/slow`` after a second of its own time."""
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["path"] == "/slow":
        await asyncio.sleep(REQUEST_TIMEOUT + 0.5)  # the app's own time, longer than the request timeout
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int]]:
    config = uvicorn_config(
        echo,  # type: ignore[arg-type]
        "127.0.0.1",
        0,
        request_timeout=REQUEST_TIMEOUT,
        max_header_bytes=MAX_HEADER_BYTES,
    )
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve())
    async with asyncio.timeout(30):
        while not running.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)  # uvicorn exposes no start-up event to await
    port = running.servers[0].sockets[0].getsockname()[1]
    try:
        yield "127.0.0.1", port
    finally:
        running.should_exit = True
        await task


def request(body: bytes = b"{}", path: str = "/echo", extra: bytes = b"") -> bytes:
    head = b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: %d\r\n" % (path.encode(), len(body))
    return head + extra + b"\r\n" + body


async def response(reader: asyncio.StreamReader, within: float = 5.0) -> tuple[int, bytes]:
    async with asyncio.timeout(within):
        status_line = await reader.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await reader.readexactly(length)


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def test_the_worker_serves_httptools_with_the_limits() -> None:
    config = uvicorn_config(echo, "127.0.0.1", 0)  # type: ignore[arg-type]
    assert isinstance(config.http, type) and issubclass(config.http, HttpToolsProtocol)
    assert config.http.__name__ == "LimitedHttpTools"


async def test_a_head_arriving_in_pieces_is_refused_past_the_limit(server: tuple[str, int]) -> None:
    # A head that never ends, a little over the limit: only the bytes received can refuse it.
    reader, writer = await asyncio.open_connection(*server)
    lines = (b"x-h%d: %s\r\n" % (i, b"v" * 60) for i in range(MAX_HEADER_BYTES // 70 + 4))
    head = b"POST /echo HTTP/1.1\r\nhost: 127.0.0.1\r\n" + b"".join(lines)
    assert MAX_HEADER_BYTES < len(head) < MAX_HEADER_BYTES + 1024
    for start in range(0, len(head), 256):
        writer.write(head[start : start + 256])
        await writer.drain()
        await asyncio.sleep(0.005)  # pieces, not one segment: what is under test
    status, body = await response(reader, within=REQUEST_TIMEOUT / 2)  # not the request timeout's 408
    assert status == 431 and json.loads(body)["error"]["kind"] == "headers_too_large"
    assert await closed(reader, GRACE)
    writer.close()


async def test_a_head_within_the_limit_is_answered_however_it_arrives(server: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*server)
    whole = request(b'{"a":1}', extra=b"x-pad: " + b"p" * (MAX_HEADER_BYTES - 200) + b"\r\n")
    for start in range(0, len(whole), 512):
        writer.write(whole[start : start + 512])
        await writer.drain()
        await asyncio.sleep(0.005)  # pieces, as above
    assert await response(reader) == (200, b'{"a":1}')
    writer.close()


@pytest.mark.parametrize("part", ["head", "body"])
async def test_a_request_that_does_not_arrive_whole_in_time_is_cut_off(
    server: tuple[str, int], part: str
) -> None:
    reader, writer = await asyncio.open_connection(*server)
    started = time.monotonic()
    whole = request(b'{"never": "whole"}')
    writer.write(whole[:20] if part == "head" else whole[:-5])  # the rest never comes
    received = b""
    async with asyncio.timeout(REQUEST_TIMEOUT + 10):
        while chunk := await reader.read(65536):
            received += chunk
    assert REQUEST_TIMEOUT - 0.1 <= time.monotonic() - started <= REQUEST_TIMEOUT + GRACE
    assert received.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in received, received[:80]
    writer.close()


async def test_the_apps_own_time_is_not_cut_off(server: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*server)
    writer.write(request(b"slow", path="/slow"))
    assert await response(reader, within=REQUEST_TIMEOUT + 10) == (200, b"slow")
    writer.close()


async def test_pipelined_requests_are_each_answered_in_order(server: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*server)
    large = b"b" * (4 * MAX_HEADER_BYTES)  # larger than a head may be, then a head: not counted together
    padded = request(b"three", extra=b"x-pad: " + b"p" * 3000 + b"\r\n")
    writer.write(request(b"one") + request(large) + padded)
    assert await response(reader) == (200, b"one")
    assert await response(reader) == (200, large)
    assert await response(reader) == (200, b"three")
    writer.close()


async def test_a_malformed_request_after_one_in_progress_lets_its_answer_out(server: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*server)
    writer.write(request(b"first", path="/slow") + b"NOT HTTP AT ALL\r\n\r\n")
    assert await response(reader, within=REQUEST_TIMEOUT + 10) == (200, b"first")
    assert await closed(reader, GRACE)
    writer.close()
    reader, writer = await asyncio.open_connection(*server)  # and alone: a 400 in the JSON shape
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    status, body = await response(reader)
    assert status == 400 and json.loads(body)["error"]["kind"] == "bad_request"
    writer.close()


@pytest.mark.timeout(180)
def test_the_benchmark_runs_and_writes_its_result_file(tmp_path: Path) -> None:
    # The smoke run benchmarks/README.md shows.
    out = tmp_path / "http_stack.json"
    command = [sys.executable, "benchmarks/http_stack.py", "--quick", "--out", str(out)]
    command += ["--only", "uvicorn h11+limits", "--only", "uvicorn httptools+limits"]
    rows = [
        f"{stack} {loop}" for stack in ("uvicorn h11+limits", "uvicorn httptools+limits") for loop in LOOPS
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| uvicorn httptools+limits | asyncio |" in done.stdout, done.stdout
    result = read(out)
    assert [row.name for row in result.rows] == rows
    for row in result.rows:
        assert row.failure is None and row.errors == 0, row
        assert row.throughput and row.cpu_s_per_1000 and row.p50_ms and row.rss_mb
        assert len(result.samples[row.name]) == result.parameters["calls"]
