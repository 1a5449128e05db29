"""`tillplug run` on an unconfigured till: enrolment mode, a code scanned, then the daemon itself."""

import signal
import socket
import subprocess
import sys

import httpx

from tillplug.commands.cli import main
from tillplug.commands.virtual.till import VirtualScanner, poll_until
from tillplug.config.enrolment import load_private_key, make_code
from tillplug.sim import SimServer

TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_run_waits_for_a_code_then_starts_the_daemon_as_the_code_says(tmp_path):
    prefix = tmp_path / "chain" / "enrolment"
    prefix.parent.mkdir()
    assert main(["enrol", "keygen", "--out", str(prefix)]) == 0
    port = free_port()
    scanner = VirtualScanner(tmp_path / "scanner")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "enrolment.pub").write_bytes(prefix.with_suffix(".pub").read_bytes())
    config = etc / "tillplug.toml"
    config.write_text(  # the image's base layer: devices, where state goes, no identity and no engine
        f'state_dir = "{tmp_path / "state"}"\ncache_dir = "{tmp_path / "cache"}"\n'
        f'[api]\nlisten = "127.0.0.1:{port}"\n'
        f'[[scanners]]\nname = "s1"\nport = "{scanner.link}"\nterminator = "CRLF"\n'
        f'[[printers]]\nname = "p1"\nconnection = "capture://{tmp_path / "p1.bin"}"\nprofile = "TM-T20II"\n'
    )
    log = tmp_path / "run.log"
    with SimServer() as sim, log.open("wb") as out:
        layer = tmp_path / "chain" / "10-chain.toml"
        layer.write_text(f'[engine]\npreset = "simulator"\nbase_url = "{sim.url}/v1"\n')
        key = load_private_key(prefix.with_suffix(".key"))
        code = make_code(key, till_id="till-07", branch_id="b-12", config_url=f"file://{layer}")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "tillplug", "run", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
        try:
            assert poll_until(lambda: b"waiting for an enrolment code" in log.read_bytes(), TIMEOUT), log.read_text()
            scanner.scan(code)

            def health() -> dict[str, object] | None:
                try:
                    answer: dict[str, object] = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).json()
                except httpx.HTTPError:
                    return None
                return answer

            assert poll_until(lambda: health() is not None, TIMEOUT, every=0.2), log.read_text()
            answer = health()
            assert answer is not None and answer["tillId"] == "till-07"
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)
            scanner.close()
    text = log.read_text()
    assert "enrolled as till till-07 of branch b-12" in text
    assert code not in text and code[5:40] not in text
