#!/bin/sh
# Build, once, the Debian root the upgrade and Ansible tests install tillplug into
# (tests/system/test_fleet.py).  Needs root and Debian's mirror; the tests themselves then reach
# only 127.0.0.1.  Run by .ci/run; a root already there is kept (delete it to rebuild).
#   sudo packaging/debian-root.sh [FOLDER]     (default: $TILLPLUG_DEBIAN_ROOT or /var/cache/tillplug/debian-root)
set -eu
root=${1:-${TILLPLUG_DEBIAN_ROOT:-/var/cache/tillplug/debian-root}}
suite=${TILLPLUG_DEBIAN_SUITE:-bookworm}
mirror=${TILLPLUG_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ -x "$root/usr/bin/python3" ] && [ -f "$root/.tillplug-root-complete" ]; then
    echo "Debian root ready in $root"
    exit 0
fi
rm -rf "$root.partial"
mkdir -p "$(dirname "$root")"
# What tillplug's .deb depends on (python3, udev, systemd) and apt's signature checker ...
debootstrap --variant=minbase --include=python3,udev,systemd,gpgv,ca-certificates,procps \
    "$suite" "$root.partial" "$mirror"
# ... then ansible-core and python3-apt (its apt module), so the role runs inside the root with a
# local connection (apt, not debootstrap: only apt resolves their virtual dependencies).
cp /etc/resolv.conf "$root.partial/etc/resolv.conf"
DEBIAN_FRONTEND=noninteractive chroot "$root.partial" apt-get install -y -q --no-install-recommends ansible-core python3-apt
chroot "$root.partial" apt-get clean
rm -rf "$root.partial/var/lib/apt/lists/"*
touch "$root.partial/.tillplug-root-complete"
rm -rf "$root"
mv "$root.partial" "$root"
echo "Debian root ready in $root"
