"""ESC/POS receipt printers through python-escpos.

python-escpos encodes the commands (with the profile from escpos-printer-db);
this driver owns the connection, so it can time out a status query and tell
"no answer" apart from "no paper", which python-escpos cannot.

One class per connection kind, as python-escpos has one per printer kind:
``serial:///dev/…`` (``SerialConnection``), ``tcp://host:9100`` (``TcpConnection``),
``usb://VID:PID`` (``UsbConnection``), ``file:///dev/usb/lp0`` (``FileConnection``) and
``capture:///path`` / ``capture://memory`` (``CaptureConnection``: the exact byte stream
kept for tests, the demo and ``tillplug preview``).  Each answers DLE EOT status
queries where its wire can carry the answer, and says "unknown" where it cannot.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import platform
import select
import socket
import sys
import time
from abc import ABC, abstractmethod
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import SplitResult, urlsplit

from tillplug.devices.base import Capability, PrinterDriver, PrinterState, PrinterStatus
from tillplug.errors import DeviceBusy, DeviceGone, DriverError
from tillplug.receipts import scripts
from tillplug.receipts.code128 import escpos_payload, symbol_count
from tillplug.receipts.layout import QR, Barcode, Block, Columns, Cut, Feed, Image, Receipt, Rule, Text, text_lines
from tillplug.receipts.paper import paper_layout, pinned_code_page, printer_profile, small_font_columns

if TYPE_CHECKING:
    from tillplug.config.model import PrinterConfig

log = logging.getLogger(__name__)
DLE_EOT = b"\x10\x04"
BARCODE_MODULE_WIDTHS = (3, 2)  # ESC/POS GS w: 2 is the narrowest most printers accept and scanners read
# ISO/IEC 15417 asks for ten modules of white each side: the paper's unprinted edge (about 4 mm, over
# 30 dots) gives it to a left-aligned code at widths 2 and 3, so only the bars must fit the printable dots.
BARCODE_QUIET_MODULES = 10


def _quiet_escpos() -> None:
    """python-escpos logs chatter.  Its printer module (Pillow, qrcode, python-barcode) is imported only
    for a receipt logo or a usb:// printer: slips are written by ``escpos_bytes.SlipBytes``."""
    logging.getLogger("escpos").setLevel(logging.WARNING)


def use_cache_dir(cache_dir: str | None) -> None:
    """python-escpos pickles its capabilities into ``ESCPOS_CAPABILITIES_PICKLE_DIR`` and fails with
    FileNotFoundError when that directory is missing (a fresh install before the daemon ran):
    create it, or leave python-escpos on its own default when we may not."""
    if not cache_dir or "ESCPOS_CAPABILITIES_PICKLE_DIR" in os.environ:
        return
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    if os.access(cache_dir, os.W_OK):
        os.environ["ESCPOS_CAPABILITIES_PICKLE_DIR"] = str(cache_dir)


def escpos_printer_module() -> Any:
    """python-escpos's printer module, for what a slip's own writer (``escpos_bytes``) does not do: a
    receipt logo, a usb:// printer.  Its capabilities pickle is written first: python-escpos reads the
    JSON file with PyYAML's pure-Python parser when it finds none (about 0.2 s and 3 MB of garbage)."""
    if (pickle_dir := os.environ.get("ESCPOS_CAPABILITIES_PICKLE_DIR")) and "escpos.capabilities" not in sys.modules:
        write_capabilities_pickle(Path(pickle_dir))
    import escpos.printer

    return escpos.printer


