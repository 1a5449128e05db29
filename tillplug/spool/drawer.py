"""The cash drawer's state, from the sensor on pin 3 of the printer's drawer connector.

The printer reports the pin's level in its real-time status (DLE EOT 1, bit 2), answered even while
it is busy or offline.  Which level means "open" depends on the drawer (the config says, with the
sensor's presence): a printer whose drawer has no sensor wired, or that does not answer, says
``unknown``, never a guess.  The spool's task reads the pin every ``WATCH_EVERY`` seconds while
idle (a 3-byte query) and from every status it asks anyway; each change is a ``drawer_state``
event, and a till waiting for the close (``POST /v1/drawer/open`` with ``waitForCloseSeconds``)
is woken by it.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

WATCH_EVERY = 0.2  # seconds between sensor reads while the printer is idle: a drawer shut is seen at once
MAX_WAIT_FOR_CLOSE = 30.0  # a till waiting longer for a drawer to close should listen to the event stream
NO_SENSOR = "this printer does not report the drawer sensor (drawer_sensor is not set in its config)"


class DrawerState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class DrawerChanged:
    """The drawer opened, closed, or can no longer be read: the till hears ``drawer_state``."""

    printer: str
    lane: int
    state: DrawerState
    reason: str
    type: ClassVar[str] = "drawer_state"

    def data(self) -> dict[str, Any]:
        return {"printer": self.printer, "state": self.state.value, "reason": self.reason}


class DrawerWatch:
    """What one printer's drawer sensor last said.  Touched only on the event loop (the spool's task)."""

    def __init__(self, printer: str, lane: int, open_level: Literal["high", "low"] | None) -> None:
        self.printer = printer
        self.lane = lane
        self.open_level = open_level  # None: no sensor, the state stays unknown
        self.state = DrawerState.UNKNOWN
        self.reason = NO_SENSOR if open_level is None else "not read yet"
        self.since = time.time()
        self.opened = 0  # times seen opening since start: a wait for the close needs an opening first
        self._changed = asyncio.Event()

    @property
    def fitted(self) -> bool:
        return self.open_level is not None

    def saw(
        self, pin3: bool | None, why_unknown: str = "the printer did not report the sensor"
    ) -> DrawerChanged | None:
        """A reading of pin 3 (None: no answer); the change it makes, if any."""
        if self.open_level is None:
            return None
        if pin3 is None:
            state, reason = DrawerState.UNKNOWN, why_unknown
        else:
            state = DrawerState.OPEN if pin3 == (self.open_level == "high") else DrawerState.CLOSED
            reason = ""
        if state is self.state:
            return None
        self.state, self.reason, self.since = state, reason, time.time()
        if state is DrawerState.OPEN:
            self.opened += 1
        self._changed.set()
        self._changed = asyncio.Event()
        return DrawerChanged(self.printer, self.lane, state, reason)

    async def wait_for_close(self, timeout: float) -> bool:
        """True once the drawer, open now or opening after this call, is closed; False after ``timeout``."""
        opened_before, was_open = self.opened, self.state is DrawerState.OPEN
        deadline = time.monotonic() + min(timeout, MAX_WAIT_FOR_CLOSE)
        while not ((was_open or self.opened > opened_before) and self.state is DrawerState.CLOSED):
            if self.state is DrawerState.OPEN:
                was_open = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return False
        return True

    def view(self) -> dict[str, Any]:
        return {
            "printer": self.printer,
            "lane": self.lane,
            "sensor": self.fitted,
            "state": self.state.value,
            "reason": self.reason,
            "since": self.since,
        }
