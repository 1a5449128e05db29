"""`tillplug doctor` names each fault of a staged, broken till (a temporary root, never this machine's /etc)."""

import os
import time
from collections import namedtuple

import pytest

from tillplug.commands.doctor import FAIL, OK, WARN, Doctor
from tillplug.sim import SimServer

Usage = namedtuple("Usage", "total used free")


def stage(root, sim_url, *, config_extra=""):
    """A till with problems: a missing port, a port in the wrong group, ModemManager holding a
    scanner, brltty running, no udev rules, a tillplug user that exists."""
    (root / "etc").mkdir()
    (root / "dev").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\ntillplug:x:990:990::/nonexistent:/usr/sbin/nologin\n")
    (root / "etc/group").write_text(
        f"root:x:0:\ntillplug:x:990:\ndialout:x:20:tillplug\nwrongrp:x:{os.getgid() + 1}:\n"
    )
    good = root / "dev/ttyACM0"
    good.write_text("")
    os.chown(good, -1, 990) if os.geteuid() == 0 else None
    good.chmod(0o660)
    wrong = root / "dev/ttyUSB1"
    wrong.write_text("")
    if os.geteuid() == 0:
        os.chown(wrong, -1, os.getgid() + 1)
    wrong.chmod(0o660)
    held = root / "dev/ttyACM2"
    held.write_text("")
    if os.geteuid() == 0:
        os.chown(held, -1, 990)
    held.chmod(0o660)
    for pid, comm, fds in (("101", "ModemManager", [held]), ("102", "brltty", []), ("103", "bash", [])):
        (root / "proc" / pid / "fd").mkdir(parents=True)
        (root / "proc" / pid / "comm").write_text(comm + "\n")
        for i, target in enumerate(fds):
            (root / "proc" / pid / "fd" / str(i)).symlink_to(target)
    cfg = root / "tillplug.toml"
    cfg.write_text(f"""
till_id = "t1"
branch_id = "b1"
state_dir = "{root}/state"
cache_dir = "{root}/cache"
[engine]
preset = "simulator"
base_url = "{sim_url}/v1"
auth_url = "{sim_url}/oauth/token"
[[scanners]]
name = "good"
port = "/dev/ttyACM0"
[[scanners]]
name = "missing"
port = "/dev/ttyACM9"
[[scanners]]
name = "held"
port = "/dev/ttyACM2"
[[printers]]
name = "wronggroup"
connection = "serial:///dev/ttyUSB1"
{config_extra}
""")
    return cfg


@pytest.mark.skipif(os.geteuid() != 0, reason="staging device groups needs root (CI runs as root)")
def test_doctor_names_each_of_the_faults(tmp_path):
    with SimServer() as sim:
        cfg = stage(tmp_path, sim.url)
        skewed = lambda: time.time() + 3600  # noqa: E731  this till's clock is an hour fast
        doctor = Doctor(str(cfg), root=tmp_path, clock=skewed, disk_usage=lambda p: Usage(10**9, 10**9, 50 * 10**6))
        findings = doctor.run(printers=False)
    text = "\n".join(map(str, findings))
    by = {(f.check, f.verdict) for f in findings}
    assert ("config", OK) in by
    assert ("port good", OK) in by
    assert ("port missing", FAIL) in by and "/dev/ttyACM9 does not exist" in text
    assert ("port wronggroup", FAIL) in by and "which user tillplug is not in" in text
    assert ("port held", FAIL) in by and "held by ModemManager" in text
    assert ("brltty", WARN) in by
    assert ("udev rules", WARN) in by
    assert ("disk", FAIL) in by and "50 MB free" in text
    assert ("clock", FAIL) in by and "+360" in text  # ~3600 s, give or take the Date header's rounding
    assert ("engine", OK) in by


