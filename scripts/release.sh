#!/bin/sh
# Build the release files into dist/ and check them before they are uploaded.
#
#   sh scripts/release.sh
#
# dist/ is emptied, then gets one sdist and one wheel per CPython 3.10-3.15
# found: RELEASE_PYTHONS (colon-separated interpreter paths, used first and
# required to work), pyenv's $HOME/.pyenv/versions/3.1X.*/bin/python, and
# python3.1X on PATH; one interpreter per version, a missing version is
# reported and skipped. The sdist is built once, from the files git knows
# (tracked, and new ones not ignored) as they are in the work tree; each wheel
# is built from that sdist, in a fresh venv of its interpreter with `build`,
# must contain the C bridge, and is repaired to a manylinux tag by auditwheel.
# The tag follows the glibc of the machine that builds: glibc 2.34 or later
# gives manylinux_2_34; run it in a manylinux build image for an older one.
# Then:
#   - twine check --strict on everything in dist/;
#   - each wheel installed into a clean venv of its interpreter, imported from
#     outside the checkout: sqlalchemy_anyio._bridge.ACCELERATED must be True,
#     and `select 1` runs on sqlite:// under anyio.run;
#   - the sdist installed into a clean venv with no C compiler (CC=/bin/false):
#     setup.py must warn and fall back, ACCELERATED must be False, and the same
#     `select 1` must run.
# Tool versions are pinned in requirements/release.txt. Exits non-zero on the
# first failure, showing the end of that step's log; the work directory is
# then kept.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIST="$ROOT/dist"
REQ="$ROOT/requirements/release.txt"
START=$(date +%s)
TAB=$(printf '\t')
PIP="-m pip install -q --disable-pip-version-check"
unset PYTHONPATH SQLALCHEMY_ANYIO_NO_CEXT

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sqlalchemy-anyio-release.XXXXXX")
mkdir "$WORK/logs" "$WORK/run"
cleanup() {
    status=$?
    if [ "$status" -eq 0 ]; then
        rm -rf "$WORK"
    else
        printf 'release: FAILED; work files and logs kept in %s\n' "$WORK" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' HUP INT TERM

say() { printf '==> %s\n' "$*"; }
die() { printf 'release: %s\n' "$*" >&2; exit 1; }

# step NAME DESCRIPTION CMD...: run CMD with its output in logs/NAME.log.
step() {
    name=$1 what=$2
    shift 2
    if ! "$@" </dev/null >"$WORK/logs/$name.log" 2>&1; then
        printf -- '--- end of %s\n' "$WORK/logs/$name.log" >&2
        tail -n 40 "$WORK/logs/$name.log" >&2
        die "failed: $what"
    fi
}

# venv PYTHON DIR: a fresh virtual environment.
venv() { step "venv-$(basename "$2")" "venv $2 ($1)" "$1" -m venv "$2"; }

# --- interpreters -----------------------------------------------------------
# Each candidate prints: wheel tag (cp312, cp313t), patch number, sys.executable.
PROBE='import sys, sysconfig
v = sys.version_info
ok = sys.implementation.name == "cpython" and (3, 10) <= v[:2] <= (3, 15)
t = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
print("cp%d%d%s" % (v[0], v[1], t) if ok else "-", v[2], sys.executable, sep="\t")'

: >"$WORK/candidates"
# add PRIORITY PATH (0: RELEASE_PYTHONS, must work; 1: pyenv; 2: PATH)
add() {
    if info=$("$2" -c "$PROBE" 2>/dev/null) && [ "${info%%"$TAB"*}" != "-" ]; then
        printf '%s\t%s\n' "${info%%"$TAB"*}" "$1${TAB}${info#*"$TAB"}" >>"$WORK/candidates"
    elif [ "$1" -eq 0 ]; then
        die "RELEASE_PYTHONS: $2 is not a working CPython 3.10-3.15"
    fi
}
if [ -n "${RELEASE_PYTHONS:-}" ]; then
    old_ifs=$IFS
    IFS=:
    set -f
    for p in $RELEASE_PYTHONS; do
        [ -n "$p" ] && add 0 "$p"
    done
    set +f
    IFS=$old_ifs
fi
for p in "$HOME"/.pyenv/versions/3.1[0-5].*/bin/python; do
    [ -x "$p" ] && add 1 "$p"
done
for v in 10 11 12 13 14 15; do
    if p=$(command -v "python3.$v" 2>/dev/null); then
        add 2 "$p"
    fi
done
# One interpreter per tag: RELEASE_PYTHONS first, then pyenv, then PATH; the
# newest patch release among equals.
sort -t "$TAB" -k1,1 -k2,2n -k3,3nr "$WORK/candidates" |
    awk -F "$TAB" '!seen[$1]++ { print $1 "\t" $4 }' >"$WORK/pythons"
[ -s "$WORK/pythons" ] || die "no CPython 3.10-3.15 found (set RELEASE_PYTHONS)"
say "interpreters"
for v in 10 11 12 13 14 15; do
    if ! grep -q "^cp3$v" "$WORK/pythons"; then
        printf '    CPython 3.%s: not found, no wheel for it\n' "$v"
    fi
done
while IFS="$TAB" read -r tag py; do
    printf '    %s: %s (%s)\n' "$tag" "$py" "$("$py" -c 'import sys; print(sys.version.split()[0])')"
done <"$WORK/pythons"

BUILD_PIN=$(sed -n 's/^\(build==[^[:space:]#]*\).*/\1/p' "$REQ")
[ -n "$BUILD_PIN" ] || die "no build== pin in $REQ"

# --- tools ------------------------------------------------------------------
TOOLS_PY=$(head -n 1 "$WORK/pythons" | cut -f 2)
say "release tools ($REQ) on $TOOLS_PY"
venv "$TOOLS_PY" "$WORK/tools"
TPY="$WORK/tools/bin/python"
step tools "install the release tools" "$TPY" $PIP -r "$REQ"

# --- sdist ------------------------------------------------------------------
command -v git >/dev/null 2>&1 || die "git is needed to list the project's files"
say "sdist"
rm -rf "$DIST"
mkdir -p "$DIST" "$WORK/tree"
git -C "$ROOT" ls-files -co --exclude-standard |
    while IFS= read -r f; do
        if [ -f "$f" ]; then printf '%s\n' "$f"; fi
    done >"$WORK/files"
tar -cf - -T "$WORK/files" | tar -xf - -C "$WORK/tree"
step sdist "build the sdist" "$TPY" -m build --sdist --outdir "$DIST" "$WORK/tree"
set -- "$DIST"/*.tar.gz
[ $# -eq 1 ] && [ -f "$1" ] || die "expected one sdist in $DIST"
SDIST=$1
SDIST_DIR=$(basename "$SDIST" .tar.gz)
printf '    %s\n' "$(basename "$SDIST")"

# --- wheels -----------------------------------------------------------------
: >"$WORK/wheels"
while IFS="$TAB" read -r tag py; do
    say "wheel for $tag"
    venv "$py" "$WORK/build-$tag"
    step "build-tool-$tag" "install $BUILD_PIN for $tag" "$WORK/build-$tag/bin/python" $PIP "$BUILD_PIN"
    mkdir "$WORK/src-$tag" "$WORK/raw-$tag"
    tar -xzf "$SDIST" -C "$WORK/src-$tag"
    step "wheel-$tag" "build the $tag wheel" \
        "$WORK/build-$tag/bin/python" -m build --wheel --outdir "$WORK/raw-$tag" "$WORK/src-$tag/$SDIST_DIR"
    set -- "$WORK/raw-$tag"/*.whl
    [ $# -eq 1 ] && [ -f "$1" ] || die "expected one wheel in $WORK/raw-$tag"
    raw=$1
    "$TPY" -c 'import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(not any("/_bridge/_cbridge." in n and n.endswith(".so") for n in names))' "$raw" ||
        die "$(basename "$raw") has no C bridge (see $WORK/logs/wheel-$tag.log)"
    step "show-$tag" "auditwheel show $tag" "$WORK/tools/bin/auditwheel" show "$raw"
    step "repair-$tag" "auditwheel repair $tag" \
        env PATH="$WORK/tools/bin:$PATH" "$WORK/tools/bin/auditwheel" repair -w "$DIST" "$raw"
    set -- "$DIST"/*-"$tag"-"$tag"-*manylinux*.whl
    [ $# -eq 1 ] && [ -f "$1" ] || die "no manylinux wheel for $tag in $DIST"
    whl=$1
    # The C bridge needs only libc: nothing should have been grafted in.
    "$TPY" -c 'import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(any(".libs/" in n for n in names))' "$whl" ||
        die "$(basename "$whl"): auditwheel bundled shared libraries (see $WORK/logs/repair-$tag.log)"
    printf '    %s\n' "$(basename "$whl")"
    printf '%s\t%s\t%s\n' "$tag" "$py" "$whl" >>"$WORK/wheels"
done <"$WORK/pythons"

# --- checks -----------------------------------------------------------------
say "twine check --strict"
step twine "twine check --strict" env COLUMNS=200 "$WORK/tools/bin/twine" --no-color check --strict "$DIST"/*
sed 's/^/    /' "$WORK/logs/twine.log"

IMPORT_CHECK='import sys, sqlalchemy_anyio, sqlalchemy_anyio._bridge as b
assert sqlalchemy_anyio.__file__.startswith(sys.prefix), sqlalchemy_anyio.__file__
print("ACCELERATED =", b.ACCELERATED)
assert b.ACCELERATED == (sys.argv[1] == "True")'
SMOKE='import anyio, sqlalchemy
from sqlalchemy_anyio import create_async_engine

async def main():
    engine = create_async_engine("sqlite://")
    async with engine.connect() as conn:
        assert (await conn.execute(sqlalchemy.text("select 1"))).scalar_one() == 1
    await engine.dispose()

anyio.run(main)
print("select 1 on sqlite:// under anyio.run: ok")'

# check NAME EXPECTED: the import and smoke checks in venv NAME, from an
# empty directory outside the checkout.
check() {
    step "import-$1" "import check in $1" \
        sh -c 'cd "$1" && "$2" -c "$3" "$4"' sh "$WORK/run" "$WORK/$1/bin/python" "$IMPORT_CHECK" "$2"
    step "smoke-$1" "smoke run in $1" \
        sh -c 'cd "$1" && "$2" -c "$3"' sh "$WORK/run" "$WORK/$1/bin/python" "$SMOKE"
}

: >"$WORK/passed"
while IFS="$TAB" read -r tag py whl; do
    say "install and import $(basename "$whl")"
    venv "$py" "$WORK/check-$tag"
    step "install-$tag" "install $(basename "$whl")" "$WORK/check-$tag/bin/python" $PIP "$whl"
    check "check-$tag" True
    printf '    %s: ACCELERATED is True, select 1 ok\n' "$tag"
    printf '%s: installed, ACCELERATED is True, select 1 ok\n' "$(basename "$whl")" >>"$WORK/passed"
done <"$WORK/wheels"

say "sdist with no C compiler ($TOOLS_PY)"
venv "$TOOLS_PY" "$WORK/check-sdist"
step install-sdist "install the sdist without a compiler" \
    env CC=/bin/false CXX=/bin/false "$WORK/check-sdist/bin/python" -m pip install -v \
    --no-cache-dir --disable-pip-version-check "$SDIST"
grep -q "WARNING: the C bridge (_cbridge) could not be built" "$WORK/logs/install-sdist.log" ||
    die "setup.py did not report the C bridge failing to build (see $WORK/logs/install-sdist.log)"
step cbridge-sdist "the sdist install has no C bridge" "$WORK/check-sdist/bin/python" -c \
    'import importlib.util as u; assert u.find_spec("sqlalchemy_anyio._bridge._cbridge") is None'
check check-sdist False
printf '    setup.py fell back: ACCELERATED is False, select 1 ok\n'
printf '%s without a compiler: installed with the pure-Python bridge, ACCELERATED is False, select 1 ok\n' \
    "$(basename "$SDIST")" >>"$WORK/passed"

# --- summary ----------------------------------------------------------------
say "summary"
echo "built in $DIST:"
for f in "$DIST"/*; do printf '    %s\n' "$(basename "$f")"; done
echo "checks passed:"
echo "    twine check --strict: all $(ls "$DIST" | wc -l | tr -d ' ') files"
sed 's/^/    /' "$WORK/passed"
echo "done in $(($(date +%s) - START)) s"
