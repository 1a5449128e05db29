#!/bin/sh
# tillplug-relay .deb: stop the relay before its files go; its state is PostgreSQL's.
set -e
if [ "$1" = "remove" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop tillplug-relay.service || true
fi
find /opt/tillplug-relay -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
exit 0
