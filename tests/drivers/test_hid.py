"""Keyboard-mode scanners: the hid-scanner driver, routing of its scans, and re-typing for the till."""

import asyncio
import os
import queue
import time
from typing import ClassVar

import pytest

from tillplug.barcodes.keymaps import KeyFramer, decode, encode
from tillplug.commands.virtual.till import poll_until
from tillplug.config.model import Config
from tillplug.daemon.scans import Route, Router
from tillplug.devices.base import ScannerDriver
from tillplug.devices.supervisor import DeviceState, ScannerSupervisor
from tillplug.devices.till_port import PassThrough
from tillplug.errors import DeviceGone, DriverError


def config(**scanner):
    return Config.model_validate(
        {
            "till_id": "t",
            "branch_id": "b",
            "engine": {"preset": "simulator"},
            "scanners": [{"name": "kbd", "driver": "hid-scanner", "port": "usb://0c2e:0b87", **scanner}],
        }
    )


class FakeKeyboardScanner(ScannerDriver):
    """Stands in for the evdev device: key events go in ``typed``, re-typed frames come out in ``retyped``."""

    frames_itself = True
    passes_through = True
    typed: ClassVar[queue.Queue] = queue.Queue()
    retyped: ClassVar[list] = []

    def __init__(self, config):
        super().__init__(config)
        self.framer = KeyFramer(config.layout)

    def open(self):
        pass

    def read(self):
        return b""

    def read_frames(self):
        try:
            return self.framer.feed(self.typed.get(timeout=0.02))
        except queue.Empty:
            return []

    def pass_through(self, frame):
        self.retyped.append(frame.keys)
        return True

    def close(self):
        pass


def test_keyboard_scans_for_the_till_are_retyped_key_for_key_and_loyalty_codes_are_not():
    cfg = config(layout="fr")
    consumed = []
    router = Router(cfg, lambda scan, decision: consumed.append((scan.text, decision)))
    FakeKeyboardScanner.retyped = []
    sup = ScannerSupervisor(cfg.scanners[0], FakeKeyboardScanner, router.on_scan)
    loop = asyncio.new_event_loop()
    try:
        router.attach(cfg.scanners[0], sup, loop)
        sup.start()
        assert poll_until(lambda: sup.health.state is DeviceState.READY, 5)
        product, member = encode("0013748911\r", "fr"), encode("1000001\r", "fr")
        FakeKeyboardScanner.typed.put(product + member)
        assert poll_until(lambda: len(consumed) == 2, 5)
    finally:
        sup.stop()
        loop.close()
    assert [(text, d.route, d.pass_through) for text, d in consumed] == [
        ("0013748911", Route.TILL, PassThrough.PASSED),
        ("1000001", Route.LOYALTY, PassThrough.WITHHELD),
    ]
    assert len(FakeKeyboardScanner.retyped) == 1
    assert decode(FakeKeyboardScanner.retyped[0], "fr") == "0013748911\r"


def test_retype_false_leaves_keyboard_scans_on_the_event_stream_only():
    cfg = config(retype=False)
    router = Router(cfg, lambda scan, decision: None)
    sup = ScannerSupervisor(cfg.scanners[0], FakeKeyboardScanner, router.on_scan)
    loop = asyncio.new_event_loop()
    router.attach(cfg.scanners[0], sup, loop)
    loop.close()
    assert "kbd" not in router.sinks


def test_a_usb_port_that_is_not_plugged_in_is_reported_gone():
    pytest.importorskip("evdev")
    from tillplug.drivers.hid_scanner import find_device

    with pytest.raises(DeviceGone, match=r"no input device usb://dead:beef is plugged in"):
        find_device("usb://dead:beef")
    assert find_device("/dev/input/by-id/usb-x-event-kbd") == "/dev/input/by-id/usb-x-event-kbd"
    with pytest.raises(DriverError):
        find_device("serial0")


# -- on a real kernel input stack ------------------------------------------------------------------


def _uinput_unusable():
    if not os.path.exists("/dev/uinput"):
        return "/dev/uinput does not exist here (the uinput kernel module is not loaded: modprobe uinput)"
    if not os.access("/dev/uinput", os.R_OK | os.W_OK):
        return "/dev/uinput is not readable and writable by this user (udev rule: group tillplug)"
    try:
        import evdev  # noqa: F401
    except ImportError:
        return "python-evdev is not installed (pip install 'tillplug[hid]')"
    return None


@pytest.mark.skipif(_uinput_unusable() is not None, reason=str(_uinput_unusable()))
def test_a_virtual_keyboard_scanner_is_grabbed_decoded_and_retyped():
    """A uinput keyboard plays the scanner (set to AZERTY): the driver grabs it, decodes the scans,
    and re-types a product scan on its own virtual keyboard, which a reader sees key for key."""
    import evdev
    from tillplug.drivers.hid_scanner import HidScanner

    keys = {evdev.ecodes.EV_KEY: sorted(set(range(1, 120)))}
    scanner = evdev.UInput(keys, name="tillplug-test-scanner", vendor=0x1234, product=0x5678)
    driver = None
    try:
        assert poll_until(lambda: any(d["name"] == "tillplug-test-scanner" for d in HidScanner.discover()), 5)
        cfg = config(layout="fr", port="usb://1234:5678").scanners[0]
        driver = HidScanner(cfg)
        driver.open()
        named = "tillplug kbd (re-typed scans)"
        assert poll_until(lambda: any(d["name"] == named for d in HidScanner.discover()), 5)
        retyped = evdev.InputDevice(next(d["device"] for d in HidScanner.discover() if d["name"] == named))
        for code, value in encode("0013748911\r", "fr"):
            scanner.write(evdev.ecodes.EV_KEY, code, value)
            scanner.syn()
        frames = []
        deadline = time.monotonic() + 5
        while not frames and time.monotonic() < deadline:
            frames += driver.read_frames()
        assert [f.data for f in frames] == [b"0013748911"]
        assert driver.pass_through(frames[0])
        got = []
        deadline = time.monotonic() + 5
        while len(got) < len(frames[0].keys) and time.monotonic() < deadline:
            event = retyped.read_one()
            if event is None:
                time.sleep(0.005)
            elif event.type == evdev.ecodes.EV_KEY:
                got.append((event.code, event.value))
        assert tuple(got) == frames[0].keys
        retyped.close()
    finally:
        if driver is not None:
            driver.close()
        scanner.close()


def test_sniff_a_keyboard_scanner_shows_its_scans_under_the_layout_and_where_they_go(monkeypatch, capsys):
    from tillplug.commands.cli import main
    from tillplug.devices import registry

    class OneBurst(FakeKeyboardScanner):
        def read_frames(self):
            events, self.events = getattr(self, "events", encode("0013748911\r1000001\r", "fr")), []
            return self.framer.feed(events)

    monkeypatch.setattr(registry, "load_drivers", lambda: registry.Registry({"hid-scanner": OneBurst}))
    assert main(["sniff", "usb://0c2e:0200", "--layout", "fr", "--count", "2", "--seconds", "5"]) == 0
    out = capsys.readouterr().out
    assert "b'0013748911\\r'" in out and "other layouts read it differently" in out
    assert "'0013748911': other → till: for the till (event stream only: no till_port)" in out
    assert "'1000001': member → loyalty: consumed by loyalty, not passed to the till" in out
