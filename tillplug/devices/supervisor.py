"""One supervisor per device: open, read or write, and on unplug or error mark the
device stale, back off (capped), re-resolve the port and reopen — forever.

The first few failures are logged, then one in fifty; the recovery once.  State
(connecting, ready, stale, error with a reason) is kept for health output.
Each scanner has a supervising thread (opening a port blocks).  A real tty is then
read by the event loop itself (``add_reader``: one wake-up per scan, no hand-off);
other ports (pyserial URLs, third-party drivers) are read by the thread.  Scans and
state changes go to callbacks that must be thread-safe.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tillplug.barcodes.framing import ScanFramer, decode
from tillplug.devices.base import (
    PrinterDriver,
    PrinterState,
    PrinterStatus,
    ScannerDriver,
)
from tillplug.errors import (
    DeviceBusy,
    DeviceError,
    DeviceGone,
    DriverError,
    PrinterNotReady,
)

log = logging.getLogger(__name__)

# What an OS error on a printer means to a cashier (errno → what to check).
_PRINTER_TROUBLE = {
    errno.EIO: "stopped answering; check it is switched on and its cable is in",
    errno.ENODEV: "is unplugged; plug it back in",
    errno.ENOENT: "is unplugged; plug it back in",
    errno.ENXIO: "is unplugged; plug it back in",
    errno.EACCES: "cannot be used by tillplug (no permission); call a technician",
    errno.EBUSY: "is in use by another program; call a technician",
    errno.ECONNREFUSED: "refuses the connection; check it is switched on",
    errno.EHOSTUNREACH: "cannot be reached on the network; check its cable",
    errno.ETIMEDOUT: "did not answer in time; check it is switched on",
    errno.EPIPE: "dropped the connection; check it is switched on",
    errno.ECONNRESET: "dropped the connection; check it is switched on",
}


def printer_sentence(name: str, exc: BaseException) -> str:
    """A sentence for the cashier about a failed print, never ``[Errno 5] Input/output error``."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    trouble = _PRINTER_TROUBLE.get(cause.errno) if isinstance(cause, OSError) and cause.errno else None
    if trouble is None:
        trouble = "is not working; check it is switched on, has paper and is connected"
    return f"The receipt printer {name} {trouble}. The sale is not affected."


LOG_FIRST = 3
LOG_EVERY = 50


class DeviceState(enum.Enum):
    CONNECTING = "connecting"
    READY = "ready"
    STALE = "stale"  # was there, went away; reopening
    ERROR = "error"  # cannot be used as configured (busy, no driver, bad settings)


@dataclass
class DeviceHealth:
    name: str
    kind: str
    state: DeviceState = DeviceState.CONNECTING
    reason: str = ""
    since: float = field(default_factory=time.time)
    reconnects: int = 0
    failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "state": self.state.value,
            "reason": self.reason,
            "since": self.since,
            "reconnects": self.reconnects,
        }


@dataclass(frozen=True)
class Scan:
    text: str
    symbology: str | None
    device: str
    lane: int
    at: float  # time.time() when the scan completed


def backoff(failures: int, low: float, high: float) -> float:
    return min(high, low * 2 ** max(0, failures - 1))


def should_log(failures: int) -> bool:
    return failures <= LOG_FIRST or failures % LOG_EVERY == 0


class _Supervised:
    """What every supervisor shares: its health, and telling the daemon when it changes."""

    health: DeviceHealth
    on_state: Callable[[DeviceHealth], None]

    def _set(self, state: DeviceState, reason: str = "") -> None:
        h = self.health
        if h.state is not state or h.reason != reason:
            h.state, h.reason, h.since = state, reason, time.time()
            self.on_state(h)


