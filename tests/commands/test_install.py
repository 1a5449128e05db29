"""udev rules, the systemd unit, and `tillplug install` — checked without touching this machine's /etc."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tillplug.commands import install as service
from tillplug.devices.known import KNOWN_DEVICES

REPO = Path(__file__).resolve().parents[2]
RULE_TOKEN = re.compile(r'^(?P<key>[A-Z_]+)(\{(?P<attr>[A-Za-z0-9_]+)\})?(?P<op>==|!=|\+=|-=|:=|=)"(?P<value>[^"]*)"$')
MATCH_KEYS = {"ACTION", "SUBSYSTEM", "KERNEL", "ATTRS", "ENV"}
ASSIGN_KEYS = {"SYMLINK", "GROUP", "MODE", "ENV", "TAG", "GOTO", "LABEL", "OPTIONS"}


def parse_rules(text):
    """A strict parser for the subset of udev syntax our rules use: every token must be well formed."""
    rules, labels, gotos = [], set(), set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        tokens = []
        for raw in line.split(", "):
            m = RULE_TOKEN.match(raw.strip())
            assert m, f"line {n}: cannot parse {raw!r}"
            key, op = m["key"], m["op"]
            if op in ("==", "!="):
                assert key in MATCH_KEYS, f"line {n}: {key} cannot be matched"
            else:
                assert key in ASSIGN_KEYS, f"line {n}: {key} cannot be assigned"
            if key == "LABEL":
                labels.add(m["value"])
            if key == "GOTO":
                gotos.add(m["value"])
            tokens.append(m.groupdict())
        rules.append(tokens)
    assert gotos <= labels, "GOTO to a label that does not exist"
    return rules


def test_the_shipped_rules_and_unit_are_what_the_generator_makes():
    assert (REPO / "udev" / service.RULES_NAME).read_text() == service.udev_rules()
    assert (REPO / "udev" / service.UNIT_NAME).read_text() == service.unit()


def test_rules_parse_and_cover_every_known_device():
    rules = parse_rules(service.udev_rules())
    matched = {
        (t["value"], u["value"])
        for rule in rules
        for t in rule
        for u in rule
        if t["attr"] == "idVendor" and u["attr"] == "idProduct"
    }
    assert matched == {(d.vid, d.pid) for d in KNOWN_DEVICES}
    for rule in rules:
        keys = {(t["key"], t["attr"]) for t in rule}
        if ("SYMLINK", None) in keys:
            assert ("GROUP", None) in keys and ("ENV", "ID_MM_DEVICE_IGNORE") in keys and ("TAG", None) in keys
            assert any(t["key"] == "SYMLINK" and t["value"].startswith("tillplug/") for t in rule)


def test_the_device_table_covers_the_common_brands():
    vendors = " ".join(d.vendor for d in KNOWN_DEVICES)
    for brand in (
        "Honeywell",
        "Zebra",
        "Datalogic",
        "Newland",
        "Epson",
        "Star",
        "Bixolon",
        "Citizen",
        "Xprinter",
        "FTDI",
        "Prolific",
        "WCH",
        "Silicon Labs",
    ):
        assert brand in vendors, brand


@pytest.mark.skipif(not shutil.which("udevadm"), reason="udevadm is not installed")
def test_udevadm_verify_accepts_the_rules(tmp_path):
    rules = tmp_path / service.RULES_NAME
    rules.write_text(service.udev_rules())
    result = subprocess.run(["udevadm", "verify", str(rules)], capture_output=True, text=True)
    if "Unknown command" in result.stderr or "unrecognized" in result.stderr:
        pytest.skip("this udevadm has no verify command (systemd < 254); the parser test covers it")
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_passes_on_the_unit(tmp_path):
    unit = tmp_path / service.UNIT_NAME
    unit.write_text(service.unit(exec_path=str(Path(sys.executable).parent / "tillplug")))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True, timeout=60
    )
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert score and float(score.group(1)) <= 2.0, security.stdout[-500:]


def test_the_unit_has_what_a_till_service_needs():
    text = service.unit()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=tillplug",
        "CacheDirectory=tillplug",
        "ConfigurationDirectory=tillplug",
        "LoadCredential=",
        "User=tillplug",
        "SupplementaryGroups=",
        "NoNewPrivileges=yes",
        "LimitNOFILE=16384",  # 1,024 open files once let half-open connections stop the API
    ):
        assert line in text, line
    assert "PrivateDevices=yes" not in text  # it would hide the serial ports


def test_install_dry_run_changes_nothing(tmp_path, capsys):
    from tillplug.commands.cli import main

    assert main(["install", "--dry-run", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(line.startswith("would ") for line in out.splitlines())
    assert "99-tillplug.rules" in out and "tillplug.service" in out and "udevadm control --reload" in out
    assert "useradd" in out and "systemctl daemon-reload" in out
    assert list(tmp_path.iterdir()) == []


def test_install_into_a_staging_root_writes_the_files(tmp_path, capsys):
    from tillplug.commands.cli import main

    assert main(["install", "--root", str(tmp_path)]) == 0
    assert (tmp_path / "etc/udev/rules.d/99-tillplug.rules").read_text() == service.udev_rules()
    assert "ExecStart=" in (tmp_path / "etc/systemd/system/tillplug.service").read_text()
    assert (tmp_path / "etc/tillplug/tillplug.toml").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "etc/tillplug/credentials").stat().st_mode & 0o777 == 0o700
    (tmp_path / "etc/tillplug/tillplug.toml").write_text("# the technician's own")
    assert main(["install", "--root", str(tmp_path)]) == 0  # a second install keeps the config
    assert (tmp_path / "etc/tillplug/tillplug.toml").read_text() == "# the technician's own"
    assert "skipped (files staged" in capsys.readouterr().out


def test_keyboard_mode_scanners_and_uinput_get_the_service_group():
    """Keyboard-mode scanners: their keyboard event device (for tillplug to grab) and /dev/uinput
    (to re-type scans for the till) are in group tillplug; the unit lets the service reach both,
    and the ptys behind till_port, and gives it /run/tillplug for the till_port links."""
    rules = parse_rules(service.udev_rules())
    hid = [d for d in KNOWN_DEVICES if d.driver == "hid-scanner"]
    assert hid
    for d in hid:
        rule = next(r for r in rules if any(t["attr"] == "idProduct" and t["value"] == d.pid for t in r))
        tokens = {(t["key"], t["attr"], t["value"]) for t in rule}
        assert ("SUBSYSTEM", None, "input") in tokens and ("ENV", "ID_INPUT_KEYBOARD", "1") in tokens
        assert ("GROUP", None, "tillplug") in tokens
        assert ("SYMLINK", None, f"tillplug/hid-scanner-{d.vid}-{d.pid}-%E{{TILLPLUG_ID}}") in tokens
    uinput = next(r for r in rules if any(t["key"] == "KERNEL" and t["value"] == "uinput" for t in r))
    assert {(t["key"], t["value"]) for t in uinput} >= {("GROUP", "tillplug"), ("MODE", "0660")}
    unit = service.unit()
    for line in ("DeviceAllow=char-input rw", "DeviceAllow=/dev/uinput rw", "DeviceAllow=char-pts rw"):
        assert line in unit
    assert "RuntimeDirectory=tillplug" in unit


def test_the_tills_side_has_its_own_group_and_uinput_stays_with_the_daemon():
    """Group tillplug could type into any program on the screen: the drop-in guide put the till's user in
    it to open till_port, and the rules give it /dev/uinput.  The till's side is now its own group."""
    assert service.TILL_GROUP == "tillplug-till" != service.GROUP
    rules = parse_rules(service.udev_rules())
    groups = {t["value"] for r in rules for t in r if t["key"] == "GROUP"}
    assert groups == {service.GROUP}  # every raw device and uinput: the daemon's group only
    assert re.search(rf"^SupplementaryGroups=.*\b{service.TILL_GROUP}\b", service.unit(), re.M)
    steps = [s.what for s in service.install_steps(Path("/nonexistent"), "/usr/bin/tillplug", run_commands=False)]
    assert f"run groupadd --system --force {service.TILL_GROUP}" in steps
    # The group exists before the unit that names it is installed (systemd refuses a missing group).
    assert steps.index(f"run groupadd --system --force {service.TILL_GROUP}") < next(
        i for i, s in enumerate(steps) if service.UNIT_NAME in s
    )


