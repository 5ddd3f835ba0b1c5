#!/bin/sh
# Set up a virtualenv with the pinned benchmark requirements and run the
# benchmark suite (sync SQLAlchemy vs the official asyncio extension vs
# sqlalchemy_anyio with its C and Python bridges).
#
#   sh scripts/bench.sh [--quick] [--servers | --pg-url URL --mysql-url URL] [...]
#   sh scripts/bench.sh --web [--servers] [...]   web-shaped load (benchmarks/web.py)
#   sh scripts/bench.sh --soak [--minutes N | --seconds N] [--restart] [--servers ...]
#   sh scripts/bench.sh --http [--quick] [...]   FastAPI app under wrk (benchmarks/http_bench.py)
#
# PYTHON (default python3) picks the interpreter, VENV (default .venv-bench)
# the environment.  Results: a table on stdout, benchmarks/results/latest.json
# and benchmarks/chart.png.  `sh scripts/bench.sh --help` lists the options.
# --soak runs the chaos soak instead (benchmarks/soak.py: transfers under
# random cancellation, killed backends and, with --restart, a PostgreSQL
# restart; exits 1 if sqlalchemy_anyio breaks the ledger invariant or leaks
# a connection or a thread); `sh scripts/bench.sh --soak --help` lists its options.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-bench}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip
"$PY" -m pip install -q --disable-pip-version-check -r requirements/bench.txt
"$PY" -m pip install -q --disable-pip-version-check -e .
for arg in "$@"; do
    if [ "$arg" = "--http" ] && ! command -v wrk >/dev/null 2>&1; then
        echo "installing wrk (the HTTP benchmark's load generator)"
        if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
        $SUDO apt-get update -q && $SUDO apt-get install -y -q wrk
    fi
done
case "${1:-}" in
    --web) shift; exec "$PY" benchmarks/web.py "$@" ;;
    --soak) shift; exec "$PY" benchmarks/soak.py "$@" ;;
    *) exec "$PY" benchmarks/run.py "$@" ;;
esac
