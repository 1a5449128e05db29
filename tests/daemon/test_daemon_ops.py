"""The daemon as systemd runs it: READY/WATCHDOG/RELOADING/STOPPING, SIGHUP, SIGTERM; status, sniff, metrics, logs."""

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tillplug.commands.virtual.till import VirtualScanner, VirtualTill
from tillplug.logs import JournalFormatter, MaskingFilter, mask
from tillplug.sim import SimServer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_notify(sock, until, timeout=15):
    got, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(until in m for m in got):
            return got
    raise AssertionError(f"no {until!r} from the daemon; got {got}")


def daemon_config(tmp_path: Path, sim: SimServer, port: int) -> str:
    """A till's config against ``sim``, its API on ``port``: the part every daemon test shares."""
    return (
        f'till_id="t1"\nbranch_id="b1"\nstate_dir="{tmp_path}/state"\ncache_dir="{tmp_path}/cache"\n'
        f'[engine]\npreset="simulator"\nbase_url="{sim.url}/v1"\nauth_url="{sim.url}/oauth/token"\n'
        f'[api]\nlisten="127.0.0.1:{port}"\n'
    )


def test_the_daemon_under_systemd_notify_watchdog_reload_and_stop(tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    scanner = VirtualScanner(tmp_path / "scanner0")
    port = free_port()
    with SimServer() as sim:
        cfg = tmp_path / "tillplug.toml"
        base = daemon_config(tmp_path, sim, port) + f'[[scanners]]\nname="s0"\nport="{scanner.link}"\n'
        cfg.write_text(base)
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tillplug", "run", "--config", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            ready = read_notify(notify, "READY=1")
            assert httpx.get(f"http://127.0.0.1:{port}/v1/health").json()["devices"][0]["state"] == "ready"
            assert any("WATCHDOG=1" in m for m in read_notify(notify, "WATCHDOG=1"))  # fed from the loop
            cfg.write_text(base + f'[[printers]]\nname="p0"\nconnection="capture://{tmp_path}/p0.bin"\n')
            proc.send_signal(signal.SIGHUP)
            reload = read_notify(notify, "READY=1")
            assert any("RELOADING=1" in m for m in reload)
            names = [d["name"] for d in httpx.get(f"http://127.0.0.1:{port}/v1/health").json()["devices"]]
            assert names == ["s0", "p0"]
            cfg.write_text("this is not toml")  # a broken reload keeps the running config
            proc.send_signal(signal.SIGHUP)
            read_notify(notify, "READY=1")
            assert httpx.get(f"http://127.0.0.1:{port}/v1/health").status_code == 200
            # The till software is always listening on the event stream: stopping must not wait on it.
            with httpx.stream("GET", f"http://127.0.0.1:{port}/v1/events", timeout=10) as stream:
                lines = stream.iter_lines()
                next(lines)
                stopped_at = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                assert any("STOPPING=1" in m for m in read_notify(notify, "STOPPING=1"))
                assert proc.wait(20) == 0
                for _ in lines:  # the stream ends cleanly: a cut-off one would raise RemoteProtocolError
                    pass
            assert time.monotonic() - stopped_at < 5
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            stderr = proc.stderr.read()
            proc.stderr.close()
            scanner.close()
            notify.close()
    assert "reload refused" in stderr and ready
    assert "Exception in ASGI application" not in stderr


def test_status_asks_the_running_daemon(tmp_path, capsys):
    from tillplug.commands.cli import main

    with VirtualTill(tmp_path / "till") as till:
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'till_id="t"\nbranch_id="b"\n[engine]\npreset="simulator"\n'
            f'[api]\nlisten="127.0.0.1:{till.daemon.api_port}"\n'
        )
        assert main(["status", "--config", str(cfg)]) == 0
        out = capsys.readouterr().out
        assert "status ok" in out and "scanner1" in out and "printer1" in out and "outbox  0 waiting" in out
    assert main(["status", "--config", str(cfg)]) == 1  # not running any more
    assert "is not running" in capsys.readouterr().err


