"""Puts ``examples/boutique`` on sys.path so the shop imports as the package ``boutique``
(child processes inherit sys.path through PYTHONPATH, set by archipel's supervisor)."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "boutique"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))
