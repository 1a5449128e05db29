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
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tillplug.barcodes.framing import Frame, ScanFramer, decode
from tillplug.devices.base import (
    ScannerDriver,
)
from tillplug.errors import (
    DeviceBusy,
    DeviceError,
    DeviceGone,
    DriverError,
)

if TYPE_CHECKING:
    from tillplug.config.model import ScannerConfig

log = logging.getLogger(__name__)

LOG_FIRST = 3
LOG_EVERY = 50


class DeviceState(enum.Enum):
    CONNECTING = "connecting"
    READY = "ready"
    STALE = "stale"  # was there, went away; reopening
    ERROR = "error"  # cannot be used as configured (busy, no driver, bad settings)
    UNKNOWN = "unknown"  # a printer that takes jobs but has not confirmed the last few: maybe not printing


@dataclass
class DeviceHealth:
    name: str
    kind: str
    state: DeviceState = DeviceState.CONNECTING
    reason: str = ""
    since: float = field(default_factory=time.time)
    reconnects: int = 0
    failures: int = 0

    def move(self, state: DeviceState, reason: str, on_state: Callable[[DeviceHealth], None]) -> None:
        """A new state (and ``since``) when it or its reason changed, told to ``on_state``.  The state
        set here is what health reads: a listener's bug is logged, never undoes it or stops the device."""
        if self.state is not state or self.reason != reason:
            self.state, self.reason, self.since = state, reason, time.time()
            try:
                on_state(self)
            except Exception:
                log.exception("%s %s: the device state could not be told", self.kind, self.name)

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
    text: str  # "" for a frame with nothing to read (an empty line, the LF of a split CR LF)
    symbology: str | None
    device: str
    lane: int
    at: float  # time.time() when the scan completed
    raw: bytes = b""  # exactly what the scanner sent for it, terminator included (for pass-through)
    keys: tuple[tuple[int, int], ...] = ()  # keyboard scanners: the key events (code, value) that typed it
    continuation: bool = False  # raw only: the end of the previous frame's terminator


def backoff(failures: int, low: float, high: float) -> float:
    return min(high, low * 2.0 ** max(0, failures - 1))


def should_log(failures: int) -> bool:
    return failures <= LOG_FIRST or failures % LOG_EVERY == 0


class _Supervised:
    """What every supervisor shares: its health, and telling the daemon when it changes."""

    health: DeviceHealth
    on_state: Callable[[DeviceHealth], None]

    def _set(self, state: DeviceState, reason: str = "") -> None:
        self.health.move(state, reason, self.on_state)


# How long a start waits for its scanners to open (or fail once) before saying it is ready for scans:
# pyserial's open empties the port's input, so a code scanned before it would be lost.
SCANNERS_TRIED_WITHIN = 3.0


def all_tried(supervisors: Iterable[ScannerSupervisor]) -> bool:
    """Each scanner has opened, or failed once (said in its own log line)."""
    return all(s.health.state is not DeviceState.CONNECTING for s in supervisors)


class ScannerSupervisor(_Supervised):
    def __init__(
        self,
        config: ScannerConfig,
        driver_cls: Callable[[ScannerConfig], ScannerDriver],
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
        self.driver: ScannerDriver | None = None  # the open driver, for feedback and re-typing

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
            self.driver = driver
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
                self.driver = None
                driver.close()

    def send_to_scanner(self, data: bytes) -> bool:
        """Write a command to the scanner (feedback: beep, light); False if it is not open now."""
        driver = self.driver
        if driver is None:
            return False
        try:
            driver.write(data)
        except (DeviceError, DriverError) as exc:
            log.warning("scanner %s: could not send feedback: %s", self.health.name, getattr(exc, "message", exc))
            return False
        return True

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
        if driver.frames_itself:  # keyboard scanners: the driver decodes key events into frames
            while not self._stop.is_set():
                self._deliver_frames(driver.read_frames())
            return
        framer = self._framer()
        while not self._stop.is_set():
            data = driver.read()
            now = time.monotonic()
            self._deliver(framer, framer.feed_frames(data, now) if data else framer.tick_frames(now))

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
                self._deliver(framer, framer.feed_frames(data, time.monotonic()))

        def tick() -> None:
            self._deliver(framer, framer.tick_frames(time.monotonic()))

        loop.call_soon_threadsafe(loop.add_reader, fd, readable)
        idle_gap = self.config.terminator == "none"
        try:
            while not self._stop.is_set() and not lost.wait(0.02 if idle_gap else 0.2):
                if idle_gap:
                    loop.call_soon_threadsafe(tick)
        finally:
            if not loop.is_closed():
                done = threading.Event()

                def release() -> None:
                    loop.remove_reader(fd)
                    done.set()

                loop.call_soon_threadsafe(release)
                done.wait(2)
        if failure:
            raise failure[0]

    def _deliver(self, framer: ScanFramer, frames: list[Frame]) -> None:
        cfg = self.config
        if framer.dropped != self.dropped:
            self.dropped = framer.dropped
            log.warning(
                "scanner %s: dropped a line longer than %d bytes with no terminator (check the terminator setting)",
                cfg.name,
                cfg.max_length,
            )
        self._deliver_frames(frames)

    def _deliver_frames(self, frames: list[Frame]) -> None:
        """Every frame goes on, in order, with its raw bytes; one with no text only for pass-through."""
        cfg = self.config
        for frame in frames:
            text = decode(frame.data, strip_prefix=cfg.strip_prefix, strip_suffix=cfg.strip_suffix)
            self.on_scan(
                Scan(
                    text.text if text else "",
                    text.symbology if text else None,
                    cfg.name,
                    cfg.lane,
                    time.time(),
                    frame.raw,
                    frame.keys,
                    frame.continuation,
                )
            )