def test_sniff_shows_bytes_and_guesses_the_terminator(tmp_path):
    scanner = VirtualScanner(tmp_path / "scanner")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tillplug", "sniff", str(scanner.link), "--seconds", "10", "--count", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready and "listening on" in proc.stdout.readline()  # the port is open: no scan is lost
        scanner.scan("]E04006381333931")
        scanner.scan("1000001")
        out, err = proc.communicate(timeout=20)
    finally:
        scanner.close()
    assert proc.returncode == 0, err
    assert "0d 0a" in out and "]E04006381333931" in out
    assert 'terminator = "CRLF"' in out and "AIM symbology" in out


def test_metrics_for_fleet_operators(tmp_path):
    with VirtualTill(tmp_path / "till") as till:
        till.scan(1, "1000001")
        till.scan(1, "4006381333931")
        assert till.wait_for(lambda: len([e for e in till.events() if e["type"] == "scan"]) == 2)
        # The scan event goes out before the handler counts it: wait for the counters themselves.
        assert till.wait_for(lambda: 'tillplug_scans_total{kind="other"} 1.0' in till.api.get("/metrics").text)
        text = till.api.get("/metrics").text
    assert 'tillplug_scans_total{kind="member"} 1.0' in text
    assert 'tillplug_scans_total{kind="other"} 1.0' in text
    assert 'tillplug_engine_request_seconds_count{endpoint="wallet"}' in text
    assert "tillplug_outbox_depth 0.0" in text and "tillplug_outbox_dead 0.0" in text
    assert 'tillplug_printer_status{printer="printer1",state="ok"} 1.0' in text
    assert 'tillplug_device_ready{device="scanner1",kind="scanner"} 1.0' in text


def test_api_beyond_loopback_requires_the_token(tmp_path):
    token = tmp_path / "token"
    token.write_text("t0ken-value")
    token.chmod(0o600)
    with VirtualTill(tmp_path / "till", api={"listen": "127.0.0.1:0", "token": str(token)}) as till:
        assert till.api.get("/v1/health").status_code == 401
        assert till.api.get("/metrics").status_code == 401
        assert till.api.get("/v1/health", headers={"Authorization": "Bearer t0ken-value"}).status_code == 200


def test_logs_mask_member_ids_and_stay_on_one_line():
    record = logging.LogRecord(
        "tillplug",
        logging.WARNING,
        __file__,
        1,
        "member %s failed\nsecond line",
        ("5a1b2c3d-0000-4000-8000-000000000001",),
        None,
    )
    MaskingFilter().filter(record)
    line = JournalFormatter(prefix_priority=True).format(record)
    assert line == "<4>tillplug: member …0001 failed | second line"
    assert mask("1000001") == "…0001" and mask(None) == "-"


def test_no_secret_or_member_id_reaches_the_logs(tmp_path, caplog):
    key = tmp_path / "key"
    key.write_text("sim-api-key-0000")
    key.chmod(0o600)
    caplog.set_level(logging.DEBUG)
    with VirtualTill(tmp_path / "till", log_level="debug") as till:
        till.sim.sim.faults.update({"down": True})
        till.api.post("/v1/checkouts", json={"transactionId": "T1"})
        till.api.put("/v1/checkouts/T1/member", json={"code": "1000001"})
        till.sim.sim.faults.update({"down": False})
        till.api.put("/v1/checkouts/T1/member", json={"code": "1000001"})
        till.api.post("/v1/checkouts/T1/points", json={"points": 10})
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("tillplug"))
    assert "sim-api-key-0000" not in logged and "sim-client-secret" not in logged
    assert "5a1b2c3d-0000-4000-8000-000000000001" not in logged


