# Debian sid's chroot with CPython 3.14 and 3.15, for scripts/pythons.sh and
# scripts/release.sh; sourced (`. scripts/chroot.sh`), not run.
#
# CHROOT (default ~/.cache/sqlalchemy-anyio/sid) is made once with debootstrap
# from this machine's Debian mirror and kept; it holds python3.14 and
# python3.15 with their venv and dev packages, gcc, and the client libraries
# the drivers need.  Everything here needs root (debootstrap, chroot, mount).
#
#   chroot_ready              true when both interpreters are there
#   chroot_setup              make the chroot if needed, copy this machine's
#                             name lookup, CA bundle and pip configuration in
#   chroot_mount_system       bind /proc, /sys, /dev and the local package
#                             directories (/opt/wheels, ...) into it
#   chroot_bind SRC DIR       bind SRC at DIR inside it (DIR made if needed)
#   chroot_unmount_all        undo every mount made above, newest first; call
#                             it from an EXIT trap so a failure undoes them too
#   chroot_run CMD...         run CMD there with a clean environment (pass
#                             variables as NAME=VALUE before CMD)
CHROOT=${CHROOT:-$HOME/.cache/sqlalchemy-anyio/sid}
CHROOT_PACKAGES=python3.14,python3.14-venv,python3.14-dev,python3.15,python3.15-venv,python3.15-dev
CHROOT_PACKAGES=$CHROOT_PACKAGES,gcc,libc6-dev,libpq5,libmariadb-dev,pkg-config,ca-certificates
chroot_mounted=""

chroot_mirror() {
    # the first Debian URI of this machine's apt sources
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
        [ -f "$f" ] || continue
        uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*debian\)[[:space:]]*$/\1/p; s/^deb[[:space:]]\{1,\}\(http[^[:space:]]*debian\)[[:space:]].*/\1/p' "$f" | head -n 1)
        [ -n "$uri" ] && { echo "$uri"; return 0; }
    done
    echo http://deb.debian.org/debian
}

chroot_ready() {
    [ -x "$CHROOT/usr/bin/python3.15" ] && [ -x "$CHROOT/usr/bin/python3.14" ]
}

chroot_setup() {
    if ! chroot_ready; then
        command -v debootstrap >/dev/null 2>&1 || apt-get install -y -qq debootstrap >/dev/null ||
            return 1
        mkdir -p "$CHROOT" || return 1
        echo "making the sid chroot in $CHROOT (a few minutes, once)"
        # sid is signed with keys newer than this machine's keyring may hold
        debootstrap --variant=minbase --no-check-gpg --include="$CHROOT_PACKAGES" \
            sid "$CHROOT" "$(chroot_mirror)" >"$CHROOT.log" 2>&1 ||
            { tail -n 20 "$CHROOT.log"; return 1; }
    fi
    # what pip and name lookups need, as on this machine
    cp /etc/resolv.conf "$CHROOT/etc/resolv.conf" || return 1
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cp /etc/ssl/certs/ca-certificates.crt "$CHROOT/etc/ssl/certs/ca-certificates.crt" || return 1
    fi
    for conf in /etc/pip.conf /etc/xdg/pip; do
        if [ -e "$conf" ]; then
            mkdir -p "$CHROOT$(dirname "$conf")" && cp -r "$conf" "$CHROOT$(dirname "$conf")/" ||
                return 1
        fi
    done
    for dir in /opt/wheels /opt/pypi /opt/pypi-more; do
        [ -d "$dir" ] && mkdir -p "$CHROOT$dir"
    done
    return 0
}

chroot_bind() {
    mkdir -p "$2" && mount --bind "$1" "$2" || return 1
    chroot_mounted="$2 $chroot_mounted"
}

chroot_mount_system() {
    for dir in /proc /sys /dev /opt/wheels /opt/pypi /opt/pypi-more; do
        [ -d "$dir" ] || continue
        chroot_bind "$dir" "$CHROOT$dir" || return 1
    done
}

chroot_unmount_all() {
    for dst in $chroot_mounted; do
        umount "$dst" 2>/dev/null || umount -l "$dst" 2>/dev/null ||
            echo "could not unmount $dst" >&2
    done
    chroot_mounted=""
}

chroot_run() {
    chroot "$CHROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin \
        LANG=C.UTF-8 "$@"
}
