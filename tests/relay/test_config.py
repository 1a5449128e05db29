"""relay.toml and a till's relay mode: what each may hold (no database needed)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from tillplug.config.loader import parse_toml
from tillplug.config.model import EngineConfig
from tillplug.relay import config as relay_config

PACKAGE = Path(__file__).resolve().parents[2] / "tillplug"


def relay_data(**changes):
    data = {
        "engine": {"preset": "simulator"},
        "database": {"url": "postgresql://relay@db.chain.lan/tillplug_relay"},
        "api": {"listen": "127.0.0.1:8766"},
    }
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values}
    return data


def problems(data) -> list[str]:
    return [f"{p.path}: {p.message}" for p in relay_config.validate(data, check_secrets=False).problems]


def test_the_example_is_valid_but_for_its_secret_files():
    report = relay_config.validate(parse_toml(relay_config.example()), check_secrets=False)
    assert [p for p in report.problems if not p.path.startswith("api.tls")] == []
    assert report.config is not None
    assert report.config.engine.preset == "eu"


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"database": {"url": "postgresql://relay:hunter2@db/relay"}}, "must not carry a password"),
        ({"database": {"url": "postgresql://db/relay?password=hunter2"}}, "must not carry a password"),
        ({"database": {"url": "mysql://db/relay"}}, "postgresql://"),
        ({"api": {"listen": "0.0.0.0:8443"}}, "needs TLS"),
        ({"api": {"listen": "0.0.0.0:8443", "tls_cert": "/etc/c.pem"}}, "go together"),
        ({"engine": {"preset": "eu"}}, "needs api_key"),
        ({"engine": {"relay_url": "https://relay.chain.lan", "relay_token": "/etc/t"}}, "relay_url"),
    ],
)
def test_a_bad_relay_toml_says_what_is_wrong(changes, words):
    found = problems(relay_data(**changes))
    assert any(words in p for p in found), found


def test_beyond_loopback_with_a_trusted_proxy_is_allowed():
    assert problems(relay_data(api={"listen": "0.0.0.0:8766", "trusted_proxy": "10.0.0.5"})) == []


def test_check_config_exits_0_valid_2_not(tmp_path):
    good = tmp_path / "relay.toml"
    good.write_text('[engine]\npreset = "simulator"\n[database]\nurl = "postgresql:///relay"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[engine]\npreset = "simulator"\n[database]\nurl = "postgresql://u:pw@h/relay"\n')
    cli = [sys.executable, "-m", "tillplug", "relay", "check-config"]
    assert subprocess.run([*cli, str(good)], capture_output=True).returncode == 0
    done = subprocess.run([*cli, str(bad)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "password" in done.stdout
    example = subprocess.run([sys.executable, "-m", "tillplug", "relay", "config", "example"], capture_output=True)
    assert example.returncode == 0
    assert b"[database]" in example.stdout


def test_a_till_in_relay_mode_holds_no_wll_setting_or_secret():
    ok = EngineConfig.model_validate({"relay_url": "https://relay.chain.lan", "relay_token": "/etc/tillplug/token"})
    assert ok.relay_mode
    assert ok.urls()["base_url"] == "https://relay.chain.lan/v1"
    assert ok.urls()["receipts_url"] == "https://relay.chain.lan/receipts/v1"
    for extra in (
        {"api_key": "/etc/k"},
        {"client_secret": "/etc/s"},
        {"client_id": "/etc/i"},
        {"preset": "eu"},
        {"base_url": "https://api.rewards.wlloyalty.net/v1"},
        {"event_type_secrets": {"TRANSACTION": "/etc/s"}},
    ):
        with pytest.raises(ValidationError, match="the relay holds"):
            EngineConfig.model_validate({"relay_url": "https://relay.chain.lan", "relay_token": "/etc/t", **extra})
    with pytest.raises(ValidationError, match="needs both"):
        EngineConfig.model_validate({"relay_url": "https://relay.chain.lan"})
    with pytest.raises(ValidationError, match="https"):
        EngineConfig.model_validate({"relay_url": "http://relay.chain.lan", "relay_token": "/etc/t"})


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_only_the_relay_room_imports_psycopg_and_only_the_cli_imports_the_relay():
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        names = imports(path)
        if not module.startswith("tillplug.relay"):
            assert not any(n.split(".")[0] in ("psycopg", "psycopg_pool") for n in names), module
            if module != "tillplug.commands.cli":
                assert not any(n.startswith("tillplug.relay") for n in names), module


def test_the_till_starts_without_psycopg():
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
        "import tillplug.commands.cli, tillplug.daemon.wiring, tillplug.relay.app, tillplug.relay.service"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_engine_check_on_a_relay_mode_till_points_at_the_relay(tmp_path):
    token = tmp_path / "token"
    token.write_text("tpr1.x\n")
    token.chmod(0o600)
    config = tmp_path / "till.toml"
    config.write_text(
        f'till_id = "T01"\nbranch_id = "B01"\nstate_dir = "{tmp_path}/s"\ncache_dir = "{tmp_path}/c"\n'
        f'[engine]\nrelay_url = "https://relay.chain.lan"\nrelay_token = "{token}"\n'
    )
    check = subprocess.run([sys.executable, "-m", "tillplug", "check-config", str(config)], capture_output=True)
    assert check.returncode == 0, check.stdout
    done = subprocess.run(
        [sys.executable, "-m", "tillplug", "engine-check", "--config", str(config), "--card", "1000001"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "relay" in done.stdout


def test_a_lease_shorter_than_a_delivery_is_refused():
    found = problems(relay_data(outbox={"lease": 5}, engine={"preset": "simulator", "read_timeout": 5.0}))
    assert any("outbox.lease must be at least" in p for p in found), found
