"""The CLI's exit codes are a contract with technicians' scripts."""

import json
import subprocess
import sys

import pytest

from tests.config.test_config import FIVE_MISTAKES
from tillplug.commands.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "tillplug", *args], capture_output=True, text=True, timeout=60)


def test_python_dash_m_and_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("tillplug ")


def test_check_config_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(FIVE_MISTAKES)
    assert main(["check-config", str(bad)]) == 2
    out = capsys.readouterr().out
    assert out.count("error: ") == 5
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 2


def test_check_config_never_echoes_secrets(tmp_path, capsys):
    key = tmp_path / "key"
    key.write_text("super-secret-api-key")
    key.chmod(0o644)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'till_id="t"\nbranch_id="b"\n[engine]\npreset="eu"\napi_key="{key}"\n'
        f'client_id="{key}"\nclient_secret="{key}"\n'
    )
    assert main(["check-config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "readable by every user" in out
    assert "super-secret" not in out


def test_config_example_passes_check_config_without_a_warning(tmp_path, capsys):
    """`tillplug config example > ex.toml && tillplug check-config ex.toml` warned about the example's own
    member rule: what tillplug ships must be valid as it stands."""
    assert main(["config", "example"]) == 0
    example = tmp_path / "example.toml"
    example.write_text(capsys.readouterr().out)
    assert main(["check-config", str(example)]) == 0
    out = capsys.readouterr().out
    assert "warning:" not in out, out
    assert out.strip().endswith("valid (0 warning(s))"), out


def test_config_schema_is_json_schema_for_the_file(capsys):
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "till_id" in schema["properties"] and "till_id" in schema["required"]


def test_usage_error_exits_2():
    result = run("no-such-command")
    assert result.returncode == 2


def test_built_in_drivers_install_under_tillplug_not_as_top_level_drivers(tmp_path):
    code = (
        "import importlib.util as u, tillplug.drivers.serial_scanner as s;"
        "print(u.find_spec('drivers') is None, s.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True", "tillplug.drivers.serial_scanner"], result.stderr


def test_sim_command_serves_the_seed_data(tmp_path):
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tillplug", "sim", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                ledger = httpx.get(f"http://127.0.0.1:{port}/_sim/ledger", timeout=1).json()
                break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            pytest.fail("tillplug sim did not answer")
        assert ledger["balances"]["5a1b2c3d-0000-4000-8000-000000000001"] == 1250
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_devices_lists_ports_with_ids_guess_and_a_config_snippet(monkeypatch, capsys):
    from tillplug.drivers.serial_scanner import SerialScanner

    monkeypatch.setattr(
        SerialScanner,
        "discover",
        classmethod(
            lambda cls: [
                {
                    "device": "/dev/ttyACM0",
                    "vid": 0x0C2E,
                    "pid": 0x0B61,
                    "serial": "17012345",
                    "by_id": "/dev/serial/by-id/usb-Honeywell_Xenon_17012345-if00",
                },
                {"device": "/dev/ttyUSB0", "vid": 0x04B8, "pid": 0x0E15, "serial": None, "by_id": None},
            ]
        ),
    )
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "/dev/ttyACM0  USB 0c2e:0b61  serial 17012345  Honeywell" in out
    assert 'port = "/dev/serial/by-id/usb-Honeywell_Xenon_17012345-if00"' in out
    assert "Epson TM-T20II (printer)" in out and 'connection = "serial:///dev/ttyUSB0"' in out


def test_devices_lists_keyboard_mode_scanners_with_a_snippet_and_plain_keyboards_without(monkeypatch, capsys):
    from tillplug.drivers.hid_scanner import HidScanner
    from tillplug.drivers.serial_scanner import SerialScanner

    monkeypatch.setattr(SerialScanner, "discover", classmethod(lambda cls: []))
    by_id = "/dev/input/by-id/usb-Honeywell_Voyager_17A001-event-kbd"
    monkeypatch.setattr(
        HidScanner,
        "discover",
        classmethod(
            lambda cls: [
                {"device": "/dev/input/event5", "input": True, "name": "Honeywell Scanner", "vid": 0x0C2E}
                | {"pid": 0x0200, "serial": "17A001", "by_id": by_id},
                {"device": "/dev/input/event2", "input": True, "name": "Cherry keyboard", "vid": 0x046A}
                | {"pid": 0x0011, "serial": None, "by_id": None},
            ]
        ),
    )
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "/dev/input/event5  USB 0c2e:0200  serial 17A001  'Honeywell Scanner': Honeywell/Metrologic" in out
    assert f'driver = "hid-scanner"\n    port = "{by_id}"\n    layout = "us"' in out
    assert "/dev/input/event2  USB 046a:0011  serial -  'Cherry keyboard': a keyboard, or a scanner" in out
    assert out.count("[[scanners]]") == 1  # a plain keyboard gets no snippet: it must never be grabbed by mistake


def test_outbox_options_may_follow_the_action_and_its_row_id(tmp_path, capsys):
    """`tillplug outbox retry 42 --config F` was a usage error: the options only worked before the action."""
    from tests.outbox.test_outbox import sale
    from tillplug.outbox import OutboxStore

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'till_id="t"\nbranch_id="b"\nstate_dir="{tmp_path}"\n[engine]\npreset="simulator"\n')
    store = OutboxStore(tmp_path / "outbox.sqlite3")
    key = sale(store, 1)
    row = store.claim()
    store.dead(row.id, error="HTTP 400: payload.total is required")
    assert main(["outbox", "retry", str(row.id), "--config", str(cfg)]) == 0
    assert store.by_key(key).state == "pending"
    capsys.readouterr()
    assert main(["outbox", "stats", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pending"] == 1
    # Before the action still works, and the later one wins when both are given.
    assert main(["outbox", "--config", str(tmp_path / "nowhere.toml"), "stats", "--config", str(cfg)]) == 0
    assert main(["outbox", "--config", str(cfg), "list"]) == 0
