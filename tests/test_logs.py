"""Log lines: their formats and what they carry, from a real worker process; the files `archipel
run` keeps, and `archipel logs` reading and following them; the commands of docs/observability.md."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from archipel._context import set_traceparent
from archipel._deploy.children import free_port
from archipel._deploy.log_files import Follower, RotatingLog, interleave, line_time, stamped, tail
from archipel._telemetry.logs import CHATTY, LogSettings, configure_logging

from .test_cli import ROOT, archipel, wait_for_status

DIARY = str(ROOT / "tests" / "apps" / "diary.py")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


class Lines:
    """A process's output, line by line, read by a thread so waiting on it is bounded."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, wanted: Callable[[str], bool], timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError("the process ended first:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if wanted(line):
                return line
        raise AssertionError(f"no such line within {timeout}s:\n" + "\n".join(self.seen))

    def rest(self, timeout: float = 20) -> str:
        """Everything until the process ends (it must end by itself)."""
        self.process.wait(timeout=timeout)
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return "\n".join(self.seen)


@contextmanager
def worker(**variables: str) -> Iterator[tuple[str, Lines]]:
    """``python -m archipel.worker`` hosting the diary as process "journal", replica 2."""
    port = free_port()
    env = {
        **os.environ,
        "ARCHIPEL_APP": DIARY,
        "ARCHIPEL_PROCESS": "journal",
        "ARCHIPEL_SERVICES": "diary",
        "ARCHIPEL_HOST": "127.0.0.1",
        "ARCHIPEL_PORT": str(port),
        "ARCHIPEL_REPLICA": "2",
        **variables,
    }
    for name in ("ARCHIPEL_LOG_FORMAT", "ARCHIPEL_LOG_LEVEL", "ARCHIPEL_LOG_QUIET"):
        if name not in variables:
            env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "archipel.worker"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = Lines(process)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        yield url, lines
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_ready(url: str, process: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the worker exited"
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)  # polling the port while the worker boots
    raise AssertionError(f"{url} was not ready within {timeout}s")


