#!/bin/sh
# Build the release files into dist/ and check them before they are uploaded.
#
#   sh scripts/release.sh
#   sh scripts/release.sh --wheels-for SDIST PYTHON...    (one part, see below)
#
# dist/ is emptied, then gets one sdist and one wheel per CPython 3.10-3.15:
# RELEASE_PYTHONS (colon-separated interpreter paths, used first and required
# to work), pyenv's $HOME/.pyenv/versions/3.1X.*/bin/python, and python3.1X on
# PATH; one interpreter per version. The sdist is built once, from the files
# git knows (tracked, and new ones not ignored) as they are in the work tree;
# each wheel is built from that sdist, in a fresh venv of its interpreter with
# `build`, must contain the C bridge, and is repaired to a manylinux tag by
# auditwheel, which takes the lowest tag the glibc symbol versions the
# extension uses allow: these follow the glibc of the machine that builds
# (2.34 or later: manylinux_2_34 at least); run it in a manylinux build image
# for an older one.
#
# CPython 3.14 and 3.15 not found here are taken from Debian sid's chroot of
# scripts/pythons.sh (scripts/chroot.sh; made when missing, which needs root
# and debootstrap): the checkout and this run's work directory are
# bind-mounted into it (unmounted on exit, failure included) and
# `release.sh --wheels-for SDIST /usr/bin/python3.14 /usr/bin/python3.15`
# runs there: the same sdist, build, auditwheel repair into the same dist/,
# twine check --strict and the import check below, with the chroot's
# interpreters, tools and glibc (so these wheels get the tag sid's glibc
# gives). RELEASE_CHROOT=0 never uses the chroot (a missing version is then
# reported and skipped, as when the chroot cannot be had); RELEASE_CHROOT=1
# requires it.
#
# Then, for the whole of dist/:
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
#
# --wheels-for SDIST PYTHON... does only the wheel part for the given
# interpreters: build each from SDIST, repair into dist/, twine check
# --strict, install and import check; with RELEASE_WORK set (an existing
# directory) it works and logs there and leaves it, otherwise in a temporary
# directory of its own.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIST="$ROOT/dist"
REQ="$ROOT/requirements/release.txt"
START=$(date +%s)
TAB=$(printf '\t')
PIP="-m pip install -q --disable-pip-version-check"
unset PYTHONPATH SQLALCHEMY_ANYIO_NO_CEXT
. "$ROOT/scripts/chroot.sh"

