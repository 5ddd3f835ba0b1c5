#!/bin/sh
# Set up a virtualenv with the package (and trio), then run the quickstart on SQLite.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[trio]"
exec "$VENV/bin/python" examples/quickstart.py "$@"
