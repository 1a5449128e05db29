"""ESC/POS receipt printers through python-escpos.

python-escpos encodes the commands (with the profile from escpos-printer-db);
this driver owns the connection, so it can time out a status query and tell
"no answer" apart from "no paper", which python-escpos cannot.

Connections: ``serial:///dev/…``, ``tcp://host:9100``, ``usb://VID:PID``,
``file:///dev/usb/lp0`` and ``capture:///path`` / ``capture://memory`` (the exact
byte stream kept for tests, the demo and ``tillplug preview``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import select
import socket
from typing import Any
from urllib.parse import urlsplit

from tillplug.devices.base import Capability, PrinterDriver, PrinterState, PrinterStatus, paper_dots
from tillplug.errors import DeviceBusy, DeviceGone, DriverError
from tillplug.receipts.layout import QR, Barcode, Columns, Cut, Feed, Receipt, Rule, Text, text_lines

# One code page per printer, pinned, so £ € é ß always print the same way.
PREFERRED_CODE_PAGES = ("CP858", "CP1252", "ISO_8859-15", "CP850", "CP437")
DLE_EOT = b"\x10\x04"


def _escpos() -> Any:
    """Import python-escpos once, with its capabilities cache in our cache directory."""
    import escpos.printer

    logging.getLogger("escpos").setLevel(logging.WARNING)
    return escpos


def pinned_code_page(profile_name: str, wanted: str | None = None) -> str:
    from escpos.capabilities import get_profile

    pages = get_profile(profile_name).get_code_pages()
    if wanted:
        if wanted not in pages:
            raise DriverError(f"profile {profile_name} has no code page {wanted} (it has: {', '.join(pages)})")
        return wanted
    return next((p for p in PREFERRED_CODE_PAGES if p in pages), next(iter(pages)))


def parse_status(replies: dict[int, bytes | None]) -> PrinterStatus:  # noqa: C901 -- one test per DLE EOT bit
    """Status from DLE EOT 1, 2 and 4 replies.  A missing or malformed reply means UNKNOWN.

    A valid reply is exactly one byte with bit 7 = 0, bit 0 = 0, bits 1 and 4 = 1.
    """

    def valid(b: bytes | None) -> int | None:
        if b is None or len(b) != 1:
            return None
        v = b[0]
        return v if (v & 0x93) == 0x12 else None

    printer, offline, paper = (valid(replies.get(n)) for n in (1, 2, 4))
    if printer is None:
        return PrinterStatus(PrinterState.UNKNOWN, "the printer did not answer")
    if printer & 0x08:  # offline: ask why
        reasons = []
        if offline is not None:
            if offline & 0x04:
                reasons.append("cover open")
            if offline & 0x20:
                reasons.append("paper out")
            if offline & 0x40:
                reasons.append("printer error")
        if paper is not None and paper & 0x60 and "paper out" not in reasons:
            reasons.append("paper out")
        return PrinterStatus(PrinterState.ERROR, ", ".join(reasons) or "offline")
    if paper is None:
        return PrinterStatus(PrinterState.UNKNOWN, "the printer did not report its paper")
    if paper & 0x60:
        return PrinterStatus(PrinterState.ERROR, "paper out")
    if paper & 0x0C:
        return PrinterStatus(PrinterState.WARNING, "paper near end")
    return PrinterStatus(PrinterState.OK, "")


class EscposPrinter(PrinterDriver):
    capabilities = frozenset({Capability.CUT, Capability.BARCODE, Capability.QR, Capability.STATUS})

    def __init__(self, config: Any, cache_dir: str | None = None) -> None:
        super().__init__(config, cache_dir)
        if cache_dir:
            os.environ.setdefault("ESCPOS_CAPABILITIES_PICKLE_DIR", str(cache_dir))
        url = urlsplit(config.connection)
        self.scheme = url.scheme
        self._url = url
        self._conn: Any = None
        self.captured = bytearray()  # capture://memory keeps the stream here
        _escpos()
        from escpos.capabilities import get_profile

        try:
            get_profile(config.profile)
        except Exception as exc:
            raise DriverError(f"unknown printer profile '{config.profile}' (see escpos-printer-db)") from exc
        self.code_page = pinned_code_page(config.profile, config.code_page)
        self.columns = config.effective_columns()

    # -- rendering ---------------------------------------------------------

    def render(self, receipt: Receipt) -> bytes:
        from escpos.printer import Dummy

        out = Dummy(profile=self.config.profile)
        out.hw("INIT")
        out.magic.force_encoding(self.code_page)
        with contextlib.redirect_stdout(io.StringIO()):  # python-escpos prints chatter
            for block in receipt.blocks:
                self._render_block(out, block)
        return bytes(out.output)

    def _render_block(self, out: Any, block: Any) -> None:
        if isinstance(block, (Text, Columns, Rule)):
            double = isinstance(block, Text) and block.double
            bold = getattr(block, "bold", False)
            out.set(bold=bold, double_width=double, double_height=double, align="left", normal_textsize=not double)
            for line in text_lines(block, self.columns):
                out.textln(line)
            out.set(bold=False, normal_textsize=True)
        elif isinstance(block, Barcode):
            width = self._module_width(block.data)
            if width is not None:  # too long for this paper: the QR code beside it carries the same text
                out.barcode("{B" + block.data, "CODE128", function_type="B", height=80, width=width, pos="BELOW")
        elif isinstance(block, QR):
            out.qr(block.data, native=True, size=6, center=False)
        elif isinstance(block, Feed):
            out.ln(block.lines)
        elif isinstance(block, Cut):
            out.cut()
        else:
            raise DriverError(f"cannot print a {type(block).__name__}")

    def _module_width(self, data: str) -> int | None:
        """The widest bars (3 or 2 dots; ESC/POS allows no less) at which the whole Code 128 fits."""
        modules = 11 * (len(data) + 3) + 2 + 20  # start, data, check, stop, and the quiet zones
        dots = paper_dots(self.columns)
        return next((w for w in (3, 2) if modules * w <= dots), None)

    # -- connection ----------------------------------------------------------

    def open(self) -> None:
        url, cfg = self._url, self.config
        try:
            if self.scheme == "capture":
                self._conn = None if url.netloc == "memory" else open(url.path, "ab")  # noqa: SIM115
            elif self.scheme == "tcp":
                self._conn = socket.create_connection((url.hostname, url.port or 9100), timeout=5)
            elif self.scheme == "file":
                self._conn = os.open(url.path, os.O_RDWR | os.O_NOCTTY)
            elif self.scheme == "serial":
                import serial

                flow = cfg.flow_control
                port = serial.Serial(
                    baudrate=cfg.baudrate,
                    timeout=cfg.status_timeout,
                    write_timeout=10,
                    dsrdtr=flow == "dsrdtr",
                    rtscts=flow == "rtscts",
                    xonxoff=flow == "xonxoff",
                    exclusive=True,
                )
                port.port = url.path
                try:
                    port.open()
                except serial.SerialException as exc:
                    if "lock" in str(exc).lower():
                        raise DeviceBusy(f"{url.path} is in use by another program") from exc
                    raise DeviceGone(f"{url.path}: {exc}") from exc
                self._conn = port
            elif self.scheme == "usb":
                self._conn = self._open_usb(url.netloc)
            else:
                raise DriverError(f"escpos cannot use a {self.scheme}:// connection")
        except OSError as exc:
            raise DeviceGone(f"{cfg.connection}: {exc}") from exc

    def _open_usb(self, ids: str) -> Any:
        try:
            vid, pid = (int(x, 16) for x in ids.split(":"))
        except ValueError:
            raise DriverError(f"usb:// needs VID:PID in hex, e.g. usb://04b8:0e15 (got {ids!r})") from None
        try:
            import usb.core  # noqa: F401
        except ImportError:
            raise DriverError("usb:// printers need pyusb (pip install pyusb)") from None
        from escpos.printer import Usb

        printer = Usb(vid, pid, timeout=2000)
        try:
            printer.open()
        except Exception as exc:
            raise DeviceGone(f"USB printer {ids}: {exc}") from exc
        return printer

    def write(self, data: bytes) -> None:
        conn = self._conn
        try:
            if self.scheme == "capture":
                self.captured += data
                if conn is not None:
                    conn.write(data)
                    conn.flush()
            elif self.scheme == "tcp":
                conn.sendall(data)
            elif self.scheme == "file":
                view = memoryview(data)
                while view:
                    view = view[os.write(conn, view) :]
            elif self.scheme == "serial":
                conn.write(data)
                conn.flush()
            elif self.scheme == "usb":
                conn._raw(data)
        except Exception as exc:
            raise DeviceGone(f"{self.config.connection}: write failed ({exc})") from exc

    def _ask(self, n: int) -> bytes | None:
        """One DLE EOT n round trip, bounded by status_timeout."""
        timeout = self.config.status_timeout
        conn = self._conn
        try:
            if self.scheme == "tcp":
                while select.select([conn], [], [], 0)[0]:  # a late answer to an earlier query
                    if not conn.recv(64):
                        return None
                conn.sendall(DLE_EOT + bytes([n]))
                ready, _, _ = select.select([conn], [], [], timeout)
                return conn.recv(16) if ready else None
            if self.scheme == "serial":
                conn.reset_input_buffer()
                conn.write(DLE_EOT + bytes([n]))
                return conn.read(1) or None
            if self.scheme == "file":
                os.write(conn, DLE_EOT + bytes([n]))
                ready, _, _ = select.select([conn], [], [], timeout)
                return os.read(conn, 16) if ready else None
        except Exception:
            return None
        return None

    def status(self) -> PrinterStatus:
        if self.scheme == "capture":
            return PrinterStatus(PrinterState.OK, "capture")
        if self._conn is None:
            return PrinterStatus(PrinterState.UNKNOWN, "not connected")
        if self.scheme == "usb":
            return PrinterStatus(PrinterState.UNKNOWN, "status is not read over usb:// yet; use file:///dev/usb/lp0")
        replies = {1: self._ask(1)}
        if replies[1] is not None:
            replies[2] = self._ask(2)
            replies[4] = self._ask(4)
        return parse_status(replies)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            os.close(conn) if self.scheme == "file" else conn.close()
