"""The files a till needs from the OS: udev rules and the systemd unit, and ``tillplug install``.

The udev rules are generated from the device table in ``tillplug.devices.known``
(the same table ``tillplug devices`` guesses drivers from); the copies in the
repository's ``udev/`` folder are checked against this generator by the tests.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tillplug.devices.known import KNOWN_DEVICES

# Two groups, never one: ``tillplug`` reaches the raw devices and /dev/uinput (whoever is in it can
# type into any program on the screen), so only the service is in it; the till's user is put in
# ``tillplug-till``, which is given the till's side alone (the ptys behind till_port).
GROUP = "tillplug"
TILL_GROUP = "tillplug-till"
USER = "tillplug"
RULES_NAME = "99-tillplug.rules"
UNIT_NAME = "tillplug.service"


def udev_rules() -> str:
    lines = [
        "# tillplug: stable names, access and ModemManager opt-out for scanners and receipt printers.",
        "# Generated from tillplug/devices/known.py by `tillplug install --print-rules`; do not edit by hand.",
        "# Names: /dev/tillplug/<kind>-<vid>-<pid>-<serial> (the serial number, else the USB path).",
        'ACTION=="remove", GOTO="tillplug_end"',
        "",
        "# A name that survives re-plugging: the USB serial number, else the physical port.",
        'ENV{ID_SERIAL_SHORT}=="", ENV{TILLPLUG_ID}="%E{ID_PATH_TAG}"',
        'ENV{ID_SERIAL_SHORT}!="", ENV{TILLPLUG_ID}="%E{ID_SERIAL_SHORT}"',
        "",
    ]
    for kind in ("scanner", "printer", "bridge"):
        lines.append(f"# {kind}s")
        for d in (d for d in KNOWN_DEVICES if d.kind == kind):
            match = f'ATTRS{{idVendor}}=="{d.vid}", ATTRS{{idProduct}}=="{d.pid}"'
            name = f"{kind}-{d.vid}-{d.pid}-%E{{TILLPLUG_ID}}"
            common = f'GROUP="{GROUP}", MODE="0660", ENV{{ID_MM_DEVICE_IGNORE}}="1", TAG+="systemd"'
            lines.append(f"# {d.vendor} {d.model}")
            if d.driver == "hid-scanner":  # keyboard mode: its keyboard event device, for tillplug to grab
                name = f"hid-{name}"
                keyboard = 'SUBSYSTEM=="input", KERNEL=="event*", ENV{ID_INPUT_KEYBOARD}=="1"'
                lines.append(f'{keyboard}, {match}, SYMLINK+="tillplug/{name}", {common}')
                continue
            lines.append(f'SUBSYSTEM=="tty", {match}, SYMLINK+="tillplug/{name}", {common}')
            if kind == "printer":
                lines.append(f'SUBSYSTEM=="usbmisc", KERNEL=="lp[0-9]*", {match}, SYMLINK+="tillplug/{name}", {common}')
                lines.append(f'SUBSYSTEM=="usb", ENV{{DEVTYPE}}=="usb_device", {match}, GROUP="{GROUP}", MODE="0660"')
        lines.append("")
    lines += [
        "# The virtual keyboard that re-types the scans of keyboard-mode scanners for the till: the service's",
        f"# group only.  Never put the till's user in {GROUP} (any program of theirs could type into any",
        f"# window); it opens till_port through group {TILL_GROUP}.",
        f'KERNEL=="uinput", SUBSYSTEM=="misc", GROUP="{GROUP}", MODE="0660", OPTIONS+="static_node=uinput"',
        "",
        'LABEL="tillplug_end"',
    ]
    return "\n".join(lines) + "\n"


def unit(exec_path: str = "/usr/local/bin/tillplug", config: str = "/etc/tillplug/tillplug.toml") -> str:
    return f"""\
# tillplug: the loyalty daemon for shop tills.
# Install with `tillplug install`; secrets go in /etc/tillplug/credentials/ (chmod 600, root-owned).
[Unit]
Description=tillplug loyalty daemon (scanners, Loyalty Engine, receipt printers)
Wants=network-online.target
After=network-online.target
# A till must never give up: keep restarting after failures, however many.
StartLimitIntervalSec=0

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_path} run --config {config}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
WatchdogSec=30s
TimeoutStopSec=30s

