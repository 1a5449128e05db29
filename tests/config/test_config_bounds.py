"""Values a config file can hold that once passed check-config and then stopped or crashed the daemon."""

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillplug.config import check_config, read_secret, validate
from tillplug.config.model import MIN_OUTBOX_RATE
from tillplug.engine.dialect import MAX_DIALECT_BYTES, read_dialect_file
from tillplug.errors import ConfigError

BASE = {"till_id": "t", "branch_id": "b", "engine": {"preset": "simulator"}}


def _paths(report):
    return [p.path for p in report.errors]


@given(st.floats(min_value=0, max_value=MIN_OUTBOX_RATE, exclude_max=True))
def test_an_outbox_rate_too_small_to_ever_send_is_refused(rate):
    """rate_per_second = 1e-320 was accepted and the outbox never sent again."""
    report = validate({**BASE, "outbox": {"rate_per_second": rate}})
    assert _paths(report) == ["outbox.rate_per_second"]


def test_the_smallest_outbox_rates_a_chain_uses_are_accepted():
    assert validate({**BASE, "outbox": {"rate_per_second": 1e-320}}).errors
    assert validate({**BASE, "outbox": {"rate_per_second": MIN_OUTBOX_RATE}}).ok
    assert validate({**BASE, "outbox": {"rate_per_second": 0.02}}).ok


@given(st.floats(min_value=0, max_value=1e-4, exclude_max=True))
def test_fleet_figures_too_small_to_mean_anything_are_refused(tiny):
    outbox = {"fleet_interactive_per_second": tiny, "fleet_writes_per_second": tiny}
    assert sorted(_paths(validate({**BASE, "outbox": outbox}))) == [
        "outbox.fleet_interactive_per_second",
        "outbox.fleet_writes_per_second",
    ]


def _printer(**kw):
    return {"name": "p", "connection": "tcp://127.0.0.1:9100", **kw}


@given(st.integers(min_value=1, max_value=1023))
def test_a_privileged_share_port_is_refused(port):
    """share_port below 1024 passed check-config; the daemon (no capabilities) can never listen there."""
    report = validate({**BASE, "printers": [_printer(share_port=port)]})
    assert _paths(report) == ["printers[0].share_port"]
    assert "1024" in report.errors[0].message


@given(st.integers(min_value=1024, max_value=65535))
def test_the_share_port_may_not_be_the_apis_own_port(port):
    """share_port equal to the API's port was accepted: one of the two could never listen."""
    report = validate({**BASE, "api": {"listen": f"127.0.0.1:{port}"}, "printers": [_printer(share_port=port)]})
    assert _paths(report) == ["printers[0].share_port"]
    assert "api.listen" in report.errors[0].message


def test_two_printers_may_not_share_one_share_port():
    printers = [_printer(share_port=9101), {**_printer(share_port=9101), "name": "q"}]
    assert _paths(validate({**BASE, "printers": printers})) == ["printers[1].share_port"]


def test_an_unprivileged_share_port_of_its_own_is_accepted():
    report = validate({**BASE, "printers": [_printer(share_port=9101), {**_printer(share_port=9102), "name": "q"}]})
    assert report.ok, [str(p) for p in report.problems]


# -- the dialect file ------------------------------------------------------------------------------


def _dialect_config(tmp_path, dialect_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'till_id="t"\nbranch_id="b"\n[engine]\npreset="simulator"\ndialect_file="{dialect_path}"\n')
    return cfg


def test_a_deeply_nested_dialect_file_is_an_error_not_a_crash(tmp_path):
    """A 100k-deep file crash-looped the daemon (RecursionError at start) and check-config called it valid."""
    deep = tmp_path / "dialect.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested"):
        read_dialect_file(deep)
    [problem] = check_config(_dialect_config(tmp_path, deep)).errors
    assert problem.path == "engine.dialect_file" and "nested" in problem.message


def test_a_dialect_file_that_never_ends_is_not_read_past_its_bound(tmp_path):
    """/dev/zero as the dialect file was read to 1.9 GB; check-config called it valid."""
    with pytest.raises(ConfigError, match="not a regular file"):
        read_dialect_file("/dev/zero")
    [problem] = check_config(_dialect_config(tmp_path, "/dev/zero")).errors
    assert "not a regular file" in problem.message
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"answers": {}, "evidence": "x" * MAX_DIALECT_BYTES}))
    with pytest.raises(ConfigError, match="larger than"):
        read_dialect_file(big)


