#!/bin/sh
# tillplug .deb, before its files go.  On removal: stop the service (queued engine writes stay in
# /var/lib/tillplug) and a pending update restart.  On an upgrade: nothing; the daemon keeps running
# from its own version's folder and the new postinst schedules the restart.
set -e
if [ "$1" = "remove" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop tillplug-update-restart.timer tillplug-update-restart.service >/dev/null 2>&1 || true
    systemctl stop tillplug.service || true
fi
exit 0
