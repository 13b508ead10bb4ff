"""The request mix: a weighted list of calls, each one or more HTTP steps.

From a Locust file (:func:`from_locustfile`), best effort, by reading (never importing) it:

- the first class with ``@task(weight)`` methods (``@task`` alone is weight 1);
- in a task: ``self.client.get(path)``, ``self.client.post(path, data={...})`` (also ``json=``;
  ``name=`` and other keywords are ignored), optionally assigned to a name whose ``.text`` and
  ``.status_code`` later lines may read; ``self.other_task()`` runs that method's steps inline;
  any other assignment (``product = random.choice(PRODUCT_IDS)``, ``found = RE.search(r.text)``);
- expressions (paths, f-strings, form values) are evaluated at each call with ``random``,
  ``datetime``, ``re`` and the file's module-level constants (literals, tuples, ``re.compile``);
- anything else (loops, ``if`` statements, ``catch_response``, ``wait_time``) is refused with the
  line it is on. There is no think time: the load generator sets the pace.

From a calls file (:func:`from_calls_file`), TOML or JSON, literal values only::

    [[calls]]
    weight = 10
    method = "GET"
    path = "/product/camp-mug"

    [[calls]]
    weight = 2
    steps = [{method = "POST", path = "/setcurrency", data = {currency_code = "EUR"}}]
"""

from __future__ import annotations

import ast
import builtins
import datetime
import functools
import json
import random
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import Any

BUILTINS: dict[str, Any] = {
    "random": random,
    "datetime": datetime,
    "re": re,
    "str": str,
    "int": int,
    "len": len,
}


class MixError(ValueError):
    """A mix that cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class Request:
    """One HTTP request; ``path`` and the form values are expressions when ``dynamic``."""

    method: str
    path: str
    data: Mapping[str, str] | None = None
    json: str | None = None  # an expression (dynamic) or a JSON document
    bind: str | None = None  # the name later steps read the response by
    dynamic: bool = False


@dataclass(frozen=True)
class Let:
    """``name = expression``, evaluated between requests."""

    name: str
    expression: str


Step = Request | Let


@dataclass(frozen=True)
class Call:
    name: str
    weight: int
    steps: tuple[Step, ...]

    @property
    def requests(self) -> int:
        return sum(isinstance(step, Request) for step in self.steps)


@dataclass(frozen=True)
class Mix:
    calls: tuple[Call, ...]
    constants: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        if not self.calls:
            raise MixError(f"{self.source or 'mix'}: no calls")
        if any(call.weight < 1 for call in self.calls):
            raise MixError(f"{self.source or 'mix'}: every weight must be at least 1")

    def pick(self, rng: random.Random) -> Call:
        return rng.choices(self.calls, weights=[c.weight for c in self.calls])[0]

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": c.name, "weight": c.weight, "requests": c.requests} for c in self.calls]


class Response:
    """What a bound name holds: the body as text and the status, like Locust's response."""

    def __init__(self, status_code: int, text: str) -> None:
        self.status_code, self.text = status_code, text


def evaluate(expression: str, scope: Mapping[str, Any]) -> Any:
    """The value of one expression of the mix: Python, trusted as Locust would trust its file."""
    return eval(_compiled(expression), {"__builtins__": builtins}, dict(scope))


@functools.lru_cache(maxsize=1024)
def _compiled(expression: str) -> CodeType:
    return compile(expression, "<mix>", "eval")


# -- calls files --------------------------------------------------------------------------------


def from_calls_file(path: Path) -> Mix:
    if not path.is_file():
        raise MixError(f"calls file {path} not found")
    try:
        text = path.read_text()
        data: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, OSError) as exc:
        raise MixError(f"{path}: {exc}") from exc
    entries = data.get("calls") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise MixError(f"{path}: expected a list of calls under 'calls'")
    calls = [_literal_call(path, index, entry) for index, entry in enumerate(entries)]
    return Mix(tuple(calls), source=str(path))


def _literal_call(path: Path, index: int, entry: Any) -> Call:
    where = f"{path}: call {index + 1}"
    if not isinstance(entry, dict):
        raise MixError(f"{where}: expected a table")
    raw_steps = entry.get("steps", [entry])
    if not isinstance(raw_steps, list) or not raw_steps:
        raise MixError(f"{where}: 'steps' must be a non-empty list")
    steps: list[Step] = []
    for raw in raw_steps:
        if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
            raise MixError(f"{where}: every step needs a 'path'")
        method = str(raw.get("method", "GET")).upper()
        data = raw.get("data")
        if data is not None and not isinstance(data, dict):
            raise MixError(f"{where}: 'data' must be a table of form fields")
        body = raw.get("json")
        steps.append(
            Request(
                method,
                raw["path"],
                {str(k): str(v) for k, v in data.items()} if data is not None else None,
                json.dumps(body) if body is not None else None,
            )
        )
    first = steps[0]
    name = str(entry.get("name") or (f"{first.method} {first.path}" if isinstance(first, Request) else ""))
    weight = entry.get("weight", 1)
    if not isinstance(weight, int):
        raise MixError(f"{where}: 'weight' must be an integer")
    return Call(name, weight, tuple(steps))