class ScannerSupervisor(_Supervised):
    def __init__(
        self,
        config: Any,
        driver_cls: Callable[[Any], ScannerDriver],
        on_scan: Callable[[Scan], None],
        on_state: Callable[[DeviceHealth], None] = lambda h: None,
        *,
        backoff_low: float = 0.1,
        backoff_high: float = 1.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.loop = loop  # given: pollable ports are read by this loop, the thread only supervises
        self.driver_cls = driver_cls
        self.on_scan = on_scan
        self.on_state = on_state
        self.backoff_low, self.backoff_high = backoff_low, backoff_high
        self.health = DeviceHealth(config.name, "scanner")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"scanner-{self.config.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        h = self.health
        while not self._stop.is_set():
            if h.failures == 0:
                self._set(DeviceState.CONNECTING)
            driver = self.driver_cls(self.config)
            try:
                driver.open()
            except (DeviceError, DriverError) as exc:
                self._failed(
                    exc, DeviceState.ERROR if isinstance(exc, (DeviceBusy, DriverError)) else DeviceState.STALE
                )
                continue
            if h.failures:
                h.reconnects += 1
                log.info("scanner %s is back on %s after %d failed attempt(s)", h.name, self.config.port, h.failures)
            h.failures = 0
            self._set(DeviceState.READY)
            try:
                fd = driver.fileno() if self.loop is not None else None
                if fd is not None:
                    self._watch_in_loop(driver, fd)
                else:
                    self._read_loop(driver)
            except DeviceError as exc:
                self._failed(exc, DeviceState.STALE)
            except Exception as exc:  # a driver bug must not kill the supervisor
                self._failed(DeviceGone(f"driver error: {type(exc).__name__}: {exc}"), DeviceState.STALE)
            finally:
                driver.close()

    def _failed(self, exc: Exception, state: DeviceState) -> None:
        h = self.health
        h.failures += 1
        reason = getattr(exc, "message", str(exc))
        if should_log(h.failures):
            log.warning("scanner %s: %s (attempt %d; retrying)", h.name, reason, h.failures)
        self._set(state, reason)
        self._stop.wait(backoff(h.failures, self.backoff_low, self.backoff_high))

    def _framer(self) -> ScanFramer:
        cfg = self.config
        return ScanFramer(terminator=cfg.terminator, max_length=cfg.max_length, idle_gap=cfg.idle_gap_ms / 1000)

    def _read_loop(self, driver: ScannerDriver) -> None:
        framer = self._framer()
        while not self._stop.is_set():
            data = driver.read()
            now = time.monotonic()
            self._deliver(framer, framer.feed(data, now) if data else framer.tick(now))

    def _watch_in_loop(self, driver: ScannerDriver, fd: int) -> None:
        """Reads happen in the event loop (one wake-up per scan, no hand-off); this thread waits
        for the port to fail or for stop, then takes the reader away before the port is closed."""
        loop = self.loop
        assert loop is not None
        framer = self._framer()  # touched only on the loop's thread
        failure: list[Exception] = []
        lost = threading.Event()

        def readable() -> None:
            try:
                data = driver.read_available()
            except Exception as exc:  # DeviceGone, or a driver bug: either way the port is done
                failure.append(exc if isinstance(exc, DeviceError) else DeviceGone(f"driver error: {exc}"))
                loop.remove_reader(fd)
                lost.set()
                return
            if data:
                self._deliver(framer, framer.feed(data, time.monotonic()))

        def tick() -> None:
            self._deliver(framer, framer.tick(time.monotonic()))

        loop.call_soon_threadsafe(loop.add_reader, fd, readable)
        idle_gap = self.config.terminator == "none"
        try:
            while not self._stop.is_set() and not lost.wait(0.02 if idle_gap else 0.2):
                if idle_gap:
                    loop.call_soon_threadsafe(tick)
        finally:
            if not loop.is_closed():
                done = threading.Event()
                loop.call_soon_threadsafe(lambda: (loop.remove_reader(fd), done.set()))
                done.wait(2)
        if failure:
            raise failure[0]

    def _deliver(self, framer: ScanFramer, frames: list[bytes]) -> None:
        cfg = self.config
        if framer.dropped != self.dropped:
            self.dropped = framer.dropped
            log.warning(
                "scanner %s: dropped a line longer than %d bytes with no terminator (check the terminator setting)",
                cfg.name,
                cfg.max_length,
            )
        for frame in frames:
            text = decode(frame, strip_prefix=cfg.strip_prefix, strip_suffix=cfg.strip_suffix)
            if text is not None:
                self.on_scan(Scan(text.text, text.symbology, cfg.name, cfg.lane, time.time()))


class PrinterSupervisor(_Supervised):
    """Prints on demand; reopens a printer that went away at the next job."""

    def __init__(
        self, config: Any, driver: PrinterDriver, on_state: Callable[[DeviceHealth], None] = lambda h: None
    ) -> None:
        self.config = config
        self.driver = driver
        self.on_state = on_state
        self.health = DeviceHealth(config.name, "printer")
        self._lock = asyncio.Lock()
        self._open = False
        self.last_status: PrinterStatus = PrinterStatus(PrinterState.UNKNOWN, "not asked yet")

    def _ensure_open(self) -> None:
        if not self._open:
            self.driver.open()
            self._open = True
            if self.health.failures:
                self.health.reconnects += 1
                log.info("printer %s is back after %d failure(s)", self.health.name, self.health.failures)
            self.health.failures = 0
            self._set(DeviceState.READY)

    def _print_blocking(self, receipt: Any) -> bytes:
        data = self.driver.render(receipt)
        try:
            self._ensure_open()
            self.driver.write(data)
        except (DeviceError, DriverError) as exc:
            self._open = False
            self.driver.close()
            self.health.failures += 1
            reason = getattr(exc, "message", str(exc))
            if should_log(self.health.failures):
                log.warning("printer %s: %s", self.health.name, reason)
            self._set(DeviceState.STALE if isinstance(exc, DeviceGone) else DeviceState.ERROR, reason)
            # The technician's reason is in the log and health; the cashier gets a sentence.
            raise PrinterNotReady(printer_sentence(self.health.name, exc)) from exc
        return data

    async def open(self) -> None:
        """Try to open at start-up; a printer that is not there yet is not fatal."""
        async with self._lock:
            try:
                await asyncio.to_thread(self._ensure_open)
            except (DeviceError, DriverError) as exc:
                self.health.failures += 1
                self._set(DeviceState.STALE, getattr(exc, "message", str(exc)))

    async def print(self, receipt: Any) -> bytes:
        async with self._lock:  # one job at a time per printer
            return await asyncio.to_thread(self._print_blocking, receipt)

    async def status(self) -> PrinterStatus:
        async with self._lock:
            if not self._open:
                return PrinterStatus(PrinterState.UNKNOWN, self.health.reason or "not connected")
            self.last_status = await asyncio.to_thread(self.driver.status)
            return self.last_status

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self.driver.close)
            self._open = False