def test_an_upgrade_gives_the_till_group_to_the_users_who_open_till_port_today():
    """Existing tills keep working: their users (in group tillplug by the old guide) are added to
    tillplug-till, and told to leave tillplug; the service user itself is not a till user."""
    import grp
    import pwd

    old = grp.struct_group(("tillplug", "x", 990, ["till", "tillplug", "shop"]))
    users = [
        pwd.struct_passwd(("tillplug", "x", 991, 990, "", "/nonexistent", "/usr/sbin/nologin")),
        pwd.struct_passwd(("kiosk", "x", 1001, 990, "", "/home/kiosk", "/bin/bash")),  # primary group tillplug
        pwd.struct_passwd(("till", "x", 1000, 1000, "", "/home/till", "/bin/bash")),
    ]
    assert service.till_users_in_service_group(old, users) == ["kiosk", "shop", "till"]
    assert service.till_users_in_service_group(None, users) == []
    steps = service.till_group_steps(["kiosk", "till"], run_commands=False)
    assert [s.what for s in steps] == [
        "run usermod --append --groups tillplug-till kiosk",
        "run usermod --append --groups tillplug-till till",
    ]
    advice = service.till_group_advice(["kiosk", "till"])
    assert "gpasswd --delete kiosk tillplug" in advice and "gpasswd --delete till tillplug" in advice
    assert "log in again" in advice


def test_till_port_gives_the_pty_to_the_till_group_not_the_daemons_own(tmp_path, caplog):
    import asyncio
    import grp
    import os

    from tillplug.devices.till_port import TillPort

    till_group = grp.getgrnam("dialout")  # any group that is not ours stands in for tillplug-till
    assert till_group.gr_gid != os.getegid()
    loop = asyncio.new_event_loop()
    try:
        port = TillPort(str(tmp_path / "till"), loop, group=till_group.gr_name)
        port.open()
        st = os.stat(os.path.realpath(tmp_path / "till"))
        assert st.st_gid == till_group.gr_gid and st.st_mode & 0o777 == 0o660
        port.close()
        # A till not yet upgraded (no such group): as before, the daemon's group, and a warning saying what to do.
        port = TillPort(str(tmp_path / "till"), loop, group="no-such-group-here")
        port.open()
        assert os.stat(os.path.realpath(tmp_path / "till")).st_gid == os.getegid()
        assert "tillplug install" in caplog.text
        port.close()
    finally:
        loop.close()


def test_install_dry_run_on_an_upgraded_till_says_what_it_would_change(monkeypatch, capsys):
    monkeypatch.setattr(service, "_till_users", lambda: ["till"])
    assert service.install("/", dry_run=True) == 0
    out = capsys.readouterr().out
    assert "would run groupadd --system --force tillplug-till" in out
    assert "would run usermod --append --groups tillplug-till till" in out
    assert "then: till is in group tillplug" in out and "gpasswd --delete till tillplug" in out
