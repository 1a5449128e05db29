"""Enrolment at the till: an unconfigured till reads only its scanners, takes a code signed by the
chain's key, writes its layers, prints its slip; anything else is refused and changes nothing."""

import logging
import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tillplug.drivers.serial_scanner import SerialScanner

from tillplug.commands.cli import main
from tillplug.commands.virtual.till import VirtualScanner, poll_until
from tillplug.config import load_config
from tillplug.config.enrolment import load_private_key, make_code, read_code
from tillplug.config.model import EngineConfig
from tillplug.daemon.enrolment import apply, unconfigured, wait_for_enrolment
from tillplug.devices.registry import Registry
from tillplug.errors import EnrolmentRefused
from tillplug.logs import JournalFormatter
from tillplug.receipts.preview import interpret

TIMEOUT = 30.0


def chain_keys(tmp_path: Path) -> tuple[Path, Path]:
    prefix = tmp_path / "chain" / "enrolment"
    prefix.parent.mkdir()
    assert main(["enrol", "keygen", "--out", str(prefix)]) == 0
    return prefix.with_suffix(".key"), prefix.with_suffix(".pub")


def base_till(tmp_path: Path, scanner: VirtualScanner, public_key: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "enrolment.pub").write_bytes(public_key.read_bytes())
    config = etc / "tillplug.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\ncache_dir = "{tmp_path / "cache"}"\n[engine]\npreset = "simulator"\n'
        f'[[scanners]]\nname = "s1"\nport = "{scanner.link}"\nterminator = "CRLF"\n'
        f'[[printers]]\nname = "p1"\nconnection = "capture://{tmp_path / "p1.bin"}"\nprofile = "TM-T20II"\n'
    )
    return config


def printed(tmp_path: Path) -> str:
    """The capture printer's slips as text, without spaces (double-size titles are printed spaced out)."""
    path = tmp_path / "p1.bin"
    return interpret(path.read_bytes()).text().replace(" ", "") if path.exists() else ""


def assert_enrolled(config: Path, tmp_path: Path, layer: Path, code: str, records: list[logging.LogRecord]) -> None:
    enrolled = load_config(config)
    assert (enrolled.till_id, enrolled.branch_id, enrolled.currency) == ("till-07", "b-12", "EUR")
    assert enrolled.enrolment.config_url == f"file://{layer}"
    relay = config.parent / "conf.d" / "relay-token"
    assert relay.read_text().strip() == "relay-token-for-till-07-secret"
    assert stat.S_IMODE(relay.stat().st_mode) == 0o600
    slip = printed(tmp_path)
    assert "Enrolled" in slip and "Tilltill-07" in slip and "Branchb-12" in slip and "Relaytokenstored" in slip
    assert unconfigured(config) is None  # the next start runs the daemon
    # Never in the logs, formatted or not, nor on the slip: the code and the relay token.
    formatter = JournalFormatter(prefix_priority=True)
    logged = "\n".join([r.getMessage() for r in records] + [formatter.format(r) for r in records])
    assert "relay-token-for-till-07-secret" not in logged + slip
    assert code not in logged and code.split(".", maxsplit=1)[0][5:40] not in logged


