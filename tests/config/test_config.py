"""The config file: valid files round-trip, every mistake is named by its key path."""

import os
import tomllib

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from tillplug.config import check_config, example_text, load_config, read_secret, validate
from tillplug.config.model import Config
from tillplug.errors import ConfigError

ident = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")
baud = st.sampled_from([1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200])

scanner = st.fixed_dictionaries(
    {"name": ident, "port": st.sampled_from(["/dev/ttyACM0", "socket://127.0.0.1:7000", "/dev/tillplug/s"])},
    optional={
        "baudrate": baud,
        "parity": st.sampled_from("NEO"),
        "terminator": st.sampled_from(["auto", "CR", "LF", "CRLF", "TAB", "none"]),
        "lane": st.integers(1, 999),
        "idle_gap_ms": st.integers(10, 2000),
        "strip_prefix": st.text(max_size=4),
    },
)
printer = st.fixed_dictionaries(
    {"name": ident, "connection": st.sampled_from(["tcp://127.0.0.1:9100", "usb://04b8:0e15", "capture:///tmp/x"])},
    optional={
        "paper_width_mm": st.sampled_from([58, 80]),
        "columns": st.sampled_from([32, 42, 48]),
        "profile": st.sampled_from(["default", "TM-T20II", "TM-T88V"]),
        "status_timeout": st.floats(0.01, 10),
    },
)
valid_config = st.fixed_dictionaries(
    {
        "till_id": ident,
        "branch_id": ident,
        "engine": st.fixed_dictionaries(
            {"preset": st.just("simulator")},
            optional={
                "read_timeout": st.floats(0.1, 120),
                "earn_mode": st.sampled_from(["events", "orders"]),
                "event_types": st.fixed_dictionaries(
                    {}, optional={"transaction": st.from_regex(r"\A[A-Z]{2,10}(_[A-Z]{1,8})?\Z")}
                ),
            },
        ),
    },
    optional={
        "currency": st.sampled_from(["GBP", "EUR", "USD", "JPY", "KWD"]),
        "points": st.fixed_dictionaries(
            {}, optional={"rate_points": st.integers(1, 10**6), "rate_money": st.integers(1, 10**6)}
        ),
        "receipts": st.fixed_dictionaries({}, optional={"header": st.lists(st.text(max_size=64), max_size=3)}),
        "api": st.fixed_dictionaries(
            {}, optional={"listen": st.sampled_from(["127.0.0.1:8765", "[::1]:9000", "localhost:1"])}
        ),
    },
).flatmap(
    lambda base: st.tuples(st.lists(scanner, max_size=3), st.lists(printer, max_size=2)).map(
        lambda sp: _with_devices(base, *sp)
    )
)


def _with_devices(base, scanners, printers):
    # Device names must be unique across both kinds.
    for i, s in enumerate(scanners):
        s["name"] = f"s{i}-{s['name']}"
    for i, p in enumerate(printers):
        p["name"] = f"p{i}-{p['name']}"
    return {**base, "scanners": scanners, "printers": printers}


@given(valid_config)
def test_valid_configs_round_trip_through_toml(data):
    first = Config.model_validate(data)
    text = tomli_w.dumps(first.model_dump(mode="json", exclude_none=True))
    second = Config.model_validate(tomllib.loads(text))
    assert second == first


# (key path, bad value) — each must produce a message naming exactly that key.
BAD_VALUES = [
    (("scanners", 0, "baudrate"), 9601, "scanners[0].baudrate"),
    (("scanners", 0, "parity"), "X", "scanners[0].parity"),
    (("scanners", 0, "lane"), 0, "scanners[0].lane"),
    (("scanners", 0, "terminator"), "CRCR", "scanners[0].terminator"),
    (("printers", 0, "paper_width_mm"), 76, "printers[0].paper_width_mm"),
    (("printers", 0, "columns"), 40, "printers[0].columns"),
    (("currency",), "pounds", "currency"),
    (("engine", "read_timeout"), -1, "engine.read_timeout"),
    (("engine", "event_types", "transaction"), "transaction", "engine.event_types.transaction"),
    (("points", "rate_points"), 0, "points.rate_points"),
    (("barcodes", "member"), ["(unclosed"], "barcodes.member[0]"),
    (("api", "token"), "plain-secret-in-file", "api.token"),
]


