"""Time for verdicts on writes: the in-flight rule, and the engine's clock.

``InFlight``: "not found" proves nothing while a write may still be on its way.

``EngineClock``: the engine's clock, read from its ``Date`` headers against our steady clock.

A verdict that compares our moment (a burn's intent, a write's send) with a time the engine
stamped (``burnedAt``, ``createdAt``) must put both on one clock.  Our wall clock can be stepped
at any time; the engine's answers carry its own time in the ``Date`` header (whole seconds).
Each answer bounds the engine's clock minus ``time.monotonic()``: the header was written after
the request left and before the answer arrived, its second was not yet over, and servers may
format it once a second and reuse it (uvicorn does), so it can be ``DATE_STALE`` behind:

    D - arrived  <=  engine - monotonic  <=  D + 1 + DATE_STALE - left

Bounds from many answers are intersected (they narrow as answers fall on either side of a
second's edge); bounds that contradict the earlier ones mean the engine's clock moved, and
the newest answer alone is kept.  ``DATE_TOLERANCE`` widens the result for what the headers
cannot see (clock rates differing slightly between answers).  With no answer yet, nothing is
known and a verdict that needs the engine's time is "unknown", never a guess.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

DATE_TOLERANCE = 0.5  # seconds each way, beyond what the Date headers themselves bound
DATE_STALE = 1.0  # seconds a server's Date header may lag its clock (formatted once a second, reused)


@dataclass(frozen=True)
class EngineTime:
    """The engine's time at one of our moments: surely at or after ``low``, surely before ``high``."""

    low: float
    high: float

    def contains(self, t: float) -> bool:
        return self.low <= t <= self.high


@functools.lru_cache(maxsize=4)  # every answer has one, and it changes once a second
def parse_date(header: str | None) -> float | None:
    """An HTTP Date header as epoch seconds; None if absent or unreadable."""
    if not header:
        return None
    try:
        return parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


class EngineClock:
    """What the engine's clock reads at a given ``time.monotonic()`` moment, with its uncertainty."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic, *, tolerance: float = DATE_TOLERANCE) -> None:
        self._monotonic = monotonic
        self.tolerance = tolerance
        self._lock = threading.Lock()
        self._low: float | None = None  # engine time minus monotonic time: bounds
        self._high: float | None = None

    def observe(self, date_header: str | None, left: float, arrived: float | None = None) -> None:
        """An answer whose ``Date`` is ``date_header``: its request left at ``left``, the answer
        arrived at ``arrived`` (now when not given), both monotonic."""
        engine = parse_date(date_header)
        if engine is None:
            return
        arrived = self._monotonic() if arrived is None else arrived
        low, high = engine - arrived, engine + 1 + DATE_STALE - left
        with self._lock:
            if self._low is None or self._high is None or low > self._high or high < self._low:
                self._low, self._high = low, high  # first answer, or the engine's clock moved
            else:
                self._low, self._high = max(self._low, low), min(self._high, high)

    def at(self, moment: float) -> EngineTime | None:
        """The engine's time at the monotonic ``moment``; None while no Date header was seen."""
        with self._lock:
            if self._low is None or self._high is None:
                return None
            return EngineTime(moment + self._low - self.tolerance, moment + self._high + self.tolerance)

    def now(self) -> EngineTime | None:
        return self.at(self._monotonic())


# How long after taking a write the engine may still apply its reaction (its contract: reactions take
# "almost instant to a few seconds"; past this it surely has).  A refund waits this long past its
# deduction's in-flight window (``tillplug.outbox.deliver.REVERSAL_WINDOW``) before it is dropped.
REACTION_WINDOW = 60.0


class InFlight:
    """The one rule for a write whose outcome is unknown: "not found" means nothing while it may be in flight.

    A write may still reach the engine until ``window`` seconds after the last moment it could
    have left this till (``sent``: called when an attempt ends, answered or not, so the token
    fetch and the request itself are inside).  Times are ``time.monotonic()``: no clock step
    moves them.  A write sent before this process started (a crash, a restart) is taken as sent
    at the start: the restart's time is never earlier than the real send, so the window is
    counted conservatively from before the crash.  Used by the outbox (its own rows and the
    writes a refund reverses) and by the flows' settling of deductions and burns.

    A send is remembered for the window plus ``REACTION_WINDOW``, the longest anyone asks about
    it (a refund waiting for its deduction's reaction): forgotten sooner, it would be taken as
    sent at the start and that wait cut short.
    """

    def __init__(self, window: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        if window < 0:
            raise ValueError("the in-flight window cannot be negative")
        self.window = window
        self.remembered = window + REACTION_WINDOW  # seconds a send is kept after it
        self._monotonic = monotonic
        self.started = monotonic()
        self._sent: dict[str, float] = {}  # key -> monotonic time its latest attempt ended
        self._lock = threading.Lock()  # the outbox's worker threads and the event loop both ask

    def sent(self, key: str) -> None:
        """An attempt to send the write ``key`` just ended (answered or not): its window starts now."""
        now = self._monotonic()
        with self._lock:
            # Kept in the order sent (a key sent again moves to the end), so what is past ``remembered``
            # is at the front: dropped from there, a write at a time.  Rebuilding the whole map on every
            # send once made a 10,000-row drain quadratic (#27).  Forgetting what no one asks about any
            # more changes no answer: the start is earlier still.
            self._sent.pop(key, None)
            self._sent[key] = now
            for old, at in list(itertools.islice(self._sent.items(), 8)):
                if now - at < self.remembered:
                    break
                del self._sent[old]

    def sent_at(self, key: str) -> float:
        """The monotonic time the write's latest attempt ended (this process's start if before it)."""
        with self._lock:
            return self._sent.get(key, self.started)

    def remaining(self, key: str, window: float | None = None) -> float:
        """Seconds until the write ``key`` can no longer be in flight (0: it cannot be now)."""
        window = self.window if window is None else window
        return max(0.0, self.sent_at(key) + window - self._monotonic())

    def may_land(self, key: str, window: float | None = None) -> bool:
        """True while "not found" for ``key`` proves nothing: the write may still be on its way."""
        return self.remaining(key, window) > 0


def in_flight_window(connect_timeout: float, read_timeout: float, configured: float | None = None) -> float:
    """The configured window, or by default twice the longest one attempt can take (connect + read)."""
    return configured if configured is not None else 2 * (connect_timeout + read_timeout)


__all__ = [
    "DATE_STALE",
    "DATE_TOLERANCE",
    "REACTION_WINDOW",
    "EngineClock",
    "EngineTime",
    "InFlight",
    "in_flight_window",
    "parse_date",
]