def from_calls(calls: Sequence[tuple[str, str, int]]) -> Mix:
    """A mix of single GET/POST requests: ``(method, path, weight)``."""
    return Mix(tuple(Call(f"{m} {p}", w, (Request(m.upper(), p),)) for m, p, w in calls))


# -- Locust files -------------------------------------------------------------------------------


def from_locustfile(path: Path) -> Mix:
    if not path.is_file():
        raise MixError(f"Locust file {path} not found")
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise MixError(f"{path}: {exc}") from exc
    constants = _constants(tree)
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = {f.name: f for f in node.body if isinstance(f, ast.FunctionDef)}
            tasks = [(f, weight) for f in methods.values() if (weight := _task_weight(f)) is not None]
            if tasks:
                reader = _TaskReader(path, methods)
                calls = [Call(f.name, weight, tuple(reader.steps(f, ()))) for f, weight in tasks]
                return Mix(tuple(calls), constants, str(path))
    raise MixError(f"{path}: no class with @task methods")


def _constants(tree: ast.Module) -> dict[str, Any]:
    """Module-level NAME = value that can be evaluated without importing anything else."""
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = evaluate(ast.unparse(node.value), {**BUILTINS, **found})
            except Exception:
                continue  # not a constant we can use (a class, a call into locust...)
    return found


def _task_weight(function: ast.FunctionDef) -> int | None:
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Name) and decorator.id == "task":
            return 1
        if (
            isinstance(decorator, ast.Call)
            and isinstance(decorator.func, ast.Name)
            and decorator.func.id == "task"
        ):
            if decorator.args and isinstance(decorator.args[0], ast.Constant):
                value = decorator.args[0].value
                if isinstance(value, int):
                    return value
            return 1
    return None


def _client_call(node: ast.expr) -> ast.Call | None:
    """``self.client.METHOD(...)``, else None."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "client"
        and isinstance(node.func.value.value, ast.Name)
        and node.func.value.value.id == "self"
    ):
        return node
    return None


class _TaskReader:
    def __init__(self, path: Path, methods: Mapping[str, ast.FunctionDef]) -> None:
        self.path, self.methods = path, methods

    def refuse(self, node: ast.AST, what: str) -> MixError:
        return MixError(f"{self.path}:{getattr(node, 'lineno', '?')}: unsupported in a task: {what}")

    def steps(self, function: ast.FunctionDef, inside: tuple[str, ...]) -> list[Step]:
        if function.name in inside:
            raise self.refuse(function, f"{function.name} calls itself")
        found: list[Step] = []
        for statement in function.body:
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                continue  # a docstring
            if isinstance(statement, ast.Expr) and (call := _client_call(statement.value)):
                found.append(self.request(call, None))
            elif isinstance(statement, ast.Expr) and self._own_method(statement.value):
                assert isinstance(statement.value, ast.Call) and isinstance(
                    statement.value.func, ast.Attribute
                )
                found += self.steps(self.methods[statement.value.func.attr], (*inside, function.name))
            elif (
                isinstance(statement, ast.Assign)
                and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)
            ):
                name = statement.targets[0].id
                if call := _client_call(statement.value):
                    found.append(self.request(call, name))
                else:
                    found.append(Let(name, ast.unparse(statement.value)))
            else:
                raise self.refuse(statement, ast.unparse(statement).splitlines()[0])
        return found

    def _own_method(self, node: ast.expr) -> bool:
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "self"
            and node.func.attr in self.methods
            and not node.args
        )

    def request(self, call: ast.Call, bind: str | None) -> Request:
        assert isinstance(call.func, ast.Attribute)
        method = call.func.attr.upper()
        if method not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD") or not call.args:
            raise self.refuse(call, ast.unparse(call))
        data: dict[str, str] | None = None
        body: str | None = None
        for keyword in call.keywords:
            if keyword.arg == "data":
                if not isinstance(keyword.value, ast.Dict) or None in keyword.value.keys:
                    raise self.refuse(call, "data= must be a {...} literal of form fields")
                data = {
                    ast.unparse(k).strip("'\""): ast.unparse(v)
                    for k, v in zip(keyword.value.keys, keyword.value.values, strict=True)
                    if k is not None
                }
            elif keyword.arg == "json":
                body = ast.unparse(keyword.value)
        return Request(method, ast.unparse(call.args[0]), data, body, bind, dynamic=True)
