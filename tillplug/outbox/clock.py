"""Time for the outbox: wall-clock seconds that a clock step cannot move.

The outbox stores due times and creation times as wall-clock seconds (they must mean
something after a restart and to a technician).  Inside one process they are read through
a :class:`SteadyClock`: it follows the wall clock while the two agree (NTP's small
adjustments), and advances by ``time.monotonic()`` alone across a step — the clock set back
an hour does not hold a due row for that hour, four days ahead does not make every waiting
row four days old.  Once the wall clock comes back within ``tolerance`` it is followed again.

Values read from disk are bounded in the store (a due time at most ``MAX_DELAY`` ahead of
when it was set, see ``OutboxStore``), because a step while tillplug was not running cannot
be seen from here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

STEP_TOLERANCE = 5.0  # seconds: a larger difference between wall and monotonic time is a clock step


class SteadyClock:
    """Callable like ``time.time``; never jumps with the system clock."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        tolerance: float = STEP_TOLERANCE,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self.tolerance = tolerance
        self._lock = threading.Lock()  # the store calls it from worker threads
        self._base_wall = wall()
        self._base_mono = monotonic()
        self.step = 0.0  # seconds the wall clock is away from this clock (0 while they agree)

    def __call__(self) -> float:
        with self._lock:
            wall, mono = self._wall(), self._monotonic()
            steady = self._base_wall + (mono - self._base_mono)
            away = wall - steady
            if abs(away) <= self.tolerance:  # they agree: follow the wall clock (and its small adjustments)
                if self.step:
                    log.warning("the system clock is back in step; the outbox follows it again")
                self._base_wall, self._base_mono, self.step = wall, mono, 0.0
                return wall
            if abs(away - self.step) > self.tolerance:  # a new step: said once, not followed
                log.warning(
                    "the system clock jumped %+.0f s; the outbox keeps counting due times and ages from "
                    "before the jump (until the clock is set right or tillplug restarts)",
                    away - self.step,
                )
                self.step = away
            return steady


__all__ = ["STEP_TOLERANCE", "SteadyClock"]