def test_a_fifo_as_the_dialect_file_does_not_hang(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_dialect_file(fifo)


def test_an_unreadable_dialect_file_at_start_means_trusting_nothing(tmp_path, caplog):
    """At start the daemon logs the reason once and runs with every answer unknown (no crash loop)."""
    from tillplug.engine.client import _dialect_or_unknown
    from tillplug.engine.dialect import EngineDialect

    deep = tmp_path / "dialect.json"
    deep.write_text('{"answers": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert _dialect_or_unknown(str(deep)) == EngineDialect()
    assert "nested" in caplog.text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=30,
)


@given(json_values)
def test_any_json_as_the_dialect_answers_reads_or_is_a_config_error(tmp_path_factory, answers):
    path = tmp_path_factory.mktemp("d") / "dialect.json"
    path.write_text(json.dumps({"answers": answers}))
    try:
        dialect = read_dialect_file(path)
    except ConfigError as exc:
        assert "answers" in exc.message or "nested" in exc.message
    else:
        assert set(dialect.to_dict().values()) == {"unknown"}  # nothing it did not understand is trusted


# -- secret files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/proc/self/environ", "/proc/self/comm", "/sys/kernel/uevent_seqnum"])
def test_kernel_pseudo_files_are_not_secret_files(path):
    """/proc/self/environ was accepted as a secret file (it holds the daemon's environment)."""
    report = validate({**BASE, "api": {"token": path}})
    [problem] = report.errors
    assert problem.path == "api.token" and "kernel" in problem.message
    with pytest.raises(ConfigError, match="kernel"):
        read_secret(path)


def test_a_link_to_proc_is_refused_too(tmp_path):
    link = tmp_path / "token"
    link.symlink_to("/proc/self/environ")
    with pytest.raises(ConfigError):
        read_secret(str(link))


def test_devices_and_fifos_are_not_secret_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", "/dev/null", str(fifo)):
        with pytest.raises(ConfigError, match="not a regular file"):
            read_secret(path)


def _depth(value):
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


json_with_brackets_in_strings = st.recursive(
    st.text(alphabet='[]{}"\\ab', max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\a', max_size=4), inner),
    max_leaves=20,
)


@given(json_with_brackets_in_strings, st.booleans())
def test_the_depth_check_counts_what_the_json_parser_would_nest(value, pretty):
    from tillplug.engine.dialect import _nesting

    text = json.dumps(value, indent=2 if pretty else None, ensure_ascii=False)
    assert _nesting(text) == _depth(value)


def test_the_till_group_is_a_group_name():
    scanner = {"name": "s", "port": "/dev/ttyACM0", "till_port": "/run/tillplug/s"}
    report = validate({**BASE, "scanners": [scanner]})
    assert report.ok and report.config.scanners[0].till_group == "tillplug-till"
    bad = validate({**BASE, "scanners": [{**scanner, "till_group": "till group;rm"}]})
    assert _paths(bad) == ["scanners[0].till_group"]
    service_group = validate({**BASE, "scanners": [{**scanner, "till_group": "tillplug"}]})
    assert _paths(service_group) == ["scanners[0].till_group"] and "uinput" in service_group.errors[0].message
    ok = validate({**BASE, "scanners": [{**scanner, "till_group": "pos_users"}]})
    assert ok.ok


def test_a_broken_dialect_file_fails_check_config_but_never_keeps_the_daemon_from_starting(tmp_path, capsys):
    """check-config says it is wrong (exit 2); the daemon starts trusting nothing about the engine, rather
    than restarting for ever (the crash loop seen)."""
    from tillplug.commands.cli import main
    from tillplug.config import load_config

    deep = tmp_path / "dialect.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    cfg = _dialect_config(tmp_path, deep)
    assert main(["check-config", str(cfg)]) == 2
    assert "error: engine.dialect_file:" in capsys.readouterr().out
    assert load_config(cfg).engine.dialect_file == str(deep)
