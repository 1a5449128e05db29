"""Keyboard-mode (USB HID) barcode scanner on Linux, through evdev.

The scanner is found by its by-id path (``/dev/input/by-id/usb-…-event-kbd``), a udev name
(``/dev/tillplug/hid-scanner-…``) or ``usb://VID:PID[/SERIAL]``, and grabbed exclusively, so
its keystrokes no longer reach the session.  Key events are decoded with the layout the
scanner is set to (``tillplug.barcodes.keymaps``) and framed at Enter or Tab.  Scans routing
gives back to the till are re-typed, key for key, through a uinput virtual keyboard: the
session reads them exactly as it read the scanner before.

python-evdev is an optional extra (``pip install 'tillplug[hid]'``), imported only here.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import select
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tillplug.barcodes.framing import Frame
from tillplug.barcodes.keymaps import KeyFramer
from tillplug.devices.base import ScannerDriver
from tillplug.errors import DeviceBusy, DeviceGone, DriverError
from tillplug.procfs import holders

if TYPE_CHECKING:
    import evdev

    from tillplug.config.model import ScannerConfig

log = logging.getLogger(__name__)
READ_TIMEOUT = 0.05
USB_PORT = re.compile(r"^usb://(?P<vid>[0-9a-fA-F]{4}):(?P<pid>[0-9a-fA-F]{4})(?:/(?P<serial>.+))?$")
EV_SYN, EV_KEY, SYN_DROPPED = 0, 1, 3


def _evdev() -> Any:
    try:
        import evdev
    except ImportError as exc:
        raise DriverError(
            "the hid-scanner driver needs python-evdev: pip install 'tillplug[hid]' (Linux only)"
        ) from exc
    return evdev


class HidScanner(ScannerDriver):
    frames_itself = True
    passes_through = True

    def __init__(self, config: ScannerConfig) -> None:
        super().__init__(config)
        self._device: evdev.InputDevice[str] | None = None
        self._uinput: evdev.UInput | None = None
        self._framer = KeyFramer(
            config.layout, "tab" if config.terminator == "TAB" else "enter", max_length=config.max_length
        )
        self.lost = 0  # times the kernel's event buffer overflowed (a scan in progress was dropped)

    def open(self) -> None:
        evdev = _evdev()
        path = find_device(self.config.port)
        try:
            device = evdev.InputDevice(path)
        except OSError as exc:
            raise DeviceGone(f"{self.config.port}: {exc.strerror or exc}") from exc
        try:
            device.grab()  # exclusive: the session no longer sees this scanner's keystrokes
        except OSError as exc:
            device.close()
            if exc.errno == errno.EBUSY:
                holder = _holder(path) or " (another tillplug, or a barcode tool)"
                raise DeviceBusy(f"{self.config.port} is grabbed by another program{holder}") from exc
            raise DeviceGone(f"{self.config.port}: {exc.strerror or exc}") from exc
        self._device = device
        if self.config.retype:
            try:
                self._uinput = evdev.UInput(
                    {EV_KEY: sorted(set(range(1, 120)) | {29, 42, 54, 56, 97, 100})},
                    name=f"tillplug {self.config.name} (re-typed scans)",
                )
            except (OSError, evdev.UInputError) as exc:  # the scans still reach loyalty; the till is told why not
                log.error(
                    "scanner %s: cannot create the virtual keyboard that re-types scans for the till (%s); "
                    "check /dev/uinput and `tillplug doctor`",
                    self.config.name,
                    exc,
                )

    def read(self) -> bytes:
        raise DriverError("the hid-scanner driver frames scans itself (read_frames)")

    def read_frames(self) -> list[Frame]:
        device = self._device
        if device is None:
            raise DeviceGone(f"{self.config.port} is not open")
        try:
            ready, _, _ = select.select([device.fd], [], [], READ_TIMEOUT)
            if not ready:
                return []
            events = list(device.read())
        except BlockingIOError:
            return []
        except OSError as exc:  # ENODEV: unplugged
            raise DeviceGone(f"{self.config.port}: {exc.strerror or exc}") from exc
        keys: list[tuple[int, int]] = []
        frames: list[Frame] = []
        for event in events:
            if event.type == EV_SYN and event.code == SYN_DROPPED:
                frames += self._framer.feed(keys)
                keys = []
                self._framer.reset()
                self.lost += 1
                log.warning("scanner %s: key events were lost; the scan in progress was dropped", self.config.name)
            elif event.type == EV_KEY:
                keys.append((event.code, event.value))
        return frames + self._framer.feed(keys)

    def pass_through(self, frame: Frame) -> bool:
        """Re-type the scan's own key events: the session's layout reads them as it did before."""
        uinput = self._uinput
        if uinput is None or not frame.keys:
            return False
        try:
            for code, value in frame.keys:
                uinput.write(EV_KEY, code, value)
                uinput.syn()
        except OSError as exc:
            log.warning("scanner %s: re-typing a scan failed: %s", self.config.name, exc)
            return False
        return True

    def close(self) -> None:
        device, self._device = self._device, None
        uinput, self._uinput = self._uinput, None
        if device is not None:
            with contextlib.suppress(OSError):  # unplugged: the grab went with it
                device.ungrab()
            device.close()
        if uinput is not None:
            with contextlib.suppress(OSError):
                uinput.close()

    @classmethod
    def grab_holder(cls, port: str) -> str:
        """'' if the scanner at ``port`` can be grabbed now, else who holds it (for ``tillplug doctor``)."""
        evdev = _evdev()
        path = find_device(port)
        try:
            device = evdev.InputDevice(path)
        except OSError as exc:
            raise DeviceGone(f"{port}: {exc.strerror or exc}") from exc
        try:
            device.grab()
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise DeviceGone(f"{port}: {exc.strerror or exc}") from exc
            return _holder(path) or " (another tillplug, or a barcode tool: stop tillplug for this check)"
        else:
            device.ungrab()
        finally:
            device.close()
        return ""

    @classmethod
    def discover(cls) -> list[dict[str, object]]:
        """Input devices that type (keyboards, keyboard-mode scanners), with USB ids and by-id paths."""
        try:
            evdev = _evdev()
        except DriverError:
            return []
        by_id: dict[str, str] = {}
        folder = Path("/dev/input/by-id")
        if folder.is_dir():
            by_id = {os.path.realpath(p): str(p) for p in folder.iterdir()}
        found: list[dict[str, object]] = []
        for path in sorted(evdev.list_devices()):
            try:
                device = evdev.InputDevice(path)
            except OSError:
                continue
            try:
                keys = device.capabilities().get(EV_KEY, [])
                if 30 not in keys or 28 not in keys:  # no A, no Enter: a mouse, a power button
                    continue
                found.append(
                    {
                        "device": path,
                        "input": True,
                        "name": device.name,
                        "vid": device.info.vendor,
                        "pid": device.info.product,
                        "serial": device.uniq or None,
                        "by_id": by_id.get(os.path.realpath(path)),
                    }
                )
            finally:
                device.close()
        return found


def find_device(port: str) -> str:
    """The event device for a configured port: a path as it is, or the input device with this USB
    vendor, product (and serial number) for ``usb://VID:PID[/SERIAL]``."""
    m = USB_PORT.match(port)
    if m is None:
        if not port.startswith("/"):
            raise DriverError(f"{port}: give a path (/dev/input/by-id/…) or usb://VID:PID[/SERIAL]")
        return port
    vid, pid, serial = int(m["vid"], 16), int(m["pid"], 16), m["serial"]
    for device in HidScanner.discover():
        if device["vid"] == vid and device["pid"] == pid and (serial is None or device["serial"] == serial):
            return str(device["device"])
    raise DeviceGone(f"no input device {port} is plugged in (see `tillplug devices`)")


def _holder(path: str) -> str:
    found = holders(path)
    return f" (held by PID {found[0].pid} {found[0].command})" if found else ""