def write_capabilities_pickle(pickle_dir: Path) -> None:
    """The pickle python-escpos looks for (``<python version>.capabilities.pickle``, newer than the
    capabilities file), parsed with ``json``: the file is JSON, and PyYAML reads JSON as the same data.
    Nothing is written when a current pickle is there or the directory cannot take it (python-escpos
    then parses the file itself, as before)."""
    source = os.environ.get("ESCPOS_CAPABILITIES_FILE") or str(resources.files("escpos") / "capabilities.json")
    target = pickle_dir / f"{platform.python_version()}.capabilities.pickle"
    try:
        if target.exists() and target.stat().st_mtime >= os.stat(source).st_mtime:
            return
        with open(source, "rb") as f:
            capabilities = json.load(f)
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        try:
            partial.write_bytes(pickle.dumps(capabilities, protocol=2))
            os.replace(partial, target)  # whole or not at all: another process may be reading it
        finally:
            partial.unlink(missing_ok=True)
    except (OSError, ValueError) as exc:
        log.debug("python-escpos's capabilities pickle not written (%s); it parses the file itself", exc)


def _offline_reasons(offline: int | None, paper: int | None) -> str:
    """Why an offline printer is offline, from the DLE EOT 2 (offline cause) and 4 (paper) bytes."""
    causes = ((0x04, "cover open"), (0x20, "paper out"), (0x40, "printer error"))
    reasons = [name for bit, name in causes if offline is not None and offline & bit]
    if paper is not None and paper & 0x60 and "paper out" not in reasons:
        reasons.append("paper out")
    return ", ".join(reasons) or "offline"


def parse_status(replies: dict[int, bytes | None]) -> PrinterStatus:
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
    pin3 = bool(printer & 0x04)  # the drawer connector's pin 3: the sensor, whatever else is wrong
    if printer & 0x08:  # offline: ask why
        return PrinterStatus(PrinterState.ERROR, _offline_reasons(offline, paper), pin3)
    if paper is None:
        return PrinterStatus(PrinterState.UNKNOWN, "the printer did not report its paper", pin3)
    if paper & 0x60:
        return PrinterStatus(PrinterState.ERROR, "paper out", pin3)
    if paper & 0x0C:
        return PrinterStatus(PrinterState.WARNING, "paper near end", pin3)
    return PrinterStatus(PrinterState.OK, "", pin3)


def drawer_pin3(reply: bytes | None) -> bool | None:
    """Pin 3 of the drawer connector from a DLE EOT 1 reply (bit 2), or None for no valid reply."""
    if reply is None or len(reply) != 1 or (reply[0] & 0x93) != 0x12:
        return None
    return bool(reply[0] & 0x04)


# -- connections ---------------------------------------------------------------


class Connection(ABC):
    """One wire to a printer.  Blocking; raises DeviceGone/DeviceBusy/DriverError, nothing foreign."""

    scheme: ClassVar[str]
    answers_status: ClassVar[bool] = False  # can a DLE EOT reply come back over this wire?

    def __init__(self, config: PrinterConfig, url: SplitResult) -> None:
        self.config = config
        self.url = url

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def ask(self, n: int) -> bytes | None:
        """One DLE EOT n round trip, bounded by ``status_timeout``; None when nothing (valid) came back."""
        return None

    def ask_all(self, ns: tuple[int, ...]) -> dict[int, bytes | None]:
        """DLE EOT for each n: the first, then the rest only if it answered.  Wires that can carry
        several queries at once override this to ask them all in one round trip."""
        replies = {ns[0]: self.ask(ns[0])}
        if replies[ns[0]] is not None:
            replies.update((n, self.ask(n)) for n in ns[1:])
        return replies

    def alive(self) -> bool:
        """Cheap check before a job that the connection has not died since it was opened."""
        return True

    def _gone(self, what: str, exc: BaseException) -> DeviceGone:
        return DeviceGone(f"{self.config.connection}: {what} ({exc})")


class CaptureConnection(Connection):
    """Keeps the byte stream (``capture://memory``) or appends it to a file: a printer that always works."""

    scheme = "capture"
    answers_status = True

    def __init__(self, config: PrinterConfig, url: SplitResult) -> None:
        super().__init__(config, url)
        self.captured = bytearray()
        self._file: Any = None

    def open(self) -> None:
        if self.url.netloc != "memory":
            try:
                self._file = open(self.url.path, "ab")  # noqa: SIM115 - kept open across jobs, closed in close()
            except OSError as exc:
                raise self._gone("cannot open", exc) from exc

    def write(self, data: bytes) -> None:
        self.captured += data
        if self._file is not None:
            try:
                self._file.write(data)
                self._file.flush()
            except OSError as exc:
                raise self._gone("write failed", exc) from exc

    def ask(self, n: int) -> bytes | None:
        return b"\x12"  # online, cover closed, paper present: every DLE EOT n reads as "all well"

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


