"""Serial barcode scanner (RS-232, USB CDC-ACM, or any pyserial URL such as socket://).

It reads; it writes only the feedback commands (beep, light) that the scanner's config
declares, and only when routing asks.  Framing into scans happens above, in
``tillplug.barcodes.framing``, so it is a pure function.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import termios

import serial

from tillplug.config.model import ScannerConfig
from tillplug.devices.base import ScannerDriver
from tillplug.errors import DeviceBusy, DeviceGone
from tillplug.procfs import holders

READ_TIMEOUT = 0.05  # seconds: short, so idle-gap framing and shutdown stay responsive


class SerialScanner(ScannerDriver):
    def __init__(self, config: ScannerConfig) -> None:
        super().__init__(config)
        self._port: serial.Serial | None = None

    def open(self) -> None:
        cfg = self.config
        try:
            port = serial.serial_for_url(
                cfg.port,
                baudrate=cfg.baudrate,
                bytesize=cfg.bytesize,
                parity=cfg.parity,
                stopbits=cfg.stopbits,
                rtscts=cfg.rtscts,
                xonxoff=cfg.xonxoff,
                timeout=READ_TIMEOUT,
                do_not_open=True,
            )
            if cfg.port.startswith("/"):
                port.exclusive = True  # flock: a second tillplug cannot share the port
            port.open()
        except serial.SerialException as exc:
            raise _translate(cfg.port, exc) from exc
        except (OSError, ValueError) as exc:
            raise DeviceGone(f"{cfg.port}: {exc}") from exc
        fd = getattr(port, "fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):  # kernel-level exclusivity too, as gpsd does
                fcntl.ioctl(fd, termios.TIOCEXCL)
        self._port = port

    def read(self) -> bytes:
        port = self._port
        if port is None:
            raise DeviceGone(f"{self.config.port} is not open")
        fd = getattr(port, "fd", None)
        try:
            if fd is None:  # URL handlers (socket://, rfc2217://): pyserial's own read
                return port.read(max(1, port.in_waiting))
            # A real tty: one wake-up takes whatever arrived, so a scan is not read a byte at a time.
            ready, _, _ = select.select([fd], [], [], READ_TIMEOUT)
            if not ready:
                return b""
            data = os.read(fd, 4096)
        except (serial.SerialException, OSError, termios.error, ValueError) as exc:
            raise DeviceGone(f"{self.config.port}: {exc}") from exc
        if not data:  # readable but empty: the device went away (pyserial says the same)
            raise DeviceGone(f"{self.config.port}: the device reports readiness to read but returned no data")
        return data

    def write(self, data: bytes) -> None:
        """A feedback command to the scanner (config feedback_good / feedback_bad)."""
        port = self._port
        if port is None:
            raise DeviceGone(f"{self.config.port} is not open")
        try:
            port.write(data)
        except (serial.SerialException, OSError, termios.error) as exc:
            raise DeviceGone(f"{self.config.port}: {exc}") from exc

    def fileno(self) -> int | None:
        """Real ttys are watched by the event loop (no thread hop per scan); URL handlers are not."""
        return getattr(self._port, "fd", None)

    def read_available(self) -> bytes:
        fd = self.fileno()
        if fd is None:
            return self.read()
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise DeviceGone(f"{self.config.port}: {exc}") from exc
        if not data:
            raise DeviceGone(f"{self.config.port}: the device reports readiness to read but returned no data")
        return data

    @classmethod
    def discover(cls) -> list[dict[str, object]]:
        """Serial ports on this machine, with what udev knows of them (read-only: nothing is opened)."""
        import os
        from pathlib import Path

        from serial.tools import list_ports

        by_id = {}
        folder = Path("/dev/serial/by-id")
        if folder.is_dir():
            by_id = {os.path.realpath(p): str(p) for p in folder.iterdir()}
        found = []
        for port in sorted(list_ports.comports(), key=lambda p: p.device):
            found.append(
                {
                    "device": port.device,
                    "vid": port.vid,
                    "pid": port.pid,
                    "serial": port.serial_number,
                    "manufacturer": port.manufacturer,
                    "product": port.product,
                    "description": port.description,
                    "by_id": by_id.get(os.path.realpath(port.device)),
                }
            )
        return found

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            # The device may already be gone; closing still frees the minor number.
            with contextlib.suppress(serial.SerialException, OSError, termios.error):
                port.close()


def _translate(name: str, exc: serial.SerialException) -> Exception:
    text = str(exc)
    if getattr(exc, "errno", None) == errno.EBUSY or "Could not exclusively lock" in text or "busy" in text.lower():
        holder = who_holds(name)
        return DeviceBusy(f"{name} is in use by another program{holder}")
    return DeviceGone(f"{name}: {text}")


def who_holds(path: str) -> str:
    """' (held by PID 123 ModemManager)' where /proc tells, else ''."""
    found = holders(path)
    return f" (held by PID {found[0].pid} {found[0].command})" if found else ""
