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