def bare_config(tmp_path):
    """A till's config with the simulator preset and nothing else: enough to build a Daemon."""
    from tillplug.config import Config

    return Config.model_validate(
        {
            "till_id": "till-1",
            "branch_id": "b-1",
            "state_dir": str(tmp_path / "s"),
            "cache_dir": str(tmp_path / "c"),
            "engine": {"preset": "simulator", "api_key": "/k", "client_id": "/i", "client_secret": "/s"},
        }
    )


def test_stop_before_start_releases_nothing_and_does_not_crash(tmp_path):
    """A daemon stopped before (or after a failed) start has nothing open; stop() must not raise."""
    import asyncio

    from tillplug.daemon.wiring import Daemon

    config = bare_config(tmp_path)
    asyncio.run(Daemon(config).stop())


def test_a_sighup_applies_changed_outbox_pacing_figures_at_once(tmp_path):
    """The fleet dashboard's averages (and the share) are written into the config and the daemon is sent
    SIGHUP: the outbox is paced by them from then on, and health shows the figures it is paced by."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    port = free_port()
    with SimServer() as sim:
        cfg = tmp_path / "tillplug.toml"
        base = daemon_config(tmp_path, sim, port)
        cfg.write_text(base + "[outbox]\nrate_per_second = 2\nburst = 4\n")
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tillplug", "run", "--config", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            read_notify(notify, "READY=1")
            pacing = httpx.get(f"http://127.0.0.1:{port}/v1/health").json()["outbox"]["pacing"]
            assert pacing["sharePerSecond"] == 2 and pacing["fleetInteractivePerSecond"] is None
            assert pacing["fleetWritesPerSecond"] is None
            cfg.write_text(
                base + "[outbox]\nrate_per_second = 1\nburst = 2\n"
                "fleet_interactive_per_second = 0.48\nfleet_writes_per_second = 0.2\n"
            )
            proc.send_signal(signal.SIGHUP)
            assert any("RELOADING=1" in m for m in read_notify(notify, "READY=1"))
            pacing = httpx.get(f"http://127.0.0.1:{port}/v1/health").json()["outbox"]["pacing"]
            assert pacing["sharePerSecond"] == 1
            assert pacing["fleetInteractivePerSecond"] == 0.48 and pacing["fleetWritesPerSecond"] == 0.2
            assert pacing["ratePerSecond"] <= 1 * 4  # at most the new ceiling: the old rate was rescaled
        finally:
            proc.terminate()
            proc.wait(20)
            notify.close()


def test_a_refund_the_outbox_drops_as_not_needed_is_counted_in_the_metrics(tmp_path: Path) -> None:
    """Issue 21: a refund dropped because the engine shows its deduction never applied showed in
    health only (``deduction_not_applied``); a chain watching its tills' metrics never saw it.
    The daemon's wiring of the outbox now counts each one as well as telling health."""
    import asyncio
    import re
    from types import SimpleNamespace

    from tillplug.daemon.wiring import Daemon

    config = bare_config(tmp_path)
    daemon = Daemon(config)
    told: list[str] = []
    daemon.deliverer = SimpleNamespace(on_change=None, on_not_applied=None)  # type: ignore[assignment]
    daemon.loyalty = SimpleNamespace(  # type: ignore[assignment]
        returns=SimpleNamespace(outbox_moved=lambda: None),
        points=SimpleNamespace(saw_not_applied=lambda: told.append("deduction_not_applied")),
    )

    def counted() -> float:
        text = daemon.metrics.exposition()[0].decode()
        found = re.search(r"^tillplug_outbox_refunds_not_needed_total (\S+)$", text, re.MULTILINE)
        assert found, text
        return float(found.group(1))

    daemon._tell_flows_of_the_outbox()
    assert counted() == 0
    told_by_the_outbox = daemon.deliverer.on_not_applied
    assert told_by_the_outbox is not None
    told_by_the_outbox()
    told_by_the_outbox()
    assert counted() == 2
    assert told == ["deduction_not_applied"] * 2  # health still names the reactor
    asyncio.run(daemon.stop())