def _set(data, path, value):
    cur = data
    for part in path[:-1]:
        cur = cur.setdefault(part, {}) if isinstance(part, str) else cur[part]
    cur[path[-1]] = value


@given(valid_config, st.sampled_from(BAD_VALUES))
def test_an_invalid_value_is_reported_at_its_key_path(data, bad):
    path, value, expected = bad
    data.setdefault("scanners", []).insert(0, {"name": "first-scanner", "port": "/dev/ttyACM9"})
    data.setdefault("printers", []).insert(0, {"name": "first-printer", "connection": "tcp://127.0.0.1:9100"})
    _set(data, path, value)
    report = validate(data, check_secrets=False)
    assert not report.ok
    assert expected in [p.path for p in report.errors]


def test_unknown_key_is_an_error_with_a_suggestion():
    report = validate(
        {
            "till_id": "t",
            "branch_id": "b",
            "engine": {"preset": "simulator"},
            "scanners": [{"name": "s", "port": "/dev/x", "baudrat": 9600}],
        }
    )
    [problem] = report.errors
    assert problem.path == "scanners[0].baudrat"
    assert "did you mean 'baudrate'" in problem.message


FIVE_MISTAKES = """
till_id = "till 01"
branch_id = "b1"
currency = "GBX"
[engine]
preset = "simulator"
timeout = 3
[[scanners]]
name = "s0"
port = "/dev/ttyACM0"
[[scanners]]
name = "s1"
port = "/dev/ttyACM1"
baudrate = 9601
parity = "X"
"""