MODE=release
if [ "${1:-}" = --wheels-for ]; then
    [ $# -ge 3 ] || { echo "usage: sh scripts/release.sh --wheels-for SDIST PYTHON..." >&2; exit 2; }
    MODE=wheels
    SDIST=$2
    shift 2
fi

if [ "$MODE" = wheels ] && [ -n "${RELEASE_WORK:-}" ]; then
    WORK=$RELEASE_WORK
    OWN_WORK=0
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/sqlalchemy-anyio-release.XXXXXX")
    OWN_WORK=1
fi
mkdir -p "$WORK/logs" "$WORK/run"
MNT=""
cleanup() {
    status=$?
    # the chroot's mounts first: nothing below may remove files through them
    chroot_unmount_all
    if [ -n "$MNT" ]; then
        rmdir "$MNT/src" "$MNT/work" "$MNT" 2>/dev/null || true
    fi
    if [ "$status" -eq 0 ] && [ "$OWN_WORK" -eq 1 ]; then
        rm -rf "$WORK"
    elif [ "$status" -ne 0 ]; then
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

# Each interpreter prints: wheel tag (cp312, cp313t), patch number, sys.executable.
PROBE='import sys, sysconfig
v = sys.version_info
ok = sys.implementation.name == "cpython" and (3, 10) <= v[:2] <= (3, 15)
t = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
print("cp%d%d%s" % (v[0], v[1], t) if ok else "-", v[2], sys.executable, sep="\t")'

BUILD_PIN=$(sed -n 's/^\(build==[^[:space:]#]*\).*/\1/p' "$REQ")
[ -n "$BUILD_PIN" ] || die "no build== pin in $REQ"

# tools PYTHON: the release tools' venv, $WORK/tools.
tools() {
    say "release tools ($REQ) on $1"
    venv "$1" "$WORK/tools"
    TPY="$WORK/tools/bin/python"
    step tools "install the release tools" "$TPY" $PIP -r "$REQ"
}

# build_wheels: a manylinux wheel in dist/ from $SDIST for each line (tag,
# interpreter) of $WORK/pythons, listed in $WORK/wheels.
build_wheels() {
    SDIST_DIR=$(basename "$SDIST" .tar.gz)
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
        # why this tag: the newest glibc symbol version the extension uses
        "$TPY" -c 'import re, sys
text = " ".join(open(sys.argv[1]).read().split())
tag = re.search(r"consistent with the following platform tag: \"([^\"]+)\"", text)
libc = re.search(r"libc\.so\.6 with versions \{([^}]*)\}", text)
glibc = max(re.findall(r"GLIBC_([0-9.]+)", libc.group(1)) if libc else ["?"],
            key=lambda v: [int(p) if p.isdigit() else 0 for p in v.split(".")])
print("    auditwheel: %s, newest glibc symbol version used: GLIBC_%s"
      % (tag.group(1) if tag else "?", glibc))' "$WORK/logs/show-$tag.log"
        printf '%s\t%s\t%s\n' "$tag" "$py" "$whl" >>"$WORK/wheels"
    done <"$WORK/pythons"
}

# twine FILES...: twine check --strict.
twine() {
    say "twine check --strict"
    step twine "twine check --strict" env COLUMNS=200 "$WORK/tools/bin/twine" --no-color check --strict "$@"
    sed 's/^/    /' "$WORK/logs/twine.log"
}

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

# check_wheels WHERE: install and check each wheel of $WORK/wheels, results
# in $WORK/passed.
check_wheels() {
    while IFS="$TAB" read -r tag py whl; do
        say "install and import $(basename "$whl")"
        venv "$py" "$WORK/check-$tag"
        step "install-$tag" "install $(basename "$whl")" "$WORK/check-$tag/bin/python" $PIP "$whl"
        check "check-$tag" True
        printf '    %s: ACCELERATED is True, select 1 ok\n' "$tag"
        printf '%s: installed%s, ACCELERATED is True, select 1 ok\n' "$(basename "$whl")" "$1" >>"$WORK/passed"
    done <"$WORK/wheels"
}

: >"$WORK/wheels"
: >"$WORK/passed"

# --- --wheels-for: only the wheels of the given interpreters ----------------
if [ "$MODE" = wheels ]; then
    [ -f "$SDIST" ] || die "no sdist $SDIST"
    : >"$WORK/pythons"
    for p in "$@"; do
        info=$("$p" -c "$PROBE" 2>/dev/null) && [ "${info%%"$TAB"*}" != "-" ] ||
            die "$p is not a working CPython 3.10-3.15"
        printf '%s\t%s\n' "${info%%"$TAB"*}" "${info##*"$TAB"}" >>"$WORK/pythons"
    done
    say "interpreters ($("$1" -c 'import platform; print(*platform.libc_ver())'))"
    while IFS="$TAB" read -r tag py; do
        printf '    %s: %s (%s)\n' "$tag" "$py" "$("$py" -c 'import sys; print(sys.version.split()[0])')"
    done <"$WORK/pythons"
    tools "$1"
    mkdir -p "$DIST"
    build_wheels
    # shellcheck disable=SC2046
    twine $(cut -f 3 "$WORK/wheels")
    check_wheels "${RELEASE_WHERE:-}"
    exit 0
fi

# --- interpreters -----------------------------------------------------------
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

# 3.14 and 3.15 missing here: from the sid chroot, unless RELEASE_CHROOT=0.
CHROOT_PYTHONS=""
for v in 14 15; do
    grep -q "^cp3$v$TAB" "$WORK/pythons" || CHROOT_PYTHONS="$CHROOT_PYTHONS /usr/bin/python3.$v"
done
CHROOT_NOTE=""
if [ -n "$CHROOT_PYTHONS" ]; then
    case "${RELEASE_CHROOT:-auto}" in
        0) CHROOT_PYTHONS="" CHROOT_NOTE="not from the sid chroot: RELEASE_CHROOT=0" ;;
        1 | auto)
            if chroot_ready; then
                :
            elif [ "$(id -u)" -eq 0 ] && { command -v debootstrap || command -v apt-get; } >/dev/null 2>&1; then
                : made below
            else
                CHROOT_NOTE="no sid chroot in $CHROOT, and it can only be made as root (sh scripts/pythons.sh --setup)"
                [ "${RELEASE_CHROOT:-auto}" = 1 ] && die "RELEASE_CHROOT=1: $CHROOT_NOTE"
                CHROOT_PYTHONS=""
            fi
            ;;
        *) die "RELEASE_CHROOT must be 0 or 1, not ${RELEASE_CHROOT}" ;;
    esac
