#!/bin/sh
# Run the test suite on Debian sid's CPython 3.14 or 3.15, from a chroot.
#
#   sh scripts/pythons.sh 3.14 [pytest args...]
#   sh scripts/pythons.sh 3.15 -q
#   sh scripts/pythons.sh --setup          only make (or update) the chroot
#
# The chroot (CHROOT, default ~/.cache/sqlalchemy-anyio/sid; scripts/chroot.sh
# makes and mounts it, and scripts/release.sh builds the 3.14/3.15 wheels in
# it) is made once with debootstrap from this machine's Debian mirror and kept
# between runs; it holds python3.14 and python3.15 with their venv and dev
# packages, gcc, and the client libraries the drivers need.  For a run, /proc,
# /sys, /dev and this checkout (at its own path, so that runs from two
# checkouts at once each see their own tree) are bind-mounted into it, and
# scripts/test.sh runs there with PYTHON=python3.X and VENV=.venv-3.X (in the
# checkout, so kept too).
# The chroot shares this machine's network: the test servers on 127.0.0.1 are
# reachable, and pip uses this machine's configuration (copied in).  Needs
# root (debootstrap, chroot, mount).
set -eu
cd "$(dirname "$0")/.."
ROOT=$PWD
. "$ROOT/scripts/chroot.sh"

case "${1:-}" in
    --setup) chroot_setup; exit 0 ;;
    3.14|3.15) version=$1; shift ;;
    *) echo "usage: sh scripts/pythons.sh 3.14|3.15 [pytest args...] | --setup" >&2; exit 2 ;;
esac

chroot_setup
trap chroot_unmount_all EXIT
trap 'exit 130' HUP INT TERM
chroot_mount_system
chroot_bind "$ROOT" "$CHROOT$ROOT"
# the variables scripts/test.sh and the tests read, passed through
pass_env=""
for name in CI SQLALCHEMY SQLALCHEMY_ANYIO_DATABASES SQLALCHEMY_ANYIO_NO_CEXT \
    SQLALCHEMY_ANYIO_PG_URL SQLALCHEMY_ANYIO_MYSQL_URL PIP_DEFAULT_TIMEOUT \
    PIP_DISABLE_PIP_VERSION_CHECK PIP_CERT PIP_FIND_LINKS; do
    eval "value=\${$name-}"
    [ -n "$value" ] && pass_env="$pass_env $name=$value"
done
# The servers belong to the machine and may serve another suite at the same time: the
# one test that restarts PostgreSQL skips here (the README's run on the machine keeps it).
pass_env="$pass_env SQLALCHEMY_ANYIO_SHARED_SERVERS=1"
# shellcheck disable=SC2086
chroot_run $pass_env PYTHON="python$version" VENV=".venv-$version" \
    sh -c 'cd "$0" && exec sh scripts/test.sh "$@"' "$ROOT" "$@"
