"""``archipel logs SERVICE``: the lines of the process that hosts SERVICE in the running
deployment, from the files its supervisor writes (``_deploy.log_files``), replicas interleaved
by time; ``--follow`` keeps printing, across rotations and restarts, until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from .loading import fail
from .log_files import Entry, Follower, interleave, log_path, stamped, tail
from .statefile import pid_alive, read_state

STATE_FILE = "state.json"  # as `archipel run` writes it in its state directory
POLL = 0.2  # seconds between looks at the files while following
RESCAN = 1.0  # seconds between looks at the state file for new replicas (scale, rollout)


class Source(msgspec.Struct, frozen=True):
    process: str
    replica: int
    services: tuple[str, ...]

    @property
    def label(self) -> str:  # as `archipel run` prefixes the lines it echoes
        return self.process if not self.replica else f"{self.process}#{self.replica}"


Show = Callable[[Entry, Source], None]


def logs(
    service: Annotated[str, typer.Argument(help="a service of the running deployment (or a process)")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="how many lines to print first")] = 20,
    replica: Annotated[int | None, typer.Option(help="only this replica's lines")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object a line (lines not logged as JSON wrapped)")
    ] = False,
    state_dir: Annotated[Path, typer.Option(help="Where the running deployment keeps its state.")] = Path(
        ".archipel"
    ),
) -> None:
    """Print the last lines of SERVICE's process, every replica interleaved by time and prefixed
    with its name; with --follow, keep printing new ones until Ctrl-C."""
    sources = find_sources(state_dir, service, replica)
    log_dir = state_dir / "logs"
    show = _printer(as_json)
    followers = {source: Follower(log_path(log_dir, source.process, source.replica)) for source in sources}
    # Where each file ends now: the tail stops there and following starts there, so no line
    # written in between is shown twice or lost.
    ends = {source: follower.open_at_end() for source, follower in followers.items()}
    recent = [
        stamped(index, source.label, tail(follower.path, lines, ends[source]) if ends[source] else [])
        for index, (source, follower) in enumerate(followers.items())
    ]
    try:
        for entry in list(interleave(recent))[-lines:] if lines else []:
            show(entry, sources[entry[1]])
        if follow:
            since = {source: _last_key(entries) for source, entries in zip(sources, recent, strict=True)}
            _follow(state_dir, service, replica, followers, show, since)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # piped into `head`: stop quietly (Python flushes stdout at exit)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        for follower in followers.values():
            follower.close()


def find_sources(state_dir: Path, service: str, replica: int | None = None) -> list[Source]:
    """The replicas whose lines ``archipel logs SERVICE`` prints; exits with a clear error when
    nothing runs, SERVICE is not the app's, or it has no such replica."""
    state = read_state(state_dir / STATE_FILE)
    if state is None or not pid_alive(state.get("supervisor_pid"), state.get("supervisor_started")):
        fail(f"no running deployment: no live `archipel run` keeps its state in {state_dir}", 1)
    processes: list[dict[str, Any]] = state.get("processes", [])
    hosting = [p for p in processes if service in p["services"] or service == p["name"]]
    if not hosting:
        services = sorted({s for p in processes for s in p["services"]})
        fail(f"{state.get('app')} has no service {service!r}; its services: {', '.join(services)}")
    if replica is not None:
        chosen = [p for p in hosting if p["replica"] == replica]
        if not chosen:
            replicas = ", ".join(str(p["replica"]) for p in hosting)
            fail(f"{hosting[0]['name']} has no replica {replica}; its replicas: {replicas}")
        hosting = chosen
    return [Source(p["name"], p["replica"], tuple(p["services"])) for p in hosting]


def _follow(
    state_dir: Path,
    service: str,
    replica: int | None,
    followers: dict[Source, Follower],
    show: Show,
    since: dict[Source, str],
) -> None:
    sources = list(followers)
    rescan = time.monotonic() + RESCAN
    while True:
        fresh = [
            stamped(index, source.label, followers[source].read(), since.get(source, ""))
            for index, source in enumerate(sources)
        ]
        for source, entries in zip(sources, fresh, strict=True):
            since[source] = _last_key(entries) or since.get(source, "")
        for entry in interleave(fresh):
            show(entry, sources[entry[1]])
        if time.monotonic() >= rescan:  # a replica added since (scale, rollout): follow it too
            rescan = time.monotonic() + RESCAN
            with contextlib.suppress(typer.Exit):  # the deployment stopped: keep the files we have
                for source in find_sources(state_dir, service, replica):
                    if source not in followers:
                        followers[source] = Follower(
                            log_path(state_dir / "logs", source.process, source.replica)
                        )
                        sources.append(source)
        time.sleep(POLL)


def _last_key(entries: Iterable[Entry]) -> str:
    key = ""
    for entry in entries:
        key = entry[0]
    return key


def _printer(as_json: bool) -> Show:
    encode = msgspec.json.encode

    def text(entry: Entry, source: Source) -> None:
        print(f"{entry[2]:>14} | {entry[3]}", flush=True)

    def json_line(entry: Entry, source: Source) -> None:
        line = entry[3]
        if not line.startswith("{"):  # not logged as JSON: a text line, or something printed
            line = encode(
                {
                    "time": _rfc3339(entry[0]),
                    "service": ",".join(source.services),
                    "process": source.process,
                    "replica": source.replica,
                    "message": line,
                }
            ).decode()
        print(line, flush=True)

    return json_line if as_json else text


def _rfc3339(key: str) -> str | None:
    return f"{key}Z" if key else None