def test_doctor_reports_an_unreachable_engine_and_a_bad_config(tmp_path, capsys):
    from tillplug.commands.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'till_id="t"\nbranch_id="b"\n[engine]\npreset="simulator"\nbase_url="http://127.0.0.1:9/v1"\n'
        'auth_url="http://127.0.0.1:9/oauth/token"\n'
    )
    findings = Doctor(str(cfg), root=tmp_path).run(printers=False)
    assert any(f.check == "engine" and f.verdict == FAIL and "cannot be reached" in f.detail for f in findings)
    bad = tmp_path / "bad.toml"
    bad.write_text('till_id="t"\nbranch_id="b"\n[engine]\npreset="simulator"\ntimeout=3\n')
    assert main(["doctor", "--config", str(bad), "--root", str(tmp_path), "--offline"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] config: engine.timeout: unknown key" in out and "problem(s) found" in out


def test_doctor_engine_credentials_refused(tmp_path):
    key = tmp_path / "key"
    key.write_text("wrong-key")
    key.chmod(0o600)
    with SimServer() as sim:
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'till_id="t"\nbranch_id="b"\n[engine]\npreset="simulator"\nbase_url="{sim.url}/v1"\n'
            f'auth_url="{sim.url}/oauth/token"\napi_key="{key}"\n'
        )
        findings = Doctor(str(cfg), root=tmp_path).run(printers=False)
    assert any(f.check == "engine credentials" and f.verdict == FAIL for f in findings), findings


def test_the_layout_test_code_tells_every_supported_layout_from_every_other():
    from tillplug.barcodes.keymaps import decode, encode
    from tillplug.barcodes.keymaps_data import LAYOUTS
    from tillplug.commands.doctor import LAYOUT_TEST_CODE

    for scanner in LAYOUTS:
        typed = encode(LAYOUT_TEST_CODE, scanner)
        readings = {host: decode(typed, host) for host in LAYOUTS}
        assert [host for host, text in readings.items() if text == LAYOUT_TEST_CODE] == [scanner]


def hid_config(tmp_path, layout="us", port="usb://dead:beef"):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'till_id="t"\nbranch_id="b"\n[engine]\npreset="simulator"\n[[scanners]]\nname="kbd"\n'
        f'driver="hid-scanner"\nport="{port}"\nlayout="{layout}"\n'
    )
    return cfg


@pytest.mark.skipif(os.geteuid() != 0, reason="staging device groups needs root (CI runs as root)")
def test_doctor_checks_uinput_the_grab_and_the_layout_of_keyboard_scanners(tmp_path):
    pytest.importorskip("evdev")
    from tillplug.barcodes.keymaps import encode
    from tillplug.commands.doctor import LAYOUT_TEST_CODE

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/group").write_text("root:x:0:\ntillplug:x:990:\n")
    doctor = Doctor(str(hid_config(tmp_path, layout="us")), root=tmp_path)
    doctor.scan_test = lambda cfg: encode(LAYOUT_TEST_CODE + "\r", "fr")  # the scanner is really AZERTY
    findings = {(f.check, f.verdict): f.detail for f in doctor.run(engine=False, printers=False)}
    assert "/dev/uinput is missing" in findings[("uinput", FAIL)]
    assert "no input device usb://dead:beef is plugged in" in findings[("scanner kbd", FAIL)]
    assert 'the scanner is set to fr, the config says us: set layout = "fr"' in findings[("layout kbd", FAIL)]

    (tmp_path / "dev").mkdir()
    uinput = tmp_path / "dev/uinput"
    uinput.write_text("")
    os.chown(uinput, -1, 990)
    uinput.chmod(0o660)
    doctor = Doctor(str(hid_config(tmp_path, layout="fr")), root=tmp_path)
    doctor.scan_test = lambda cfg: encode(LAYOUT_TEST_CODE + "\r", "fr")
    findings = {(f.check, f.verdict): f.detail for f in doctor.run(engine=False, printers=False)}
    assert ("uinput", OK) in findings
    assert findings[("layout kbd", OK)] == "the scanner types in the fr layout, as configured"

    os.chown(uinput, -1, 0)
    findings = Doctor(str(hid_config(tmp_path)), root=tmp_path).run(engine=False, printers=False)
    assert any(f.check == "uinput" and f.verdict == FAIL and "group root" in f.detail for f in findings)


def test_the_layout_code_is_drawn_as_a_barcode_that_reads_back(tmp_path):
    import zxingcpp
    from PIL import Image

    from tillplug.commands.cli import main
    from tillplug.commands.doctor import LAYOUT_TEST_CODE

    assert main(["doctor", "--layout-code", str(tmp_path / "code.png")]) == 0
    assert [r.text for r in zxingcpp.read_barcodes(Image.open(tmp_path / "code.png"))] == [LAYOUT_TEST_CODE]
