"""Coalescing (``@rpc(batch=...)``): concurrent remote calls of a method travel as calls of its
batch method, over real HTTP to a real server on 127.0.0.1; a local call stays a plain call."""

from __future__ import annotations

import asyncio
import importlib
import math
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from archipel import App, DefinitionError, InvalidArgument, RemoteError, Service, _context, rpc
from archipel._interceptors import default_interceptors
from archipel._model import describe
from archipel._rpc.client import HttpTransport
from archipel.testing import RunningApp, run_app

from .conftest import eventually

MAX_BATCH = 4


class Prices(Service):
    """Counts the requests it serves, one entry per request: (method, items)."""

    def __init__(self) -> None:
        self.served: list[tuple[str, int]] = []
        self.gate = asyncio.Event()  # factor 7 waits for it: a batch held in flight

    @rpc(idempotent=True, public=True)
    async def scale_all(self, values: list[int], factor: int = 2) -> list[int]:
        self.served.append(("scale_all", len(values)))
        if factor < 0:
            raise InvalidArgument(f"factor {factor} is negative")
        if factor == 7:
            await self.gate.wait()
        if factor == 99:
            return values[:-1]  # one answer short: a broken batch method
        return [v * factor for v in values]

    @rpc(idempotent=True, public=True, batch="scale_all", max_batch=MAX_BATCH)
    async def scale(self, value: int, factor: int = 2) -> int:
        self.served.append(("scale", 1))
        if factor < 0:
            raise InvalidArgument(f"factor {factor} is negative")
        return value * factor

    @rpc(public=True)
    async def remaining_all(self, tags: list[str]) -> list[float]:
        left = _context.remaining_seconds()
        assert left is not None
        return [left for _ in tags]

    @rpc(public=True, batch="remaining_all")
    async def remaining(self, tag: str) -> float:
        left = _context.remaining_seconds()
        assert left is not None
        return left

    @rpc(idempotent=True)
    async def requests(self) -> list[str]:
        return [method for method, _ in self.served]


class Page(Service):
    prices: Prices

    @rpc(public=True)
    async def page(self, count: int) -> list[int]:
        return list(await asyncio.gather(*(self.prices.scale(i, 3) for i in range(count))))


app = App("coalesce", [Prices, Page])


@pytest.fixture
async def served() -> AsyncIterator[tuple[RunningApp, Any, Prices]]:
    """The app served on 127.0.0.1, and a remote proxy of Prices as a dependent service gets it."""
    async with run_app(app, "monolith") as running:
        transport = HttpTransport({"prices": [running.url_of("prices")]})
        await transport.start()
        try:
            interceptors = default_interceptors(app, endpoints=transport.endpoints)
            proxy = transport.proxy(describe(Prices), caller="page", interceptors=interceptors)
            yield running, proxy, running.instance(Prices)
        finally:
            await transport.close()