class TcpConnection(Connection):
    """A network printer on port 9100.  Connects with a short timeout, notices a socket the
    printer has closed (restart, power cycle) before writing, and reads DLE EOT replies."""

    scheme = "tcp"
    answers_status = True
    write_timeout = 10.0

    def __init__(self, config: PrinterConfig, url: SplitResult) -> None:
        super().__init__(config, url)
        self._sock: socket.socket | None = None

    def open(self) -> None:
        self.close()
        try:
            sock = socket.create_connection(
                (self.url.hostname, self.url.port or 9100), timeout=self.config.connect_timeout
            )
        except OSError as exc:
            raise self._gone("cannot connect", exc) from exc
        sock.settimeout(self.write_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock

    def alive(self) -> bool:
        sock = self._sock
        if sock is None:
            return False
        try:
            while select.select([sock], [], [], 0)[0]:
                if not sock.recv(64):  # an orderly close by the printer
                    return False
        except OSError:
            return False
        return True

    def write(self, data: bytes) -> None:
        if self._sock is None:
            raise DeviceGone(f"{self.config.connection}: not connected")
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise self._gone("write failed", exc) from exc

    def ask(self, n: int) -> bytes | None:
        sock = self._sock
        if sock is None:
            return None
        try:
            while select.select([sock], [], [], 0)[0]:  # a late answer to an earlier query
                if not sock.recv(64):
                    return None
            sock.sendall(DLE_EOT + bytes([n]))
            ready, _, _ = select.select([sock], [], [], self.config.status_timeout)
            return sock.recv(16) if ready else None
        except OSError:
            return None

    def ask_all(self, ns: tuple[int, ...]) -> dict[int, bytes | None]:
        """All the queries in one write, their one-byte answers read back in order: one round trip a
        status, not three (a printer answers real-time commands in the order it reads them)."""
        sock = self._sock
        if sock is None:
            return {ns[0]: None}
        try:
            while select.select([sock], [], [], 0)[0]:  # a late answer to an earlier query
                if not sock.recv(64):
                    return {ns[0]: None}
            sock.sendall(b"".join(DLE_EOT + bytes([n]) for n in ns))
            got = _read_answers(
                lambda wait: select.select([sock], [], [], wait)[0],
                lambda: sock.recv(16),
                len(ns),
                self.config.status_timeout,
            )
        except OSError:
            return {ns[0]: None}
        return _in_order(ns, got)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class SerialConnection(Connection):
    scheme = "serial"
    answers_status = True

    def __init__(self, config: PrinterConfig, url: SplitResult) -> None:
        super().__init__(config, url)
        self._port: Any = None

    def open(self) -> None:
        import serial

        cfg, path = self.config, self.url.path
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
        port.port = path
        try:
            port.open()
        except serial.SerialException as exc:
            if "lock" in str(exc).lower():
                raise DeviceBusy(f"{path} is in use by another program") from exc
            raise DeviceGone(f"{path}: {exc}") from exc
        self._port = port

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except Exception as exc:  # SerialException, SerialTimeoutException, OSError
            raise self._gone("write failed", exc) from exc

    def ask(self, n: int) -> bytes | None:
        try:
            self._port.reset_input_buffer()
            self._port.write(DLE_EOT + bytes([n]))
            return bytes(self._port.read(1)) or None
        except Exception:
            return None

    def ask_all(self, ns: tuple[int, ...]) -> dict[int, bytes | None]:
        try:
            self._port.reset_input_buffer()
            self._port.write(b"".join(DLE_EOT + bytes([n]) for n in ns))
            return _in_order(ns, bytes(self._port.read(len(ns))))  # bounded by the port's status_timeout
        except Exception:
            return {ns[0]: None}

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()


class FileConnection(Connection):
    """A printer device node (``/dev/usb/lp0``): usblp passes DLE EOT replies back through read()."""

    scheme = "file"
    answers_status = True

    def __init__(self, config: PrinterConfig, url: SplitResult) -> None:
        super().__init__(config, url)
        self._fd: int | None = None

    def open(self) -> None:
        try:
            self._fd = os.open(self.url.path, os.O_RDWR | os.O_NOCTTY)
        except OSError as exc:
            raise self._gone("cannot open", exc) from exc

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise DeviceGone(f"{self.config.connection}: not open")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise self._gone("write failed", exc) from exc

    def ask(self, n: int) -> bytes | None:
        fd = self._fd
        if fd is None:
            return None
        try:
            os.write(fd, DLE_EOT + bytes([n]))
            ready, _, _ = select.select([fd], [], [], self.config.status_timeout)
            return os.read(fd, 16) if ready else None
        except OSError:
            return None

    def ask_all(self, ns: tuple[int, ...]) -> dict[int, bytes | None]:
        fd = self._fd
        if fd is None:
            return {ns[0]: None}
        try:
            os.write(fd, b"".join(DLE_EOT + bytes([n]) for n in ns))
            got = _read_answers(
                lambda wait: select.select([fd], [], [], wait)[0],
                lambda: os.read(fd, 16),
                len(ns),
                self.config.status_timeout,
            )
        except OSError:
            return {ns[0]: None}
        return _in_order(ns, got)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class UsbConnection(Connection):
    """A printer claimed directly through pyusb (an optional extra).  Status replies come back
    on the printer's bulk IN endpoint."""

    scheme = "usb"
    answers_status = True

    def __init__(self, config: PrinterConfig, url: SplitResult) -> None:
        super().__init__(config, url)
        try:
            self.vid, self.pid = (int(x, 16) for x in url.netloc.split(":"))
        except ValueError:
            raise DriverError(f"usb:// needs VID:PID in hex, e.g. usb://04b8:0e15 (got {url.netloc!r})") from None
        self._printer: Any = None

    def open(self) -> None:
        try:
            import usb.core  # noqa: F401
        except ImportError:
            raise DriverError("usb:// printers need pyusb (pip install pyusb)") from None
        printer = escpos_printer_module().Usb(self.vid, self.pid, timeout=2000)
        try:
            printer.open()
        except Exception as exc:  # python-escpos raises its own DeviceNotFoundError and pyusb's USBError
            raise DeviceGone(f"USB printer {self.url.netloc}: {exc}") from exc
        self._printer = printer

    def write(self, data: bytes) -> None:
        try:
            self._printer._raw(data)
        except Exception as exc:  # usb.core.USBError
            raise self._gone("write failed", exc) from exc

    def ask(self, n: int) -> bytes | None:
        printer = self._printer
        if printer is None:
            return None
        try:
            device = printer.device
            device.write(printer.out_ep, DLE_EOT + bytes([n]), 1000)
            reply = device.read(printer.in_ep, 16, int(self.config.status_timeout * 1000))
            return bytes(reply) or None
        except Exception:  # usb.core.USBTimeoutError and friends: no answer
            return None

    def close(self) -> None:
        printer, self._printer = self._printer, None
        if printer is not None:
            with contextlib.suppress(Exception):
                printer.close()


def _read_answers(ready: Any, read: Any, count: int, timeout: float) -> bytes:
    """Up to ``count`` answer bytes, however the wire splits them, within ``timeout`` in all."""
    deadline = time.monotonic() + timeout
    got = b""
    while len(got) < count:
        wait = deadline - time.monotonic()
        if wait <= 0 or not ready(wait):
            break
        chunk = read()
        if not chunk:
            break
        got += chunk
    return got


def _in_order(ns: tuple[int, ...], got: bytes) -> dict[int, bytes | None]:
    """One answer byte per query, in the order asked; a query past what came back has no answer."""
    return {n: got[i : i + 1] if i < len(got) else None for i, n in enumerate(ns)}


CONNECTIONS: dict[str, type[Connection]] = {
    c.scheme: c for c in (SerialConnection, TcpConnection, UsbConnection, FileConnection, CaptureConnection)
}


def connection_for(config: PrinterConfig) -> Connection:
    url = urlsplit(config.connection)
    cls = CONNECTIONS.get(url.scheme)
    if cls is None:
        raise DriverError(f"escpos cannot use a {url.scheme}:// connection")
    return cls(config, url)


# -- text ----------------------------------------------------------------------


# -- the driver ----------------------------------------------------------------


class EscposPrinter(PrinterDriver):
    capabilities = frozenset({Capability.CUT, Capability.BARCODE, Capability.QR, Capability.STATUS, Capability.DRAWER})

    def __init__(self, config: PrinterConfig, cache_dir: str | None = None) -> None:
        super().__init__(config, cache_dir)
        use_cache_dir(cache_dir)
        self.connection = connection_for(config)
        _quiet_escpos()
        try:
            printer_profile(config.profile)
        except Exception as exc:
            raise DriverError(f"unknown printer profile '{config.profile}' (see escpos-printer-db)") from exc
        self.code_page = pinned_code_page(config.profile, config.code_page)
        self.columns, self.dots = paper_layout(config)
        self.small_columns = small_font_columns(config.profile, self.columns)
        self._encoder: Any = None
        self._pages: Any = None  # escpos_bytes.CodePages, built at the first slip
        self._logos: dict[tuple[str, int, int], bytes] = {}

    @property
    def captured(self) -> bytearray:
        """What a ``capture://`` printer was sent (empty for the other kinds)."""
        conn = self.connection
        return conn.captured if isinstance(conn, CaptureConnection) else bytearray()

    # -- rendering ---------------------------------------------------------

    def render(self, receipt: Receipt) -> bytes:
        from tillplug.drivers.escpos_bytes import CodePages, SlipBytes

        if self._pages is None:  # one per printer: its code page's table is built once, not per slip
            self._pages = CodePages(self.config.profile)
        return self.render_with(SlipBytes(self.config.profile, self._pages), receipt)

    def render_with(self, out: Any, receipt: Receipt) -> bytes:
        """The receipt's bytes, written by ``out``: a ``SlipBytes`` (``render``), or python-escpos's
        ``Dummy`` printer, which writes the same bytes (the tests compare them)."""
        out.hw("INIT")
        out.magic.force_encoding(self.code_page)
        self._encoder = out.magic.encoder
        with contextlib.redirect_stdout(io.StringIO()):  # python-escpos prints chatter
            for block in receipt.blocks:
                self._render_block(out, block)
        return bytes(out.output)

    def logo(self, path: str) -> bytes:
        """The image as centred raster bytes (GS v 0), at most the paper's width; rasterised once per file
        version.  A logo that cannot be read is left out (and logged once): it never stops a slip."""
        try:
            stat = os.stat(path)
        except OSError as exc:
            key: tuple[str, int, int] = (path, -1, -1)
            if key not in self._logos:
                log.warning("receipt logo %s cannot be read (%s); slips print without it", path, exc.strerror)
                self._logos[key] = b""
            return self._logos[key]
        key = (path, stat.st_mtime_ns, stat.st_size)
        if key not in self._logos:
            self._logos[key] = self._rasterise(path)
        return self._logos[key]

    def _rasterise(self, path: str) -> bytes:
        from PIL import Image as PilImage

        Dummy = escpos_printer_module().Dummy

        try:
            with PilImage.open(path) as img:
                picture = img.convert("RGBA")
        except (OSError, ValueError) as exc:
            log.warning("receipt logo %s is not an image (%s); slips print without it", path, exc)
            return b""
        background = PilImage.new("RGBA", picture.size, "white")
        picture = PilImage.alpha_composite(background, picture).convert("L")
        picture.thumbnail((self.dots, self.dots * 2))
        out = Dummy(profile=self.config.profile)
        out.set(align="center")
        with contextlib.redirect_stdout(io.StringIO()):
            out.image(picture, impl="bitImageRaster")
        out.set(align="left")
        return bytes(out.output)

    def drawer_kick(self, pin: int = 2) -> bytes:
        """The bytes that open a cash drawer on connector pin 2 or 5."""
        from tillplug.drivers.escpos_bytes import SlipBytes

        out = SlipBytes(self.config.profile)
        out.cashdraw(pin)
        return bytes(out.output)

    def printable(self, text: str) -> str:
        encoder = self._encoder
        return scripts.printable(text, lambda ch: encoder is not None and encoder.can_encode(self.code_page, ch))

    def _render_block(self, out: Any, block: Block) -> None:
        if isinstance(block, (Text, Columns, Rule)):
            shown = self._printable_block(block)
            if shown is None:  # its stated fallback: leave it out
                return
            block = shown
            double = isinstance(block, Text) and block.double
            small = isinstance(block, Text) and block.whole and self.columns < len(block.text) <= self.small_columns
            bold = getattr(block, "bold", False)
            out.set(bold=bold, double_width=double, double_height=double, align="left", normal_textsize=not double)
            if small:
                out._raw(b"\x1bM\x01")  # font B: a code kept on one line
            for line in text_lines(block, self.small_columns if small else self.columns):
                out.textln(line)
            if small:
                out._raw(b"\x1bM\x00")
            out.set(bold=False, normal_textsize=True)
        elif isinstance(block, Barcode):
            width = self.module_width(block.data)
            if width is not None:  # too long for this paper: the QR code beside it carries the same text
                out._raw(b"\x1dh\x50\x1dw" + bytes([width]) + b"\x1dH\x02\x1df\x00")  # height 80, HRI below
                payload = escpos_payload(block.data)
                out._raw(b"\x1dkI" + bytes([len(payload)]) + payload)
        elif isinstance(block, QR):
            out.qr(block.data, native=True, size=6, center=False)
        elif isinstance(block, Image):
            out._raw(self.logo(block.path))
        elif isinstance(block, Feed):
            out.ln(block.lines)
        elif isinstance(block, Cut):
            out.cut()
        else:
            raise DriverError(f"cannot print a {type(block).__name__}")

    def _printable_block(self, block: Text | Columns | Rule) -> Text | Columns | Rule | None:
        encoder = self._encoder
        return scripts.printable_block(block, lambda ch: encoder is not None and encoder.can_encode(self.code_page, ch))

    def module_width(self, data: str) -> int | None:
        """The widest bars at which the whole Code 128 symbol, quiet zones included, fits the paper;
        None when it cannot fit (then no barcode at all, never a split one)."""
        try:
            modules = 11 * symbol_count(data) + 2
        except ValueError:
            return None  # a character Code 128 cannot carry
        return next((w for w in BARCODE_MODULE_WIDTHS if modules * w <= self.dots), None)

    # -- connection ----------------------------------------------------------

    def answers_status(self) -> bool:
        return self.connection.answers_status

    def open(self) -> None:
        self.connection.open()

    def alive(self) -> bool:
        return self.connection.alive()

    def write(self, data: bytes) -> None:
        self.connection.write(data)

    def status(self) -> PrinterStatus:
        conn = self.connection
        if not conn.answers_status:
            return PrinterStatus(PrinterState.UNKNOWN, f"a {conn.scheme}:// printer cannot report its status")
        return parse_status(conn.ask_all((1, 2, 4)))

    def drawer_pin3(self) -> bool | None:
        """DLE EOT 1 alone: the real-time status, answered even while the printer is busy or offline."""
        conn = self.connection
        return drawer_pin3(conn.ask(1)) if conn.answers_status else None

    def close(self) -> None:
        self.connection.close()
