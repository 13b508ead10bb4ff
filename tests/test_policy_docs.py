"""The policy defaults the docs state are the code's: the tables of README.md and
docs/production.md list every field of ``Policy`` with its default, and the figures they quote
(the back-off cap, the bulkhead's wait) are the constants the code uses."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from archipel._resilience.bulkhead import QUEUE_WAIT
from archipel._resilience.policies import DEFAULT
from archipel._resilience.retry import MAX_BACKOFF

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `(\w+)` \| ([0-9.]+)(?: s)?\b(.*)$", re.MULTILINE)


def documented_defaults(page: Path) -> dict[str, tuple[float, str]]:
    """``key -> (default, rest of the row)`` of the policy table of ``page``."""
    text = page.read_text()
    return {key: (float(value), rest) for key, value, rest in ROW.findall(text) if key in _fields()}


def _fields() -> set[str]:
    return {field.name for field in dataclasses.fields(DEFAULT)}


@pytest.mark.parametrize("page", ["README.md", "docs/production.md"])
def test_every_policy_and_its_default_is_in_the_table(page: str) -> None:
    found = documented_defaults(ROOT / page)
    assert set(found) == _fields(), f"{page}: policy keys in the table differ from Policy's fields"
    code = {name: float(getattr(DEFAULT, name)) for name in _fields()}
    assert {name: value for name, (value, _) in found.items()} == code


def test_the_figures_quoted_beside_the_defaults_are_the_code_constants() -> None:
    readme = documented_defaults(ROOT / "README.md")
    assert f"capped at {MAX_BACKOFF:g} s" in readme["backoff"][1]
    assert f"waits up to {QUEUE_WAIT:g} s for a slot" in readme["max_concurrent"][1]
    production = (ROOT / "docs/production.md").read_text()
    assert f"capped at {MAX_BACKOFF:g} s" in production
