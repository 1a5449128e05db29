"""The two driver interfaces.  One narrow base class per device kind.

Drivers are blocking and simple; the supervisor runs them in a worker thread
(``asyncio.to_thread``), so nothing above this layer waits on a port.
Optional abilities are declared in ``capabilities``, never probed.
Drivers translate their library's exceptions into ``DeviceGone`` /
``DeviceBusy`` / ``DriverError`` at this boundary.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from tillplug.barcodes.framing import Frame
from tillplug.errors import DriverError

if TYPE_CHECKING:
    from tillplug.config.model import DisplayConfig, PrinterConfig, ScannerConfig
    from tillplug.receipts.layout import Receipt


class Capability(enum.Enum):
    CUT = "cut"
    STATUS = "status"
    DRAWER = "drawer"
    BARCODE = "barcode"
    QR = "qr"


class PrinterState(enum.Enum):
    OK = "ok"
    WARNING = "warning"  # e.g. paper near end: still prints
    ERROR = "error"  # paper out, cover open, offline
    UNKNOWN = "unknown"  # no answer, or an answer we cannot read; never "no paper"


@dataclass(frozen=True)
class PrinterStatus:
    state: PrinterState
    reason: str = ""
    # The cash drawer connector's pin 3 (the drawer sensor) as DLE EOT 1 bit 2 reported it: True high,
    # False low, None when the printer did not say.  Which level means "open" is the drawer's, in config.
    drawer_pin3: bool | None = None

    def to_dict(self) -> dict[str, str]:
        return {"state": self.state.value, "reason": self.reason}


class ScannerDriver(ABC):
    """Reads bytes from a scanner.  Writes to it only feedback commands the config declares."""

    kind: ClassVar[str] = "scanner"
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    # Keyboard scanners frame scans themselves (Enter or Tab key events): ``read_frames`` instead of ``read``.
    frames_itself: ClassVar[bool] = False
    # Drivers that hand the till the scans tillplug does not consume themselves (keyboard scanners re-type them).
    passes_through: ClassVar[bool] = False

    def __init__(self, config: ScannerConfig) -> None:
        self.config = config

    @abstractmethod
    def open(self) -> None:
        """Open the port exclusively; raise DeviceGone or DeviceBusy."""

    @abstractmethod
    def read(self) -> bytes:
        """Bytes that arrived, or b'' after a short timeout; raise DeviceGone on unplug."""

    @abstractmethod
    def close(self) -> None:
        """Release the port; safe to call twice."""

    def fileno(self) -> int | None:
        """A descriptor the event loop can watch instead of a reader thread, or None (the default)."""
        return None

    def read_available(self) -> bytes:
        """With ``fileno()``: the bytes that are there now, without waiting; raise DeviceGone on unplug."""
        return self.read()

    def read_frames(self) -> list[Frame]:
        """With ``frames_itself``: the scans completed now, or [] after a short timeout."""
        raise NotImplementedError(f"{type(self).__name__} does not frame scans itself")

    def write(self, data: bytes) -> None:
        """Send a command to the scanner (feedback); raise DeviceGone, or DriverError if it takes none."""
        raise DriverError(f"{type(self).__name__} cannot send commands to its scanner")

    def pass_through(self, frame: Frame) -> bool:
        """Hand the till a scan tillplug does not consume, the way the scanner gave it (keyboard
        scanners re-type it); False if this driver has no way to."""
        return False


class PrinterDriver(ABC):
    """Turns a receipt layout into bytes and sends them."""

    kind: ClassVar[str] = "printer"
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def __init__(self, config: PrinterConfig, cache_dir: str | None = None) -> None:
        self.config = config
        self.cache_dir = cache_dir

    @abstractmethod
    def open(self) -> None:
        """Connect; raise DeviceGone, DeviceBusy or DriverError."""

    @abstractmethod
    def render(self, receipt: Receipt) -> bytes:
        """The exact bytes for a receipt on this printer."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send bytes; raise DeviceGone if the printer went away."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; safe to call twice."""

    def status(self) -> PrinterStatus:
        """Override when ``Capability.STATUS`` is declared."""
        return PrinterStatus(PrinterState.UNKNOWN, "this printer does not report status")

    def drawer_pin3(self) -> bool | None:
        """One real-time read of the drawer sensor (connector pin 3 high?); None without an answer."""
        return None

    def answers_status(self) -> bool:
        """Can ``status()`` get an answer over this connection?  Without one a job is only ever ``sent``."""
        return Capability.STATUS in self.capabilities

    def alive(self) -> bool:
        """Checked before each job: False when the open connection has died (the driver is then reopened)."""
        return True


class DisplayDriver(ABC):
    """Shows a few short lines to the customer (a pole display).  Write-only, blocking, simple."""

    kind: ClassVar[str] = "display"
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def __init__(self, config: DisplayConfig) -> None:
        self.config = config

    @abstractmethod
    def open(self) -> None:
        """Open the port exclusively and reset the display; raise DeviceGone or DeviceBusy."""

    @abstractmethod
    def show(self, lines: tuple[str, ...]) -> None:
        """Replace what the display shows with these lines (made to fit); raise DeviceGone on unplug."""

    @abstractmethod
    def close(self) -> None:
        """Release the port; safe to call twice."""