fi

say "interpreters"
for v in 10 11 12 13 14 15; do
    if ! grep -q "^cp3$v$TAB" "$WORK/pythons"; then
        case "$CHROOT_PYTHONS" in
            *"/python3.$v"*) printf '    CPython 3.%s: from the sid chroot (%s)\n' "$v" "$CHROOT" ;;
            *) printf '    CPython 3.%s: not found%s, no wheel for it\n' "$v" "${CHROOT_NOTE:+ ($CHROOT_NOTE)}" ;;
        esac
    fi
done
while IFS="$TAB" read -r tag py; do
    printf '    %s: %s (%s)\n' "$tag" "$py" "$("$py" -c 'import sys; print(sys.version.split()[0])')"
done <"$WORK/pythons"

# --- tools ------------------------------------------------------------------
tools "$(head -n 1 "$WORK/pythons" | cut -f 2)"
TOOLS_PY=$(head -n 1 "$WORK/pythons" | cut -f 2)

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
printf '    %s\n' "$(basename "$SDIST")"

# --- wheels -----------------------------------------------------------------
build_wheels

# --- wheels in the sid chroot -----------------------------------------------
if [ -n "$CHROOT_PYTHONS" ]; then
    say "wheels in the sid chroot ($CHROOT):$CHROOT_PYTHONS"
    # The checkout and this work directory under a mount point of this run's
    # own, so that runs from other checkouts (scripts/pythons.sh's /src) do
    # not meet.
    MNT="$CHROOT/mnt/$(basename "$WORK")"
    mkdir -p "$WORK/chroot"
    chroot_ready || echo "    making the sid chroot in $CHROOT (a few minutes, once; log in $CHROOT.log)"
    step chroot-setup "make or update the sid chroot $CHROOT" chroot_setup
    chroot_mount_system
    chroot_bind "$ROOT" "$MNT/src"
    chroot_bind "$WORK/chroot" "$MNT/work"
    in=/mnt/$(basename "$WORK")
    pass_env=""
    for name in PIP_DEFAULT_TIMEOUT PIP_CERT PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
        eval "value=\${$name-}"
        [ -n "$value" ] && pass_env="$pass_env $name=$value"
    done
    # shellcheck disable=SC2086
    { chroot_run $pass_env RELEASE_WORK="$in/work" RELEASE_WHERE=" in the sid chroot" \
        sh "$in/src/scripts/release.sh" --wheels-for "$in/src/dist/$(basename "$SDIST")" $CHROOT_PYTHONS \
        </dev/null 2>&1 || echo "$?" >"$WORK/chroot.status"; } | sed 's/^/  | /'
    chroot_unmount_all
    rmdir "$MNT/src" "$MNT/work" "$MNT" 2>/dev/null || true
    MNT=""
    [ ! -f "$WORK/chroot.status" ] ||
        die "the wheels in the sid chroot failed (exit $(cat "$WORK/chroot.status"); logs in $WORK/chroot/logs)"
fi

# --- checks -----------------------------------------------------------------
twine "$DIST"/*
check_wheels ""

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
if [ -f "$WORK/chroot/passed" ]; then cat "$WORK/chroot/passed" >>"$WORK/passed"; fi
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