def test_five_mistakes_give_five_messages(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(FIVE_MISTAKES)
    report = check_config(f)
    assert sorted(p.path for p in report.errors) == [
        "currency",
        "engine.timeout",
        "scanners[1].baudrate",
        "scanners[1].parity",
        "till_id",
    ]


def test_toml_syntax_error_names_the_line(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('till_id = "x"\n\nbranch_id = \n')
    [problem] = check_config(f).errors
    assert "line 3" in problem.message


def test_real_engine_needs_credentials():
    report = validate({"till_id": "t", "branch_id": "b", "engine": {"preset": "eu"}})
    [problem] = report.errors
    assert problem.path == "engine" and "api_key" in problem.message


def test_plain_http_only_to_loopback():
    bad = validate(
        {
            "till_id": "t",
            "branch_id": "b",
            "engine": {
                "base_url": "http://engine.example/v1",
                "api_key": "/k",
                "client_id": "/i",
                "client_secret": "/s",
            },
        },
        check_secrets=False,
    )
    assert [p.path for p in bad.errors] == ["engine.base_url"]
    good = validate(
        {"till_id": "t", "branch_id": "b", "engine": {"preset": "simulator", "base_url": "http://127.0.0.1:9/v1"}},
        check_secrets=False,
    )
    assert good.ok


def test_api_beyond_loopback_requires_a_token():
    report = validate(
        {"till_id": "t", "branch_id": "b", "engine": {"preset": "simulator"}, "api": {"listen": "0.0.0.0:8765"}}
    )
    assert [p.path for p in report.errors] == ["api"]
    assert "token" in report.errors[0].message


def test_secret_files_missing_empty_and_world_readable(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    open_ = tmp_path / "open"
    open_.write_text("s3cr3t-value\n")
    os.chmod(open_, 0o644)
    data = {
        "till_id": "t",
        "branch_id": "b",
        "engine": {
            "preset": "eu",
            "api_key": str(tmp_path / "missing"),
            "client_id": str(empty),
            "client_secret": str(open_),
        },
    }
    report = validate(data)
    by_path = {p.path: p for p in report.problems}
    assert "does not exist" in by_path["engine.api_key"].message
    assert "empty" in by_path["engine.client_id"].message
    assert by_path["engine.client_secret"].severity == "warning"
    assert "s3cr3t" not in "".join(str(p) for p in report.problems)


def test_secret_is_never_shown_in_a_repr(tmp_path):
    f = tmp_path / "k"
    f.write_text("hunter2\n")
    os.chmod(f, 0o600)
    secret = read_secret(str(f))
    assert secret.reveal() == "hunter2"
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret) and "hunter2" not in f"{[secret]}"


def test_systemd_credential_is_read_from_credentials_directory(tmp_path, monkeypatch):
    (tmp_path / "wll-key").write_text("k-123")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_secret("credential:wll-key").reveal() == "k-123"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        read_secret("credential:wll-key")


def test_example_config_is_valid_with_installed_drivers(tmp_path):
    from tillplug.devices.registry import driver_names

    f = tmp_path / "example.toml"
    f.write_text(example_text())
    report = check_config(f, known_drivers=driver_names())
    assert report.ok, [str(p) for p in report.problems]


def test_load_config_raises_with_every_problem(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(FIVE_MISTAKES)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert len(info.value.problems) == 5


def test_a_simulator_elsewhere_serves_auth_and_receipts_from_the_same_place():
    from tillplug.config.model import EngineConfig

    urls = EngineConfig(preset="simulator", base_url="http://127.0.0.1:9000/v1").urls()
    assert urls == {
        "base_url": "http://127.0.0.1:9000/v1",
        "auth_url": "http://127.0.0.1:9000/oauth/token",
        "receipts_url": "http://127.0.0.1:9000/receipts/v1",
    }
    eu = EngineConfig(preset="eu", api_key="/k", client_id="/i", client_secret="/s").urls()
    assert eu["auth_url"] == "https://auth.wlloyalty.net/oauth/token"


def test_proxy_and_ca_file_are_checked():
    base = {"till_id": "t", "branch_id": "b"}
    good = validate({**base, "engine": {"preset": "simulator", "proxy": "http://proxy.shop.lan:3128"}})
    assert good.ok
    bad = validate({**base, "engine": {"preset": "simulator", "proxy": "proxy:3128", "ca_file": "/nonexistent/ca.pem"}})
    assert [p.path for p in bad.errors] == ["engine.proxy"]
    missing = validate({**base, "engine": {"preset": "simulator", "ca_file": "/nonexistent/ca.pem"}})
    assert [p.path for p in missing.errors] == ["engine.ca_file"]


@pytest.mark.parametrize(
    ("outbox", "says"),
    [
        ({"fleet_writes_per_second": 0.004}, "needs fleet_interactive_per_second"),
        (
            {"rate_per_second": 0.02, "fleet_interactive_per_second": 0.015, "fleet_writes_per_second": 0.005},
            "must be below rate_per_second (0.02)",
        ),
    ],
)
def test_the_chains_figures_must_come_together_and_leave_room_in_the_share(outbox, says):
    report = validate({"till_id": "t", "branch_id": "b", "engine": {"preset": "simulator"}, "outbox": outbox})
    [problem] = report.errors
    assert problem.path == "outbox" and says in problem.message


def test_the_chains_figures_that_leave_room_are_accepted():
    report = validate(
        {
            "till_id": "t",
            "branch_id": "b",
            "engine": {"preset": "simulator"},
            "outbox": {
                "rate_per_second": 0.02,
                "fleet_interactive_per_second": 0.0096,
                "fleet_writes_per_second": 0.004,
            },
        }
    )
    assert not report.errors and report.config.outbox.fleet_writes_per_second == 0.004
