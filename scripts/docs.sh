#!/bin/sh
# Set up a virtualenv with the pinned documentation requirements and build the
# documentation site (Sphinx with MyST: docs/*.md, README.md's sections, the
# benchmark write-up and the API reference from the docstrings).
#
#   sh scripts/docs.sh [sphinx-build args...]
#
# PYTHON (default python3, 3.11+) picks the interpreter, VENV (default
# .venv-docs) the environment.  Output: docs/_build/html.  Every warning is an
# error (-W, --keep-going to list them all) and the exit status is non-zero;
# -E re-reads every page, so a rerun reports the same warnings.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-docs}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip
"$PY" -m pip install -q --disable-pip-version-check -r docs/requirements.txt
"$PY" -m pip install -q --disable-pip-version-check -e .
exec "$VENV/bin/sphinx-build" -W --keep-going -E -b html docs docs/_build/html "$@"