def test_an_unconfigured_till_enrols_from_a_signed_code_and_refuses_the_rest(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    key, public = chain_keys(tmp_path)
    scanner = VirtualScanner(tmp_path / "scanner")
    config = base_till(tmp_path, scanner, public)
    # A chain on the relay (#24): its code carries the till's relay token, its layer the relay's address.
    config.write_text(config.read_text().replace('[engine]\npreset = "simulator"\n', ""))
    good_layer = tmp_path / "chain" / "10-chain.toml"
    good_layer.write_text(
        'currency = "EUR"\n[receipts]\nheader = ["Chain Shop"]\n[engine]\nrelay_url = "https://relay.chain.example"\n'
    )
    bad_layer = tmp_path / "chain" / "bad.toml"
    bad_layer.write_text('currency = "XXX"\n')
    token = tmp_path / "chain" / "relay-token"
    token.write_text("relay-token-for-till-07-secret\n")
    token.chmod(0o600)

    def code(layer: Path, key_file: Path = key) -> str:
        return make_code(
            load_private_key(key_file),
            till_id="till-07",
            branch_id="b-12",
            config_url=f"file://{layer}",
            relay_token="relay-token-for-till-07-secret",
        )

    (tmp_path / "other").mkdir()
    other_key, _ = chain_keys(tmp_path / "other")
    setup = unconfigured(config)
    assert setup is not None and [s.name for s in setup.scanners] == ["s1"]
    result: list[object] = []
    refusals: list[str] = []
    stop = threading.Event()
    waiter = threading.Thread(
        target=lambda: result.append(wait_for_enrolment(setup, stop=stop, on_refused=refusals.append)), daemon=True
    )
    waiter.start()
    try:
        assert poll_until(lambda: "waiting for an enrolment code" in caplog.text, TIMEOUT)
        scanner.scan("4006381333931")  # a product: ignored, nothing printed
        scanner.scan(code(good_layer, other_key))  # another chain's code
        assert poll_until(lambda: len(refusals) == 1, TIMEOUT)
        assert "not signed by this chain's enrolment key" in refusals[0]
        assert poll_until(lambda: "Enrolmentrefused" in printed(tmp_path), TIMEOUT)
        scanner.scan(code(bad_layer))  # signed, but its layer makes no valid config
        assert poll_until(lambda: len(refusals) == 2, TIMEOUT)
        assert "config is not valid" in refusals[1] and "currency" in refusals[1]
        assert not (config.parent / "conf.d" / "00-enrolment.toml").exists()  # nothing kept from it
        assert not (config.parent / "conf.d" / "relay-token").exists()
        good = code(good_layer)
        scanner.scan(good)
        waiter.join(TIMEOUT)
        assert not waiter.is_alive()
    finally:
        stop.set()
        waiter.join(5)
        scanner.close()

    assert result and getattr(result[0], "till_id", None) == "till-07"
    assert_enrolled(config, tmp_path, good_layer, good, caplog.records)


def test_make_code_on_the_command_line_reads_back_at_the_till(tmp_path, capsys):
    key, public = chain_keys(tmp_path)
    capsys.readouterr()
    args = ["enrol", "make-code", "--key", str(key), "--till", "t-1", "--branch", "b-1"]
    assert main([*args, "--config-url", "https://config.chain.example/layer.toml"]) == 0
    code = capsys.readouterr().out.strip()
    keys = [serialization.load_pem_public_key(public.read_bytes())]
    assert read_code(code, keys).till_id == "t-1"  # type: ignore[arg-type]
    assert main([*args, "--config-url", "https://x.example/l.toml", "--png", str(tmp_path / "code.png")]) == 0
    assert (tmp_path / "code.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["enrol", "keygen", "--out", str(key.with_suffix(""))]) == 2  # never overwrites the chain's key


def test_a_configured_till_or_one_without_a_key_never_enters_enrolment(tmp_path):
    _, public = chain_keys(tmp_path)
    scanner = VirtualScanner(tmp_path / "scanner")
    try:
        config = base_till(tmp_path, scanner, public)
        assert unconfigured(config) is not None
        (config.parent / "enrolment.pub").unlink()
        assert unconfigured(config) is None  # the loader then says till_id is missing, as before
        (config.parent / "enrolment.pub").write_bytes(public.read_bytes())
        config.write_text('till_id = "t"\nbranch_id = "b"\n' + config.read_text())
        assert unconfigured(config) is None
    finally:
        scanner.close()


@pytest.mark.skipif("relay_token" not in EngineConfig.model_fields, reason="relay mode (#24) is not in this tree")
def test_a_relay_token_in_the_code_becomes_the_tills_engine_relay_token(tmp_path):
    key, public = chain_keys(tmp_path)
    scanner = VirtualScanner(tmp_path / "scanner")
    try:
        config = base_till(tmp_path, scanner, public)
        config.write_text(config.read_text().replace('[engine]\npreset = "simulator"\n', ""))
        layer = tmp_path / "chain" / "10-chain.toml"
        layer.write_text('[engine]\nrelay_url = "https://relay.chain.example"\n')
        code = make_code(
            load_private_key(key),
            till_id="till-07",
            branch_id="b-12",
            config_url=f"file://{layer}",
            relay_token="relay-token-for-till-07-secret",
        )
        setup = unconfigured(config)
        assert setup is not None
        enrolled = apply(setup, read_code(code, setup.keys))
        engine = enrolled.engine.model_dump()  # by name: this tree's model may predate relay mode
        assert engine["relay_token"] == str(config.parent / "conf.d" / "relay-token")
        assert load_config(config).engine.model_dump()["relay_url"] == "https://relay.chain.example"
    finally:
        scanner.close()


def test_a_config_folder_the_service_cannot_write_refuses_the_code_and_keeps_waiting(tmp_path):
    key, public = chain_keys(tmp_path)
    scanner = VirtualScanner(tmp_path / "scanner")
    try:
        config = base_till(tmp_path, scanner, public)
        layer = tmp_path / "chain" / "10-chain.toml"
        layer.write_text('currency = "EUR"\n')
        (config.parent / "conf.d").mkdir()
        (config.parent / "conf.d" / "00-enrolment.toml").mkdir()  # stands for a read-only /etc: cannot be written
        setup = unconfigured(config)
        assert setup is not None
        code = make_code(load_private_key(key), till_id="t-1", branch_id="b-1", config_url=f"file://{layer}")
        with pytest.raises(EnrolmentRefused, match=r"cannot write .*conf\.d"):
            apply(setup, read_code(code, setup.keys))
        assert not (config.parent / "conf.d" / "10-chain.toml").exists()  # nothing half-written stays
        assert unconfigured(config) is not None
    finally:
        scanner.close()


def test_the_shipped_drop_in_lets_the_service_write_exactly_the_enrolment_folder():
    from tillplug.commands.cli import DEFAULT_CONFIG
    from tillplug.config.layers import DROP_IN_DIR

    drop_in = Path(__file__).resolve().parents[2] / "ops" / "enrolment" / "tillplug.service.d" / "20-enrolment.conf"
    paths = [line.split("=", 1)[1].split() for line in drop_in.read_text().splitlines() if line.startswith("ReadWrite")]
    assert paths == [[str(Path(DEFAULT_CONFIG).parent / DROP_IN_DIR)]]


def test_the_till_says_it_waits_at_the_scanners_only_once_they_are_open(tmp_path, caplog):
    """Seen in CI on a loaded machine: the till logged "waiting for an enrolment code" before its
    scanner's port was open, the code was scanned at once, and pyserial's open emptied the port: the
    code was lost and the till waited for ever.  A scanner slow to open must not lose the first scan."""
    caplog.set_level(logging.INFO)
    _, public = chain_keys(tmp_path)
    (tmp_path / "other").mkdir()
    other_key, _ = chain_keys(tmp_path / "other")
    scanner = VirtualScanner(tmp_path / "scanner")
    config = base_till(tmp_path, scanner, public)
    setup = unconfigured(config)
    assert setup is not None

    class SlowToOpen(SerialScanner):
        def open(self) -> None:
            time.sleep(0.5)  # a USB adapter still settling, or a loaded machine
            super().open()

    registry = Registry(drivers={"serial-scanner": SlowToOpen})
    refusals: list[str] = []
    stop = threading.Event()
    waiter = threading.Thread(
        target=lambda: wait_for_enrolment(setup, stop=stop, registry=registry, on_refused=refusals.append), daemon=True
    )
    waiter.start()
    try:
        assert poll_until(lambda: "waiting for an enrolment code" in caplog.text, TIMEOUT, every=0.005)
        layer = tmp_path / "chain" / "10-chain.toml"
        layer.write_text('currency = "EUR"\n')
        scanner.scan(
            make_code(load_private_key(other_key), till_id="till-07", branch_id="b-12", config_url=f"file://{layer}")
        )
        assert poll_until(lambda: len(refusals) == 1, 10.0), "the first code scanned was lost"
    finally:
        stop.set()
        waiter.join(5)
        scanner.close()
