#!/bin/sh
# Run the bridge's concurrency tests (and thread placement) with the C bridge built under
# ThreadSanitizer; any data race in _cbridge fails the run.
#
#   sh scripts/tsan.sh [pytest args...]
#
# The extension is built with -fsanitize=thread into its own virtualenv
# (VENV, default .venv-tsan; a regular, non-editable install, so its build
# directory is a temporary one and .venv is untouched).  CPython itself is
# not instrumented: libtsan is preloaded so that it sees every thread, lock
# and allocation, and reports races on the memory the extension touches.
# SQLite only: no test here needs a server.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-tsan}

libtsan=$(gcc -print-file-name=libtsan.so)
if [ ! -e "$libtsan" ]; then
    echo "installing ThreadSanitizer's runtime (libtsan)"
    (apt-get update -qq && apt-get install -y -qq libtsan2 >/dev/null) \
        || { echo "cannot install libtsan2: no ThreadSanitizer run"; exit 1; }
    libtsan=$(gcc -print-file-name=libtsan.so)
fi
[ -e "$libtsan" ] || { echo "libtsan not found (gcc -print-file-name=libtsan.so)"; exit 1; }
libtsan=$(readlink -f "$libtsan")

"$PYTHON" -m venv "$VENV"
PY="$(cd "$VENV" && pwd)/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip
"$PY" -m pip install -q --disable-pip-version-check -r requirements/test.txt
CFLAGS="-fsanitize=thread -g -O1 -fno-omit-frame-pointer" LDFLAGS="-fsanitize=thread" \
    "$PY" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall --no-cache-dir .

# Run from a directory outside the checkout: "import sqlalchemy_anyio" must
# find the instrumented install, not src/.
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r tests "$work/tests"
cp pyproject.toml "$work/"
cd "$work"

# The instrumented C bridge, not the pure-Python fallback, must be what runs
# (an instrumented extension only loads with libtsan preloaded).
unset SQLALCHEMY_ANYIO_NO_CEXT
so=$(LD_PRELOAD="$libtsan" "$PY" -c \
    "import sqlalchemy_anyio._bridge._cbridge as m; print(m.__file__)") \
    || { echo "the C bridge was not built"; exit 1; }
case "$so" in
    "$root"/src/*) echo "imported the checkout's $so instead of the instrumented build"; exit 1 ;;
esac
if ! readelf -d "$so" | grep -q 'libtsan'; then
    echo "$so is not built with -fsanitize=thread"
    exit 1
fi
echo "instrumented C bridge: $so"

# halt_on_error: the first report fails the run.  Reports go to files (pytest
# captures stderr, and a halted run would never print it).  The suppressions
# file covers only what is not ours (see its comments); never _cbridge.
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 \
log_path=$work/tsan-report suppressions=$root/scripts/tsan.supp"
status=0
LD_PRELOAD="$libtsan" SQLALCHEMY_ANYIO_DATABASES=sqlite \
    "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_bridge.py tests/test_bridge_parity.py tests/test_threads.py tests/test_pool.py \
    tests/test_placement.py \
    "$@" || status=$?
if [ "$status" -eq 0 ]; then
    # Once more with the gate admitting one worker at a time, and slow jobs
    # expiring quickly: hand-offs through the gate's line and its timed waits.
    echo "--- again with SQLALCHEMY_ANYIO_ACTIVE_WORKERS=1"
    LD_PRELOAD="$libtsan" SQLALCHEMY_ANYIO_DATABASES=sqlite SQLALCHEMY_ANYIO_ACTIVE_WORKERS=1 \
        SQLALCHEMY_ANYIO_ACTIVE_EXPIRE_US=200 "$PY" -m pytest -q -p no:cacheprovider \
        tests/test_bridge.py tests/test_pool.py tests/test_threads.py "$@" || status=$?
fi
for report in "$work"/tsan-report*; do
    [ -e "$report" ] || continue
    echo "=== ThreadSanitizer report $report"
    cat "$report"
    [ "$status" -ne 0 ] || status=66
done
[ "$status" -eq 0 ] && echo "ThreadSanitizer: no reports"
exit "$status"
