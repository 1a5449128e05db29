#!/bin/sh
# tillplug-relay .deb: its user, its config folder, the example relay.toml (never overwritten).
set -e
if [ "$1" = "configure" ] || [ -z "$1" ]; then
    /opt/tillplug-relay/bin/python -m compileall -q /opt/tillplug-relay/lib >/dev/null 2>&1 || true
    getent group tillplug-relay >/dev/null || groupadd --system tillplug-relay
    getent passwd tillplug-relay >/dev/null || useradd --system --gid tillplug-relay --home-dir /nonexistent \
        --shell /usr/sbin/nologin tillplug-relay
    install -d -m 0755 /etc/tillplug
    install -d -m 0700 /etc/tillplug/relay-credentials
    if [ ! -e /etc/tillplug/relay.toml ]; then
        /opt/tillplug-relay/bin/tillplug relay config example > /etc/tillplug/relay.toml
        chmod 0640 /etc/tillplug/relay.toml
        chgrp tillplug-relay /etc/tillplug/relay.toml
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
exit 0
