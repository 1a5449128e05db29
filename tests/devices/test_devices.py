"""The driver layer: registry, scanner supervision on real pty pairs, busy ports."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from tillplug.commands.virtual.till import VirtualScanner, poll_until
from tillplug.config.model import ScannerConfig
from tillplug.devices.registry import load_drivers
from tillplug.devices.supervisor import DeviceState, ScannerSupervisor
from tillplug.errors import DeviceBusy, DriverError


def wait_until(predicate, timeout=5.0):
    return poll_until(predicate, timeout)


@pytest.fixture
def scanner(tmp_path):
    v = VirtualScanner(tmp_path / "scanner0")
    yield v
    v.close()


def supervise(port, scans, states=None, loop=None, **cfg):
    registry = load_drivers()
    config = ScannerConfig(name="scanner0", port=port, **cfg)
    sup = ScannerSupervisor(
        config,
        registry.get("serial-scanner"),
        scans.append,
        (lambda h: states.append(h.state)) if states is not None else (lambda h: None),
        loop=loop,
    )
    sup.start()
    return sup


def test_scans_arrive_from_a_pty(scanner, reader_loop):
    scans = []
    sup = supervise(str(scanner.link), scans, terminator="CRLF", loop=reader_loop)
    try:
        assert wait_until(lambda: sup.health.state is DeviceState.READY)
        scanner.scan("]E04006381333931\r\n1000", terminator=b"")
        scanner.scan("001")
        assert wait_until(lambda: len(scans) == 2)
        assert [(s.text, s.symbology, s.lane) for s in scans] == [("4006381333931", "]E0", 1), ("1000001", None, 1)]
    finally:
        sup.stop()


@pytest.fixture(params=["thread", "event loop"])
def reader_loop(request):
    """Scanners are read by their thread, or (real ttys in the daemon) by the event loop."""
    if request.param == "thread":
        yield None
        return
    import asyncio
    import threading

    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    runner.join(5)
    loop.close()


def test_unplug_and_replug_resume_reads_within_two_seconds(scanner, reader_loop):
    scans, states = [], []
    sup = supervise(str(scanner.link), scans, states, loop=reader_loop)
    try:
        assert wait_until(lambda: sup.health.state is DeviceState.READY)
        scanner.scan("FIRST-1", terminator=b"\r")
        assert wait_until(lambda: len(scans) == 1)
        scanner.unplug()
        assert wait_until(lambda: sup.health.state is DeviceState.STALE)
        time.sleep(0.5)  # stays unplugged a while: the supervisor keeps trying
        scanner.plug()
        replugged = time.monotonic()
        assert wait_until(lambda: sup.health.state is DeviceState.READY, timeout=2.0)
        scanner.scan("SECOND-2", terminator=b"\r")
        assert wait_until(lambda: len(scans) == 2, timeout=2.0 - (time.monotonic() - replugged) + 0.5)
        assert [s.text for s in scans] == ["FIRST-1", "SECOND-2"]
        assert sup.health.reconnects == 1
        assert DeviceState.STALE in states
    finally:
        sup.stop()


def test_a_port_held_by_another_process_is_reported_busy_with_the_holder(scanner):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(scanner.link)!r}, os.O_RDWR | os.O_NOCTTY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("held", flush=True)
        time.sleep(30)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        driver = load_drivers().get("serial-scanner")(ScannerConfig(name="s", port=str(scanner.link)))
        with pytest.raises(DeviceBusy) as info:
            driver.open()
        assert f"PID {holder.pid}" in info.value.message
    finally:
        holder.kill()
        holder.wait(10)
        holder.stdout.close()


def test_the_scanner_driver_never_writes_to_its_port(scanner):
    scans = []
    sup = supervise(str(scanner.link), scans)
    try:
        assert wait_until(lambda: sup.health.state is DeviceState.READY)
        scanner.scan("HELLO-1", terminator=b"\r")
        assert wait_until(lambda: len(scans) == 1)
        os.set_blocking(scanner.master, False)
        with pytest.raises(BlockingIOError):
            os.read(scanner.master, 100)
    finally:
        sup.stop()


def test_unknown_driver_name_is_a_clear_error():
    with pytest.raises(DriverError, match="no driver named 'laser-9000'"):
        load_drivers().get("laser-9000")


def _fake_distribution(root, name, entry_points, module_source=None):
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tillplug.drivers]\n" + entry_points + "\n")
    if module_source:
        (root / f"{name.replace('-', '_')}.py").write_text(module_source)


def test_third_party_driver_is_discovered_and_a_broken_one_is_skipped(tmp_path):
    _fake_distribution(
        tmp_path,
        "acme-scanner",
        "acme = acme_scanner:AcmeScanner",
        textwrap.dedent("""
        from tillplug.devices.base import ScannerDriver
        class AcmeScanner(ScannerDriver):
            def open(self): pass
            def read(self): return b""
            def close(self): pass
    """),
    )
    _fake_distribution(tmp_path, "broken-driver", "broken = broken_driver:Nope", "raise ImportError('needs libfoo')\n")
    code = (
        "from tillplug.devices.registry import load_drivers; r = load_drivers();"
        "print(sorted(r.drivers)); print(r.broken['broken'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    out = result.stdout.splitlines()
    assert out[0] == "['acme', 'escpos', 'hid-scanner', 'pole-display', 'serial-scanner']", result.stderr
    assert "needs libfoo" in out[1]
    assert "broken" in result.stderr  # reported in the log, not fatal


def test_idle_gap_framing_in_the_event_loop(scanner, reader_loop):
    scans = []
    sup = supervise(str(scanner.link), scans, terminator="none", idle_gap_ms=50, loop=reader_loop)
    try:
        assert wait_until(lambda: sup.health.state is DeviceState.READY)
        scanner.scan("4006381333931", terminator=b"")
        assert wait_until(lambda: len(scans) == 1)
        assert scans[0].text == "4006381333931"
    finally:
        sup.stop()
