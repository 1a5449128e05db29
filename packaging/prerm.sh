#!/bin/sh
# tillplug .deb: stop the service before its files go; queued engine writes stay in /var/lib/tillplug.
set -e
if [ "$1" = "remove" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop tillplug.service || true
fi
find /opt/tillplug -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
exit 0
