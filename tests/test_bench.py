"""The benchmark harness: its load generator, mix reader, result file, renderer, and
`archipel bench` end to end on the shop (a smoke run: nothing here is judged on speed)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from archipel._bench import procs, render, result
from archipel._bench.load import closed_loop, open_loop, percentile
from archipel._bench.mix import Let, MixError, Request, from_calls_file, from_locustfile

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "examples" / "boutique" / "locustfile.py"
SERVICE_MS = 50


@pytest.fixture
async def one_at_a_time() -> AsyncIterator[str]:
    """A server that answers one request at a time, each in SERVICE_MS: 20 per second at most."""
    lock = asyncio.Lock()

    async def slow(request: web.Request) -> web.Response:
        async with lock:
            await asyncio.sleep(SERVICE_MS / 1000)
        return web.Response(text="ok")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get("/", slow)
    app.router.add_get("/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _mix(tmp_path: Path, path: str = "/") -> object:
    calls = tmp_path / "calls.toml"
    calls.write_text(f'[[calls]]\nmethod = "GET"\npath = "{path}"\n')
    return from_calls_file(calls)


@pytest.mark.timeout(60)
async def test_open_loop_latency_includes_the_queue(one_at_a_time: str, tmp_path: Path) -> None:
    mix = _mix(tmp_path)
    # Twice what the server can serve for 1 s: calls queue, and their latency, counted from the
    # scheduled start, grows with the queue; a closed loop of one user never sees it.
    queued = await open_loop(one_at_a_time, mix, rate=40, duration=1.0)  # type: ignore[arg-type]
    alone = await closed_loop(one_at_a_time, mix, users=1, duration=0.5)  # type: ignore[arg-type]
    assert queued.errors == 0 and queued.calls == 40 and len(queued.latencies_ms) == 40
    assert queued.requests == 40
    worst_alone = max(alone.latencies_ms)
    assert min(alone.latencies_ms) >= SERVICE_MS * 0.9
    # The 40th call was scheduled at 0.975 s and served after ~40 x 50 ms = 2 s.
    assert max(queued.latencies_ms) > 10 * SERVICE_MS > worst_alone
    assert (percentile(queued.latencies_ms, 0.99) or 0) > 4 * (percentile(queued.latencies_ms, 0.5) or 0) / 3


@pytest.mark.timeout(60)
async def test_failed_requests_are_errors_not_latencies(one_at_a_time: str, tmp_path: Path) -> None:
    outcome = await open_loop(one_at_a_time, _mix(tmp_path, "/broken"), rate=20, duration=0.5)  # type: ignore[arg-type]
    assert outcome.errors == 10 and not outcome.latencies_ms
    assert list(outcome.error_kinds) == ["GET /broken: HTTP 500"]
    assert percentile([], 0.5) is None and outcome.throughput is None


def test_the_shops_locustfile_is_read_as_its_mix() -> None:
    mix = from_locustfile(LOCUSTFILE)
    weights = {call.name: call.weight for call in mix.calls}
    assert weights == {
        "index": 1, "set_currency": 2, "browse_product": 10, "add_to_cart": 2, "view_cart": 3, "checkout": 1,
    }  # fmt: skip
    checkout = next(call for call in mix.calls if call.name == "checkout")
    # add_to_cart inline, the basket page read for its order id, then the order.
    assert [(s.method, s.path) for s in checkout.steps if isinstance(s, Request)] == [
        ("GET", "f'/product/{product}'"),
        ("POST", "'/basket/add'"),
        ("GET", "'/basket'"),
        ("POST", "'/order'"),
    ]
    assert any(isinstance(s, Let) and s.name == "found" for s in checkout.steps)
    assert "CURRENCIES" in mix.constants and "ORDER_ID_FIELD" in mix.constants


def test_a_mix_it_cannot_read_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(MixError, match="not found"):
        from_locustfile(tmp_path / "missing.py")
    loops = tmp_path / "locustfile.py"
    loops.write_text(
        "from locust import HttpUser, task\n"
        "class U(HttpUser):\n"
        "    @task(3)\n"
        "    def many(self):\n"
        "        for i in range(3):\n"
        "            self.client.get('/')\n"
    )
    with pytest.raises(MixError, match=r"locustfile.py:5: unsupported in a task: for i in range\(3\)"):
        from_locustfile(loops)
    bad = tmp_path / "calls.json"
    bad.write_text(json.dumps({"calls": [{"weight": 2}]}))
    with pytest.raises(MixError, match="call 1: every step needs a 'path'"):
        from_calls_file(bad)


def _sample() -> result.Result:
    the_result = result.new_result("sample", {"rates": [10, 20]})
    for placement, base in (("monolith", 2.0), ("microservices", 5.0)):
        for rate in (10, 20):
            name = f"{placement} {rate}/s"
            the_result.rows.append(
                result.Row(
                    name,
                    p50_ms=base,
                    p99_ms=base * 3,
                    throughput=rate,
                    cpu_s_per_1000=base / 2,
                    rss_mb=50.0,
                    startup_s=1.0,
                    extra={"placement": placement, "load": f"{rate}/s", "offered_rate": rate},
                )
            )
            the_result.samples[name] = [base, base * 3]
    the_result.rows.append(
        result.Row.failed("mixed 10/s", "archipel run exited with 2: boom", placement="mixed")
    )
    return the_result


def test_the_result_file_round_trips_in_its_schema(tmp_path: Path) -> None:
    written = result.write(_sample(), tmp_path / "r.json")
    raw = json.loads(written.read_text())
    assert set(raw) == {"scenario", "started", "machine", "versions", "parameters", "rows", "samples"}
    assert set(raw["machine"]) == {"cpus", "model", "python", "platform"}
    assert list(raw["rows"][0]) == [
        "name", "p50_ms", "p99_ms", "throughput", "cpu_s_per_1000", "rss_mb", "startup_s",
        "errors", "failure", "extra",
    ]  # fmt: skip
    failed = raw["rows"][-1]
    assert failed["failure"] == "archipel run exited with 2: boom" and failed["p50_ms"] is None
    assert failed["errors"] == 0 and failed["throughput"] is None
    assert result.read(written) == _sample_with(raw["started"])
    assert raw["versions"]["archipel"]


def _sample_with(started: str) -> result.Result:
    sample = _sample()
    sample.started = started
    return sample


def test_the_renderer_writes_the_table_the_ratios_and_the_plots(tmp_path: Path) -> None:
    path = result.write(_sample(), tmp_path / "r.json")
    files = render.render(result.read(path), path, baseline="monolith")
    assert sorted(f.name for f in files) == ["r.md", "r.png", "r.svg"]
    table = (tmp_path / "r.md").read_text()
    assert "| monolith 10/s | 2.00 | 6.00 | 10 | 1.000 | 50 | 1.00 | 0 |" in table
    assert "| mixed 10/s | failed: archipel run exited with 2: boom |" in table
    assert "| microservices 20/s | 2.50x | 2.50x | 1.00x | 2.50x | 1.00x |" in table
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")
    assert "<svg" in (tmp_path / "r.svg").read_text()


def test_cpu_and_memory_are_read_from_proc() -> None:
    me = {"me": os.getpid()}
    assert procs.cpu_of(me)["me"] > 0 and procs.rss_of(me)["me"] > 1
    assert procs.cpu_seconds(2**22 + 12345) is None and procs.peak_rss_mb(2**22 + 12345) is None


def _bench(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archipel", "bench", "examples/boutique/boutique/app.py:app", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip


@pytest.mark.timeout(100)
def test_archipel_bench_quick_runs_the_shop_in_each_placement(tmp_path: Path) -> None:
    done = _bench("--quick", "--placement", "edge=frontend+catalog+currency", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    (json_file,) = tmp_path.glob("bench-boutique-*.json")
    assert {p.suffix for p in tmp_path.iterdir()} == {".json", ".md", ".png", ".svg"}
    the_result = result.read(json_file)
    placements = ["monolith", "microservices", "edge"]
    assert [r.name for r in the_result.rows] == [
        f"{p} {load}" for p in placements for load in ("10/s", "20/s", "4 users")
    ]
    for row in the_result.rows:
        assert row.failure is None, row.failure
        assert row.extra["completed"] > 0 and row.p50_ms is not None and row.cpu_s_per_1000 is not None
        assert row.rss_mb is not None and row.startup_s is not None
    assert the_result.row("monolith 10/s").extra["processes"] == 1
    assert the_result.row("microservices 10/s").extra["processes"] == 11  # ten services and the broker
    assert the_result.row("edge 10/s").extra["processes"] == 9
    assert "| monolith 10/s |" in done.stdout and "Ratios to monolith" in done.stdout


def test_archipel_bench_names_what_it_cannot_use(tmp_path: Path) -> None:
    done = _bench("--placement", "x=frontend+nope", "--out", str(tmp_path))
    assert done.returncode == 2 and "nope is not a service of 'boutique'" in done.stderr
    done = _bench("--mix", str(tmp_path / "missing.py"), "--out", str(tmp_path))
    assert done.returncode == 2 and "missing.py not found" in done.stderr
    assert not list(tmp_path.iterdir())
