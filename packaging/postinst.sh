#!/bin/sh
# tillplug .deb, after unpacking (docs/fleet-updates.md).  It never waits: dpkg's lock is never held
# while a sale finishes.
# 1. This version's payload goes into its own folder, /opt/tillplug/@VERSION@, kept after later
#    upgrades (it is not dpkg's), so the running daemon never loads another version's files;
#    `current` points at it, `previous` at the version it replaces (a rollback switches `current`).
# 2. `tillplug install`: user, groups, folders, the example config, udev and systemd reloaded
#    (idempotent; never overwrites a config).  On an upgrade from a release with one group it creates
#    tillplug-till and adds the users it finds in group tillplug to it, and says what to change.
# 3. If the daemon runs, its restart is scheduled in a transient unit, `tillplug restart-when-ready`:
#    at the next safe moment (no checkout open, nothing being sent or printed), at the latest after
#    TILLPLUG_RESTART_WITHIN seconds (900) with the reason logged; if the new version does not answer
#    within TILLPLUG_START_WITHIN seconds (60) it switches back to the previous version's folder.
set -e
version=@VERSION@
root=/opt/tillplug
payload=/usr/lib/tillplug/tillplug-$version.tar
restart_unit=tillplug-update-restart
within=${TILLPLUG_RESTART_WITHIN:-900}
start_within=${TILLPLUG_START_WITHIN:-60}

link() {  # link NAME TARGET: the link replaced in one rename, never missing
    ln -sfn "$2" "$root/.$1.new"
    mv -T "$root/.$1.new" "$root/$1"
}

unpack() {
    [ -f "$root/$version/.complete" ] && return 0
    rm -rf "$root/.$version.partial"
    mkdir -p "$root/.$version.partial"
    tar -xf "$payload" -C "$root/.$version.partial"
    touch "$root/.$version.partial/.complete"
    rm -rf "$root/$version"
    mv "$root/.$version.partial" "$root/$version"
    "$root/$version/bin/python" -m compileall -q "$root/$version/lib" >/dev/null 2>&1 || true
}

prune() {  # keep current, previous, and any version a process still runs from
    keep_current=$(readlink "$root/current" 2>/dev/null || true)
    keep_previous=$(readlink "$root/previous" 2>/dev/null || true)
    for dir in "$root"/*; do
        v=${dir##*/}
        case "$v" in [0-9]*) ;; *) continue ;; esac
        [ -d "$dir" ] && [ ! -L "$dir" ] || continue
        [ "$v" = "$keep_current" ] || [ "$v" = "$keep_previous" ] && continue
        grep -aqsF "$root/$v/" /proc/[0-9]*/cmdline && continue
        rm -rf "$dir"
    done
}

daemon_running() {
    [ -d /run/systemd/system ] && systemctl is-active --quiet tillplug.service
}

if [ "$1" = "configure" ] || [ -z "$1" ]; then
    old=$(readlink "$root/current" 2>/dev/null || true)
    mkdir -p "$root"
    unpack
    link current "$version"
    if [ -n "$old" ] && [ "$old" != "$version" ]; then
        link previous "$old"
    fi
    /usr/bin/tillplug install
    prune
    if [ "$old" != "$version" ] && daemon_running; then
        systemctl stop "$restart_unit.timer" "$restart_unit.service" >/dev/null 2>&1 || true
        systemctl reset-failed "$restart_unit.service" >/dev/null 2>&1 || true
        systemd-run --unit="$restart_unit" --collect \
            --description="tillplug: restart into $version at the next safe moment" \
            --on-active=2 --timer-property=AccuracySec=1s \
            "$root/$version/bin/tillplug" restart-when-ready --expect "$version" \
            --within "$within" --start-within "$start_within"
        echo "tillplug $version installed; the daemon (${old:-the previous layout}) restarts into it at the" \
            "next safe moment, within $within s: journalctl -u $restart_unit"
    fi
fi
exit 0
