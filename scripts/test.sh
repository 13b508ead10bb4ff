#!/usr/bin/env bash
# The whole test suite: set-up, lint, types, then every test (pytest's exit 5, "no tests", fails).
# Every tool runs from the project's virtual environment .venv, made by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
# What the tests spawn (`archipel`, `python3 -m archipel`) must be the venv's, not the system's.
VIRTUAL_ENV="$PWD/.venv"
PATH="$VIRTUAL_ENV/bin:$PATH"
export VIRTUAL_ENV PATH
unset PYTHONHOME
PY=.venv/bin/python
echo "== ruff"  # one command a line: set -e ignores a failure on the left of `&&`
$PY -m ruff check .
$PY -m ruff format --check .
echo "== mypy --strict"
$PY -m mypy archipel
MYPYPATH=examples/boutique $PY -m mypy --strict -p boutique
MYPYPATH=examples/hello $PY -m mypy --strict examples/hello/hello.py
echo "== pytest"; $PY -m pytest -q "$@"
