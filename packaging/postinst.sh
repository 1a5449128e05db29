#!/bin/sh
# tillplug .deb: user, group, folders, the example config, udev and systemd reloaded.
# `tillplug install` is idempotent and never overwrites an existing config.
set -e
if [ "$1" = "configure" ] || [ -z "$1" ]; then
    /opt/tillplug/bin/python -m compileall -q /opt/tillplug/lib >/dev/null 2>&1 || true
    /usr/bin/tillplug install
fi
exit 0
