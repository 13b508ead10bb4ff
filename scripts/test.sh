#!/usr/bin/env bash
# The whole test suite: set-up, lint, types, then every test (pytest's exit 5, "no tests", fails).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
echo "== ruff"; python3 -m ruff check . && python3 -m ruff format --check .
echo "== mypy --strict"
python3 -m mypy archipel
MYPYPATH=examples/boutique python3 -m mypy --strict -p boutique
MYPYPATH=examples/hello python3 -m mypy --strict examples/hello/hello.py
echo "== pytest"; python3 -m pytest -q "$@"
