"""Serial customer displays (pole displays, 2 lines × 20 characters) through pyserial.

Two command sets, as the displays on the market speak them:

* ``epson`` — the Epson customer-display command set (DM-D series, and most displays sold as
  "Epson compatible"): ``ESC @`` resets, ``ESC t n`` picks the character table, ``US C 0`` hides the
  cursor, ``US $ x y`` moves to column x of line y (1-based), then the line's characters.
* ``cd5220`` — the other common one: ``ESC @`` resets, ``ESC Q A … CR`` writes the upper line and
  ``ESC Q B … CR`` the lower one.

Each line is written whole, padded with spaces, so nothing of the previous screen is left behind
and nothing flickers (no clear-then-write).  Characters the display's table lacks are
transliterated (``Ł`` → ``L``, ``€`` → ``EUR``) by the receipts' own rules, never sent as ``?``,
and no control character from a name or a voucher reaches the display as a command.
"""

from __future__ import annotations

import codecs
import contextlib
from typing import Any

import serial

from tillplug.config.model import DisplayConfig
from tillplug.devices.base import DisplayDriver
from tillplug.errors import DeviceBusy, DeviceGone
from tillplug.receipts.scripts import for_code_page

ESC, US, CR = b"\x1b", b"\x1f", b"\r"
# ESC t n on Epson customer displays: the character table's number.
EPSON_TABLES = {"cp437": 0, "cp850": 2, "cp858": 19, "cp1252": 16}


def fit_line(text: str, columns: int, code_page: str) -> bytes:
    """One line as the display's bytes: transliterated to its table, cut or padded to ``columns``."""

    def can_encode(ch: str) -> bool:
        try:
            ch.encode(code_page)
        except UnicodeEncodeError:
            return False
        return True

    shown, _faithful = for_code_page(text.replace("\n", " "), can_encode)
    return shown[:columns].ljust(columns).encode(code_page, errors="replace")


def render(lines: tuple[str, ...], *, columns: int, code_page: str, command_set: str) -> bytes:
    """The bytes that make the display show ``lines`` (two; a missing one is blank)."""
    upper, lower = (*lines, "", "")[:2]
    one, two = fit_line(upper, columns, code_page), fit_line(lower, columns, code_page)
    if command_set == "cd5220":
        return ESC + b"QA" + one + CR + ESC + b"QB" + two + CR
    return US + b"$\x01\x01" + one + US + b"$\x01\x02" + two


def reset(*, code_page: str, command_set: str) -> bytes:
    """What goes first after opening the port: initialise, blank, and pick the character table."""
    if command_set == "cd5220":
        return ESC + b"@" + b"\x0c"
    return ESC + b"@" + ESC + b"t" + bytes([EPSON_TABLES[code_page]]) + US + b"C\x00" + b"\x0c"


class PoleDisplay(DisplayDriver):
    def __init__(self, config: DisplayConfig) -> None:
        super().__init__(config)
        self._port: Any = None

    def open(self) -> None:
        cfg = self.config
        try:
            port = serial.serial_for_url(cfg.port, baudrate=cfg.baudrate, write_timeout=2, do_not_open=True)
            if cfg.port.startswith("/"):
                port.exclusive = True
            port.open()
        except serial.SerialException as exc:
            if "lock" in str(exc).lower():
                raise DeviceBusy(f"{cfg.port} is in use by another program") from exc
            raise DeviceGone(f"{cfg.port}: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise DeviceGone(f"{cfg.port}: {exc}") from exc
        self._port = port
        self._write(reset(code_page=cfg.code_page, command_set=cfg.command_set))

    def show(self, lines: tuple[str, ...]) -> None:
        cfg = self.config
        self._write(render(lines, columns=cfg.columns, code_page=cfg.code_page, command_set=cfg.command_set))

    def _write(self, data: bytes) -> None:
        if self._port is None:
            raise DeviceGone(f"{self.config.port}: not open")
        try:
            self._port.write(data)
            self._port.flush()
        except Exception as exc:  # SerialException, SerialTimeoutException, OSError
            raise DeviceGone(f"{self.config.port}: write failed ({exc})") from exc

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()


codecs.lookup("cp858")  # the tables above are codecs Python has; fail at import, not on a customer's name