def call(url: str, method: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(
        f"{url}/diary/{method}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


# --- Formats, from a real worker --------------------------------------------------------------


def test_json_lines_carry_the_process_and_the_callers_trace() -> None:
    with worker(ARCHIPEL_LOG_FORMAT="json") as (url, lines):
        call(url, "note", {"text": "hello"}, {"traceparent": TRACEPARENT})
        noted = json.loads(lines.wait_for(lambda line: "noted hello" in line))
        call(url, "fail", {"text": "oops"})
        failed = json.loads(lines.wait_for(lambda line: "could not note oops" in line))
    assert noted == {
        "time": noted["time"],
        "level": "INFO",
        "logger": "diary",
        "message": "noted hello",
        "service": "diary",
        "process": "journal",
        "replica": 2,
        "trace_id": TRACE_ID,
        "span_id": noted["span_id"],
    }
    # The span being handled: the caller's, or the server span tracing makes its child.
    assert re.fullmatch(r"[0-9a-f]{16}", noted["span_id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", noted["time"])
    assert abs(datetime.fromisoformat(noted["time"]).timestamp() - time.time()) < 60
    # A call without a traceparent gets a new trace; its traceback stays inside the one line.
    assert failed["level"] == "ERROR" and re.fullmatch(r"[0-9a-f]{32}", failed["trace_id"])
    assert failed["trace_id"] != TRACE_ID
    assert "Traceback" in failed["exc"] and failed["exc"].endswith("RuntimeError: oops")


def test_text_lines_show_the_replica_and_the_short_trace_id() -> None:
    with worker() as (url, lines):
        call(url, "note", {"text": "hello"}, {"traceparent": TRACEPARENT})
        line = lines.wait_for(lambda line: "noted hello" in line)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO    journal#2 diary: noted hello trace=4bf92f35", line
    ), line


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging in this process, undone afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_json_lines_outside_any_call_have_null_ids(root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(format="json"), process="p", services=["a", "b"], stream=stream)

    def in_a_call() -> None:
        set_traceparent(TRACEPARENT)
        logging.getLogger("t").info("inside")

    contextvars.copy_context().run(in_a_call)
    contextvars.Context().run(logging.getLogger("t").warning, "outside")  # an empty context
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["service"] == "a,b" and (inside["trace_id"], inside["span_id"]) == (TRACE_ID, SPAN_ID)
    assert outside["trace_id"] is None and outside["span_id"] is None and "exc" not in outside


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("ARCHIPEL_LOG_FORMAT", "xml", "ARCHIPEL_LOG_FORMAT='xml': expected one of text, json"),
        ("ARCHIPEL_LOG_LEVEL", "loud", "ARCHIPEL_LOG_LEVEL='loud': expected one of DEBUG, INFO"),
    ],
)
def test_a_bad_logging_variable_stops_the_worker_naming_it(variable: str, value: str, named: str) -> None:
    env = {**os.environ, "ARCHIPEL_APP": DIARY, "ARCHIPEL_PROCESS": "diary", variable: value}
    result = subprocess.run(
        [sys.executable, "-m", "archipel.worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and named in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("variables", "routine"),
    [({}, False), ({"ARCHIPEL_LOG_QUIET": "0"}, True), ({"ARCHIPEL_LOG_LEVEL": "DEBUG"}, True)],
)
def test_the_mqtt_clients_routine_lines_are_quiet_by_default(
    variables: dict[str, str], routine: bool
) -> None:
    with worker(**variables) as (url, lines):
        call(url, "chatter", {"text": "x"})
        # Both come from one call, the routine one first: once the problem is shown, the routine
        # line was shown before it or not at all.
        lines.wait_for(lambda line: "archipel.mqtt: problem x" in line)
    assert any("archipel.mqtt: routine x" in line for line in lines.seen) is routine
    assert not any("Uvicorn running" in line for line in lines.seen) or routine


# --- The files, and reading them ----------------------------------------------------------------


def test_log_files_rotate_by_size_and_a_follower_reads_across_the_rotation(tmp_path: Path) -> None:
    path = tmp_path / "p-0.log"
    log = RotatingLog(path, max_bytes=100, backups=2)  # three 32-byte lines a file

    def write(*numbers: int) -> None:
        for n in numbers:
            log.write(f"2026-11-30T07:40:{n:02d}.000Z line {n}\n".encode())

    def numbers(lines: list[bytes]) -> list[int]:
        return [int(line.split()[-1]) for line in lines]

    follower = Follower(path)
    assert follower.open_at_end() is None  # no file yet: it will start at the first line
    write(0, 1)
    assert numbers(follower.read()) == [0, 1]
    write(2, 3, 4, 5)  # 3 begins a new file
    assert numbers(follower.read()) == [2, 3, 4, 5]  # the end of the old one, then the new one
    write(6)
    assert numbers(follower.read()) == [6]
    write(*range(7, 15))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["p-0.log", "p-0.log.1", "p-0.log.2"]  # the oldest is gone
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    assert numbers(tail(path, 5)) == [10, 11, 12, 13, 14]  # through the rotated file
    assert numbers(follower.read()) == [7, 8, 12, 13, 14]  # what was rotated twice meanwhile is skipped
    follower.close()
    log.close()


def test_replicas_interleave_by_time_and_tracebacks_stay_under_their_line() -> None:
    first = [b"2026-11-30T07:40:01.000Z INFO a", b"Traceback:", b"2026-11-30T07:40:04.000Z INFO c"]
    second = [b'{"time":"2026-11-30T07:40:02.500000Z","message":"b"}', b"2026-11-30T07:40:05.000Z d"]
    merged = [entry[3] for entry in interleave([stamped(0, "p", first), stamped(1, "p#1", second)])]
    assert merged == [
        first[0].decode(),
        "Traceback:",
        second[0].decode(),
        first[2].decode(),
        second[1].decode(),
    ]


# --- archipel run, then archipel logs ---------------------------------------------------------


def test_archipel_logs_prints_follows_and_names_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "archipel.toml").write_text(f'app = "{DIARY}"\nmode = "monolith"\n[replicas]\nmonolith = 2\n')
    state = tmp_path / "state"
    where = ["--port", "0", "--state-dir", str(state)]
    runner = subprocess.Popen(
        [sys.executable, "-m", "archipel", "run", "--config", str(tmp_path / "archipel.toml"), *where],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    follower: subprocess.Popen[str] | None = None
    try:
        status = wait_for_status(state, runner)
        urls = {p["replica"]: p["url"] for p in status["processes"]}
        call(urls[0], "note", {"text": "first"})
        call(urls[1], "note", {"text": "second"})
        call(urls[0], "note", {"text": "third"}, {"traceparent": TRACEPARENT})
        logs = archipel("logs", "diary", "-n", "3", "--state-dir", str(state))
        assert logs.returncode == 0, logs.stderr
        shown = logs.stdout.splitlines()
        # Interleaved by time: the stamps are to the millisecond, and two calls can share one, so
        # the order is checked by stamp, and who wrote each note by its line.
        times = [line_time(line.split("| ", 1)[1]) for line in shown]
        assert None not in times and times == sorted(times), shown
        written = {line.rsplit("noted ", 1)[1].split()[0]: line for line in shown}
        replicas = {note: line.split("| ", 1)[0].strip() for note, line in written.items()}
        assert replicas == {"first": "monolith", "second": "monolith#1", "third": "monolith"}
        assert written["third"].endswith("trace=4bf92f35")
        one = archipel("logs", "diary", "--replica", "1", "--json", "--state-dir", str(state))
        assert [json.loads(line)["replica"] for line in one.stdout.splitlines()] == [1]
        assert "noted second" in one.stdout

        # --follow: the last line first (it has started), then a line logged afterwards, then
        # one logged by the replica restarted after a SIGKILL.
        follower = subprocess.Popen(
            [sys.executable, "-m", "archipel", "logs", "diary", "-f", "-n", "1", "--state-dir", str(state)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        followed = Lines(follower)
        followed.wait_for(lambda line: "noted third" in line)
        call(urls[1], "note", {"text": "fourth"})
        assert followed.wait_for(lambda line: "noted fourth" in line).startswith("    monolith#1 |")
        os.kill(status["processes"][0]["pid"], signal.SIGKILL)
        _wait_restarted(state, runner)
        call(urls[0], "note", {"text": "after the restart"})
        followed.wait_for(lambda line: "noted after the restart" in line)
        files = sorted(p.name for p in (state / "logs").iterdir())
        assert files == ["monolith-0.log", "monolith-1.log"]

        unknown = archipel("logs", "nosuch", "--state-dir", str(state))
        assert unknown.returncode == 2
        assert "diary has no service 'nosuch'; its services: diary" in unknown.stderr
        no_replica = archipel("logs", "diary", "--replica", "5", "--state-dir", str(state))
        assert no_replica.returncode == 2 and "its replicas: 0, 1" in no_replica.stderr
    finally:
        if follower is not None:
            follower.terminate()
            follower.wait(timeout=10)
        if runner.poll() is None:
            runner.send_signal(signal.SIGINT)
        runner.communicate(timeout=60)
    nothing = archipel("logs", "diary", "--state-dir", str(state))
    assert nothing.returncode == 1 and "no running deployment" in nothing.stderr


def _wait_restarted(state: Path, runner: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = wait_for_status(state, runner)
        replica = status["processes"][0]
        if replica["restarts"] == 1 and replica["health"] == "ready" and replica["alive"]:
            return
        time.sleep(0.1)  # polling the state file the supervisor rewrites on every change
    raise AssertionError("the killed replica was not restarted")


# --- docs/observability.md, command by command -------------------------------------------------


def documented_commands() -> list[list[str]]:
    section = (ROOT / "docs" / "observability.md").read_text().split("## Logs", 1)[1]
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", section, re.S | re.M)
    block = next(text for language, text in blocks if not language and "archipel logs" in text)
    return [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.strip()]


def test_the_documented_commands_run(tmp_path: Path) -> None:
    commands = documented_commands()
    run, *reads = commands
    assert run[:2] == ["archipel", "run"] and [c[:3] for c in reads] == [["archipel", "logs", "greeter"]] * 3
    state = tmp_path / "state"
    runner = subprocess.Popen(
        [sys.executable, "-m", "archipel", *run[1:], "--port", "0", "--state-dir", str(state)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # DEBUG: greeter says when it first finds names ready (a start-up detail, quiet at INFO).
        env={**os.environ, "ARCHIPEL_LOG_LEVEL": "DEBUG"},
    )
    follower: subprocess.Popen[str] | None = None
    try:
        status = wait_for_status(state, runner, timeout=90)
        names = next(p for p in status["processes"] if p["name"] == "names")
        # Only a replica that was in greeter's rotation can be said to leave it.
        in_rotation = f"replica {names['url']} is ready: in rotation"
        deadline = time.monotonic() + 30
        while in_rotation not in archipel("logs", "greeter", "-n", "2000", "--state-dir", str(state)).stdout:
            assert time.monotonic() < deadline, f"greeter never found names ready ({in_rotation!r})"
            time.sleep(0.2)  # polling greeter's log for its first good probe of names
        last, follow, one = ([*command[1:], "--state-dir", str(state)] for command in reads)
        assert "--follow" in follow and "--json" in one
        follower = subprocess.Popen(
            [sys.executable, "-m", "archipel", *follow],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        followed = Lines(follower)
        # What greeter logs on its own: its peer names freezes, and greeter's probes notice. (A
        # killed names is restarted within a probe interval: greeter may never see it gone.)
        os.kill(names["pid"], signal.SIGSTOP)
        try:
            line = followed.wait_for(lambda line: "out of rotation" in line, timeout=30)
        finally:
            os.kill(names["pid"], signal.SIGCONT)
        record = json.loads(line.split(" | ", 1)[1])  # --log-format json: every process logs JSON
        assert record["process"] == "greeter" and record["logger"] == "archipel.membership"
        shown = archipel(*last)
        assert shown.returncode == 0 and "out of rotation" in shown.stdout, shown.stderr
        as_json = archipel(*one)
        assert as_json.returncode == 0, as_json.stderr
        records = [json.loads(line) for line in as_json.stdout.splitlines()]
        assert records and all(r["process"] == "greeter" and r["replica"] == 0 for r in records)
    finally:
        if follower is not None:
            follower.terminate()
            follower.wait(timeout=10)
        if runner.poll() is None:
            runner.send_signal(signal.SIGINT)
        runner.communicate(timeout=60)


def test_the_logging_benchmark_runs_and_prints_its_table() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "logs.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "| archipel json |" in result.stdout and "ratio to stdlib" in result.stdout