@pytest.mark.parametrize("count", [1, 2, 4, 9, 10])
async def test_concurrent_calls_become_one_request_per_max_batch(
    served: tuple[RunningApp, Any, Prices], count: int
) -> None:
    _, prices, instance = served
    answers = await asyncio.gather(*(prices.scale(i, 3) for i in range(count)))
    assert answers == [3 * i for i in range(count)]
    assert len(instance.served) == math.ceil(count / MAX_BATCH)
    # Chunks of max_batch; a caller alone in its chunk makes the plain call.
    expected = [("scale_all", MAX_BATCH)] * (count // MAX_BATCH)
    rest = count % MAX_BATCH
    expected += [] if rest == 0 else [("scale", 1)] if rest == 1 else [("scale_all", rest)]
    assert instance.served == expected


async def test_sequential_calls_stay_single_calls(served: tuple[RunningApp, Any, Prices]) -> None:
    _, prices, instance = served
    assert [await prices.scale(i) for i in range(3)] == [0, 2, 4]  # the default factor, 2
    assert instance.served == [("scale", 1)] * 3


async def test_only_calls_with_equal_other_arguments_share_a_batch(
    served: tuple[RunningApp, Any, Prices],
) -> None:
    _, prices, instance = served
    calls = [
        prices.scale(1, 2),
        prices.scale(2, 3),
        prices.scale(3, 2),
        prices.scale(4, 3),
        prices.scale(5, 5),
    ]
    assert await asyncio.gather(*calls) == [2, 6, 6, 12, 25]
    assert sorted(instance.served) == [("scale", 1), ("scale_all", 2), ("scale_all", 2)]


async def test_a_failing_batch_fails_its_callers_only(served: tuple[RunningApp, Any, Prices]) -> None:
    _, prices, instance = served
    results = await asyncio.gather(
        *(prices.scale(i, -1) for i in range(3)),
        *(prices.scale(i, 2) for i in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, InvalidArgument) and "factor -1" in r.message for r in results[:3]), results
    assert results[3:] == [0, 2, 4]
    assert sorted(instance.served) == [("scale_all", 3), ("scale_all", 3)]


async def test_an_answer_of_the_wrong_length_is_a_remote_error_naming_the_method(
    served: tuple[RunningApp, Any, Prices],
) -> None:
    _, prices, _ = served
    results = await asyncio.gather(*(prices.scale(i, 99) for i in range(3)), return_exceptions=True)
    for result in results:
        assert isinstance(result, RemoteError), results
        assert "prices.scale_all answered 2 items for 3" in str(result)


async def test_a_cancelled_caller_leaves_the_others_their_answers(
    served: tuple[RunningApp, Any, Prices],
) -> None:
    _, prices, instance = served
    tasks = [asyncio.create_task(prices.scale(i, 7)) for i in range(3)]
    await eventually(lambda: _true(instance.served == [("scale_all", 3)]))  # in flight, held at the gate
    tasks[1].cancel()
    instance.gate.set()
    async with asyncio.timeout(10):
        assert await tasks[0] == 0
        assert await tasks[2] == 14
    assert tasks[1].cancelled()


async def test_a_caller_cancelled_before_the_flush_is_left_out(
    served: tuple[RunningApp, Any, Prices],
) -> None:
    _, prices, instance = served
    tasks = [asyncio.create_task(prices.scale(i, 2)) for i in range(3)]
    await asyncio.sleep(0)  # each task has enqueued its call; the flush runs in the next iteration
    tasks[0].cancel()
    assert await asyncio.gather(*tasks[1:]) == [2, 4]
    assert instance.served == [("scale_all", 2)]


async def test_the_batch_runs_under_the_earliest_deadline_of_its_callers(
    served: tuple[RunningApp, Any, Prices],
) -> None:
    _, prices, _ = served

    async def within(seconds: float) -> float:
        _context.set_timeout(seconds)  # this task's inherited deadline, as a served request has
        left: float = await prices.remaining(str(seconds))
        return left

    answers = await asyncio.gather(within(5.0), within(0.8), within(3.0))
    assert all(0 < left <= 0.8 for left in answers), answers


async def test_a_monolith_call_stays_a_plain_call() -> None:
    async with run_app(app, "monolith") as running:
        page, prices = running.instance(Page), running.instance(Prices)
        assert page.prices is prices  # no proxy, no coalescer: the instance itself
        assert await page.page(5) == [0, 3, 6, 9, 12]
        assert prices.served == [("scale", 1)] * 5


async def test_microservices_turn_a_gathered_page_into_one_hop() -> None:
    async with run_app(app, "microservices") as running:
        assert await running.client(Page).page(10) == [3 * i for i in range(10)]
        assert await running.client(Prices).requests() == ["scale_all", "scale_all", "scale_all"]


async def _true(condition: bool) -> bool | None:
    return True if condition else None


class _Base(Service):
    @rpc(idempotent=True)
    async def one(self, item: int, flag: str) -> str:
        return ""


def _service(**methods: Any) -> type[Service]:
    return type("Bad", (_Base,), dict(methods))


def _many() -> Any:
    async def many(self: Any, items: list[int], flag: str) -> list[str]:
        return []

    return many


@pytest.mark.parametrize(
    ("batch", "many", "problem"),
    [
        ("missing", rpc(idempotent=True)(_many()), "Bad has no other @rpc method named 'missing'"),
        ("one", rpc(idempotent=True)(_many()), "Bad has no other @rpc method named 'one'"),
        ("many", rpc(idempotent=True)(_many()), None),
        ("many", rpc(_many()), "must both be idempotent or both not"),
    ],
)
def test_the_batch_method_must_exist_and_match(batch: str, many: Any, problem: str | None) -> None:
    async def one(self: Any, item: int, flag: str) -> str:
        return ""

    cls = _service(one=rpc(idempotent=True, batch=batch)(one), many=many)
    if problem is None:
        spec = describe(cls).methods["one"]
        assert spec.batch is not None and (spec.batch.item, spec.batch.items) == ("item", "items")
        return
    with pytest.raises(DefinitionError, match=r"Bad\.one: @rpc") as caught:
        describe(cls)
    assert problem in str(caught.value)


def _bad_many(source: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(f"async def many(self, {source}: ...", namespace)  # a signature under test
    return rpc(idempotent=True)(namespace["many"])


@pytest.mark.parametrize(
    ("signature", "problem"),
    [
        (
            "items: list[str], flag: str) -> list[str]",
            "'items' must be list[int], the type of one's 'item', not list[str]",
        ),
        ("items: list[int], flag: int) -> list[str]", "parameter 'flag' differs between one and many"),
        ("items: list[int], flag: str) -> str", "many must return list[str], not str"),
        ("items: list[int], other: list[int], flag: str) -> list[str]", "one of them as a list"),
        ("items: list[int]) -> list[str]", "one of them as a list"),
        ("item: list[int], flag: list[str]) -> list[str]", "found 2"),
    ],
)
def test_a_batch_method_of_another_shape_is_a_definition_error(signature: str, problem: str) -> None:
    async def one(self: Any, item: int, flag: str) -> str:
        return ""

    cls = _service(one=rpc(idempotent=True, batch="many")(one), many=_bad_many(signature))
    with pytest.raises(DefinitionError, match=r"Bad\.one: @rpc\(batch='many'\)") as caught:
        describe(cls)
    assert problem in str(caught.value)


def test_the_same_parameter_name_as_a_list_is_accepted() -> None:
    async def one(self: Any, item: int, flag: str) -> str:
        return ""

    cls = _service(
        one=rpc(idempotent=True, batch="many")(one),
        many=_bad_many("item: list[int], flag: str) -> list[str]"),
    )
    batching = describe(cls).methods["one"].batch
    assert batching is not None and (batching.item, batching.items, batching.max_batch) == (
        "item",
        "item",
        100,
    )


@pytest.mark.parametrize(
    ("options", "problem"), [({"batch": "a b"}, "names a method"), ({"max_batch": 0}, ">= 1")]
)
def test_bad_batch_options_are_definition_errors(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(DefinitionError, match=problem):
        rpc(**options)(_many())


def test_the_batching_benchmark_runs_and_prints_its_table() -> None:
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(root / "benchmarks" / "batching.py"), "--quick", "--sizes", "3"]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| 3 | (c) gathered, coalesced |" in result.stdout
    rows = {
        line.split("|")[2].strip(): line.split("|")[-2].strip()
        for line in result.stdout.splitlines()
        if line.startswith("| 3 ")
    }
    assert rows["(b) gathered, no coalescing"] == "3" and rows["(c) gathered, coalesced"] == "1", rows


def test_the_readme_batching_example_declares_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Batching\n") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    (tmp_path / "readme_batching.py").write_text(code.group(1))  # the example as written
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("readme_batching")
    example = App("readme", [module.Currency, module.Frontend])
    batching = example.specs["currency"].methods["convert"].batch
    assert batching is not None and (batching.method, batching.item, batching.items) == (
        "convert_all",
        "amount",
        "amounts",
    )
