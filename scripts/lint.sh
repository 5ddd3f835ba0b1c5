#!/bin/sh
# Lint and type-check: ruff (rules and formatting) over src and tests, and
# mypy --strict over the package (configuration in pyproject.toml).
#
#   sh scripts/lint.sh
#
# PYTHON (default python3) picks the interpreter, VENV (default .venv-lint)
# the environment, with the tools pinned in requirements/lint.txt.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-lint}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip
"$PY" -m pip install -q --disable-pip-version-check -r requirements/lint.txt
"$PY" -m pip install -q --disable-pip-version-check -e .
status=0
"$VENV/bin/ruff" check src tests benchmarks scripts || status=1
"$VENV/bin/ruff" format --check src tests benchmarks scripts || status=1
"$VENV/bin/mypy" || status=1
[ "$status" -eq 0 ] && echo "lint: ruff and mypy --strict clean"
exit "$status"
