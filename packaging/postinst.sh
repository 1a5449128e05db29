#!/bin/sh
# tillplug .deb: user, groups, folders, the example config, udev and systemd reloaded.
# `tillplug install` is idempotent and never overwrites an existing config.  On an upgrade from a
# release with one group, it creates tillplug-till (the till's side, till_port), adds the users it
# finds in group tillplug to it so their tills keep working, and says what the technician must
# change (take them out of tillplug, which reaches /dev/uinput).
set -e
if [ "$1" = "configure" ] || [ -z "$1" ]; then
    /opt/tillplug/bin/python -m compileall -q /opt/tillplug/lib >/dev/null 2>&1 || true
    /usr/bin/tillplug install
fi
exit 0
