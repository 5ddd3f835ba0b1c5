#!/bin/sh
# Set up a virtualenv with the pinned test requirements and run the whole suite.
#
#   sh scripts/test.sh [pytest args...]
#
# PYTHON (default python3) picks the interpreter, VENV (default .venv) the
# environment, SQLALCHEMY=2.0 tests against the SQLAlchemy 2.0 line instead
# of the pinned 2.1.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip
"$PY" -m pip install -q --disable-pip-version-check -r requirements/test.txt
if [ -n "${SQLALCHEMY:-}" ]; then
    "$PY" -m pip install -q --disable-pip-version-check "SQLAlchemy==${SQLALCHEMY}.*"
fi
# mysqlclient builds from source: only where the MariaDB/MySQL client headers are.
if pkg-config --exists libmariadb 2>/dev/null || pkg-config --exists mysqlclient 2>/dev/null; then
    "$PY" -m pip install -q --disable-pip-version-check "mysqlclient==2.3.1"
fi
"$PY" -m pip install -q --disable-pip-version-check -e .
"$PY" -c "import sys, sqlalchemy, importlib.metadata as m; print('python', sys.version.split()[0], '| sqlalchemy', sqlalchemy.__version__, '| anyio', m.version('anyio'))"
exec "$PY" -m pytest "$@"
