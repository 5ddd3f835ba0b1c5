#!/bin/sh
# Compatibility job: real clients of SQLAlchemy's asyncio extension (its own
# examples/asyncio and test/ext/asyncio, Alembic's async template,
# fastapi-users-db-sqlalchemy's test suite, OpenTelemetry's instrumentation)
# run on sqlalchemy_anyio, on SQLite, PostgreSQL and MariaDB, asyncio and trio.  See scripts/compat/run.py for what runs and how the
# import is switched.
#
#   sh scripts/compat/run.sh [--clients ...] [--databases ...] [--loops ...]
#
# PYTHON (default python3) picks the interpreter, VENV (default .venv-compat)
# the environment (pinned in requirements/compat.txt).  The server databases
# (SQLALCHEMY_ANYIO_COMPAT_PG_URL, SQLALCHEMY_ANYIO_COMPAT_MYSQL_URL; database
# sqlalchemy_anyio_compat on 127.0.0.1 by default) are created if missing and
# emptied before each client run.
set -eu
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-compat}
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip
"$PY" -m pip install -q --disable-pip-version-check -r requirements/compat.txt
"$PY" -m pip install -q --disable-pip-version-check -e .
"$PY" -c "import sys, sqlalchemy, importlib.metadata as m; print('python', sys.version.split()[0], '| sqlalchemy', sqlalchemy.__version__, '| alembic', m.version('alembic'), '| fastapi-users', m.version('fastapi-users'))"
# SQLAlchemy's own asyncio suite needs greenlet and the async drivers: an
# environment of its own (requirements/compat-suite.txt).
SUITE_VENV=${SUITE_VENV:-.venv-compat-suite}
"$PYTHON" -m venv "$SUITE_VENV"
"$SUITE_VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$SUITE_VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements/compat-suite.txt
"$SUITE_VENV/bin/python" -m pip install -q --disable-pip-version-check -e .
SQLALCHEMY_ANYIO_SUITE_PYTHON="$(cd "$SUITE_VENV" && pwd)/bin/python"
export SQLALCHEMY_ANYIO_SUITE_PYTHON
exec "$PY" scripts/compat/run.py "$@"
