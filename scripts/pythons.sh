#!/bin/sh
# Run the test suite on Debian sid's CPython 3.14 or 3.15, from a chroot.
#
#   sh scripts/pythons.sh 3.14 [pytest args...]
#   sh scripts/pythons.sh 3.15 -q
#   sh scripts/pythons.sh --setup          only make (or update) the chroot
#
# The chroot (CHROOT, default ~/.cache/sqlalchemy-anyio/sid) is made once with
# debootstrap from this machine's Debian mirror and kept between runs; it holds
# python3.14 and python3.15 with their venv and dev packages, gcc, and the
# client libraries the drivers need.  For a run, /proc, /sys, /dev and this
# checkout (at /src) are bind-mounted into it, and scripts/test.sh runs there
# with PYTHON=python3.X and VENV=.venv-3.X (in the checkout, so kept too).
# The chroot shares this machine's network: the test servers on 127.0.0.1 are
# reachable, and pip uses this machine's configuration (copied in).  Needs
# root (debootstrap, chroot, mount).
set -eu
cd "$(dirname "$0")/.."
ROOT=$PWD
CHROOT=${CHROOT:-$HOME/.cache/sqlalchemy-anyio/sid}
PACKAGES=python3.14,python3.14-venv,python3.14-dev,python3.15,python3.15-venv,python3.15-dev
PACKAGES=$PACKAGES,gcc,libc6-dev,libpq5,libmariadb-dev,pkg-config,ca-certificates

mirror() {
    # the first Debian URI of this machine's apt sources
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
        [ -f "$f" ] || continue
        uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*debian\)[[:space:]]*$/\1/p; s/^deb[[:space:]]\{1,\}\(http[^[:space:]]*debian\)[[:space:]].*/\1/p' "$f" | head -n 1)
        [ -n "$uri" ] && { echo "$uri"; return 0; }
    done
    echo http://deb.debian.org/debian
}

in_chroot() {
    chroot "$CHROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin \
        LANG=C.UTF-8 "$@"
}

setup() {
    if [ ! -x "$CHROOT/usr/bin/python3.15" ] || [ ! -x "$CHROOT/usr/bin/python3.14" ]; then
        command -v debootstrap >/dev/null 2>&1 || apt-get install -y -qq debootstrap >/dev/null
        mkdir -p "$CHROOT"
        echo "making the sid chroot in $CHROOT (a few minutes, once)"
        # sid is signed with keys newer than this machine's keyring may hold
        debootstrap --variant=minbase --no-check-gpg --include="$PACKAGES" \
            sid "$CHROOT" "$(mirror)" >"$CHROOT.log" 2>&1 \
            || { tail -n 20 "$CHROOT.log"; exit 1; }
    fi
    # what pip and name lookups need, as on this machine
    cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cp /etc/ssl/certs/ca-certificates.crt "$CHROOT/etc/ssl/certs/ca-certificates.crt"
    fi
    for conf in /etc/pip.conf /etc/xdg/pip; do
        [ -e "$conf" ] && mkdir -p "$CHROOT$(dirname "$conf")" && cp -r "$conf" "$CHROOT$(dirname "$conf")/"
    done
    for dir in /opt/wheels /opt/pypi /opt/pypi-more; do
        [ -d "$dir" ] && mkdir -p "$CHROOT$dir"
    done
    return 0
}

mounted=""
mount_all() {
    for dir in proc sys dev /opt/wheels /opt/pypi /opt/pypi-more; do
        case "$dir" in
            /*) src=$dir; dst="$CHROOT$dir"; [ -d "$src" ] || continue ;;
            *) src=/$dir; dst="$CHROOT/$dir" ;;
        esac
        mount --bind "$src" "$dst"
        mounted="$dst $mounted"
    done
    mkdir -p "$CHROOT/src"
    mount --bind "$ROOT" "$CHROOT/src"
    mounted="$CHROOT/src $mounted"
}

unmount_all() {
    for dst in $mounted; do
        umount "$dst" 2>/dev/null || umount -l "$dst" 2>/dev/null || true
    done
}

case "${1:-}" in
    --setup) setup; exit 0 ;;
    3.14|3.15) version=$1; shift ;;
    *) echo "usage: sh scripts/pythons.sh 3.14|3.15 [pytest args...] | --setup" >&2; exit 2 ;;
esac

setup
trap unmount_all EXIT INT TERM
mount_all
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
in_chroot $pass_env PYTHON="python$version" VENV=".venv-$version" \
    sh -c 'cd /src && exec sh scripts/test.sh "$@"' test.sh "$@"