User={USER}
Group={GROUP}
# Device access comes from the group the udev rules set; dialout for plain /dev/ttyS* ports;
# {TILL_GROUP} to give the till's side (the ptys behind till_port) to the till's user.
SupplementaryGroups={GROUP} {TILL_GROUP} dialout
StateDirectory=tillplug
StateDirectoryMode=0700
CacheDirectory=tillplug
ConfigurationDirectory=tillplug
# till_port links for tills that read their scanner through tillplug: /run/tillplug/<name>.
RuntimeDirectory=tillplug
RuntimeDirectoryMode=0755
Environment=ESCPOS_CAPABILITIES_PICKLE_DIR=%C/tillplug
# Two malloc arenas are plenty for a few threads and keep the resident memory small.
Environment=MALLOC_ARENA_MAX=2
# Open files: the API caps its own connections (api.max_connections) far below this, so a flood
# of connections is refused by tillplug and never starves the scanners, printers or the outbox.
LimitNOFILE=16384
# Every file in /etc/tillplug/credentials/ becomes a credential named tillplug_<file>, e.g.
# wll-api-key → api_key = "credential:tillplug_wll-api-key" in the config.  The folder may
# be empty (the simulator preset needs no secrets).
LoadCredential=tillplug:/etc/tillplug/credentials

# Hardening that leaves serial and USB devices reachable (no PrivateDevices=).
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
RemoveIPC=yes
UMask=0077
DevicePolicy=closed
DeviceAllow=char-ttyACM rw
DeviceAllow=char-ttyUSB rw
DeviceAllow=char-ttyS rw
DeviceAllow=char-usb_device rw
DeviceAllow=char-usbmisc rw
# Keyboard-mode scanners (evdev), the virtual keyboard that re-types their scans, and the ptys
# behind till_port.
DeviceAllow=char-input rw
DeviceAllow=/dev/uinput rw
DeviceAllow=/dev/ptmx rw
DeviceAllow=char-pts rw

[Install]
WantedBy=multi-user.target
"""


@dataclass
class Step:
    what: str
    run: Callable[[], None]
    is_command: bool = False


def till_users_in_service_group(group: grp.struct_group | None, users: Iterable[pwd.struct_passwd]) -> list[str]:
    """Who is in group ``tillplug`` besides the service: the till users the old drop-in guide put there to
    open till_port.  An upgrade gives them the till's group, so their tills keep working."""
    if group is None:
        return []
    names = set(group.gr_mem) | {u.pw_name for u in users if u.pw_gid == group.gr_gid}
    return sorted(names - {USER})


def _till_users() -> list[str]:
    try:
        group = grp.getgrnam(GROUP)
    except KeyError:
        return []  # a new install: no one to move
    return till_users_in_service_group(group, pwd.getpwall())


def till_group_steps(users: Iterable[str], *, run_commands: bool) -> list[Step]:
    """Add each till user to the till's group (they stay in ``tillplug`` until a technician removes them:
    a technician's own account may be among them, and only a person can tell)."""
    steps = []
    for user in users:
        argv = ["usermod", "--append", "--groups", TILL_GROUP, user]

        def do(argv: list[str] = argv) -> None:
            if run_commands:
                subprocess.run(argv, check=True)

        steps.append(Step("run " + " ".join(argv), do, is_command=True))
    return steps


def till_group_advice(users: Sequence[str]) -> str:
    """What the technician must change after an upgrade that found till users in group ``tillplug``."""
    who = ", ".join(users)
    removals = "; ".join(f"gpasswd --delete {u} {GROUP}" for u in users)
    return (
        f"{who} {'is' if len(users) == 1 else 'are'} in group {GROUP}, which reaches the scanners, printers and "
        f"/dev/uinput: any program of theirs can type into any window. The till's side (till_port) is now "
        f"group {TILL_GROUP}, and they have been added to it; they must log in again (or restart the till) "
        f"to open till_port through it. Then take them out of {GROUP}: {removals}"
    )


def install_steps(root: Path, exec_path: str, *, run_commands: bool, till_users: Sequence[str] = ()) -> list[Step]:
    """What ``tillplug install`` does, step by step.  ``root`` is / on a till, a folder in tests.

    ``till_users``: the users an upgrade adds to the till's group (``till_users_in_service_group``)."""
    from tillplug.config import example_text

    etc = root / "etc"
    steps: list[Step] = []

    def write(path: Path, text: str, mode: int, *, keep: bool = False) -> Step:
        def do() -> None:
            if keep and path.exists():
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(mode)

        verb = "create (if missing)" if keep else "write"
        return Step(f"{verb} {path} (mode {mode:o})", do)

    def command(*argv: str) -> Step:
        def do() -> None:
            if run_commands:
                subprocess.run(list(argv), check=True)

        return Step("run " + " ".join(argv), do, is_command=True)

    if run_commands and not shutil.which("useradd"):
        raise RuntimeError("useradd is not installed; create the tillplug user by hand")
    steps.append(command("groupadd", "--system", "--force", GROUP))
    steps.append(command("groupadd", "--system", "--force", TILL_GROUP))
    steps.append(
        command(
            "sh",
            "-c",
            f"id -u {USER} >/dev/null 2>&1 || useradd --system --gid {GROUP} "
            f"--groups dialout --no-create-home --home-dir /nonexistent "
            f"--shell /usr/sbin/nologin {USER}",
        )
    )
    steps += till_group_steps(till_users, run_commands=run_commands)
    steps.append(write(etc / "udev" / "rules.d" / RULES_NAME, udev_rules(), 0o644))
    steps.append(write(etc / "systemd" / "system" / UNIT_NAME, unit(exec_path), 0o644))
    # Keyboard-mode scanners need uinput (the service may not load modules itself).
    steps.append(write(etc / "modules-load.d" / "tillplug.conf", "uinput\n", 0o644))
    steps.append(write(etc / "tillplug" / "tillplug.toml", example_text(), 0o640, keep=True))
    steps.append(
        Step(
            f"create {etc / 'tillplug' / 'credentials'} (mode 700)",
            lambda: (etc / "tillplug" / "credentials").mkdir(mode=0o700, parents=True, exist_ok=True),
        )
    )
    steps.append(
        command("sh", "-c", "modprobe uinput || echo 'uinput is not available: keyboard-mode scanners cannot re-type'")
    )
    steps.append(command("udevadm", "control", "--reload"))
    steps.append(
        command(
            "udevadm",
            "trigger",
            "--action=add",
            "--subsystem-match=tty",
            "--subsystem-match=usb",
            "--subsystem-match=usbmisc",
            "--subsystem-match=input",
            "--subsystem-match=misc",
        )
    )
    steps.append(command("systemctl", "daemon-reload"))
    return steps


def install(
    root: str | os.PathLike[str] = "/",
    *,
    dry_run: bool = False,
    exec_path: str | None = None,
    out: Callable[[str], None] = print,
) -> int:
    exe = exec_path or shutil.which("tillplug") or "/usr/local/bin/tillplug"
    root_path = Path(root)
    run_commands = root_path == Path("/") and not dry_run
    if run_commands and os.geteuid() != 0:
        out("tillplug install must run as root (or use --dry-run, or --root DIR to stage the files)")
        return 2
    till_users = _till_users() if run_commands or dry_run else []
    for step in install_steps(root_path, exe, run_commands=run_commands, till_users=till_users):
        if dry_run:
            out("would " + step.what)
        elif step.is_command and not run_commands:
            out(f"skipped (files staged under {root_path}): {step.what}")
        else:
            out(step.what)
        if not dry_run:
            step.run()
    if till_users:
        out(("after this upgrade: " if not dry_run else "then: ") + till_group_advice(till_users))
    if not dry_run:
        out(
            "next: edit /etc/tillplug/tillplug.toml, put secrets in /etc/tillplug/credentials/, "
            "`tillplug check-config`, then `systemctl enable --now tillplug`"
        )
    return 0
