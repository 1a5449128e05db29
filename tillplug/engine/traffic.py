"""Engine traffic, as the fleet sees it: which use case each request serves, and whether
interactive calls are being rate limited.

A request's use case travels in a contextvar: an API route or a flow entry point sets it
(``with use_case("lookup"): ...``), the outbox sets ``outbox``, and the engine client reads it
for every HTTP exchange it makes.  From those the ``Traffic`` object keeps

* a count of requests per use case (``engine_requests_total{use_case}``), and
* the signal the outbox yields to: interactive calls were answered 429 (or 503), so the
  backlog drain holds off until ``Retry-After`` has passed, and the rate of interactive
  requests, which the outbox leaves free out of this till's share.

Pure and clock-injected: no I/O, no imports from the rest of tillplug.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

OUTBOX = "outbox"  # the background use case: everything else is a cashier waiting
OTHER = "other"

_use_case: ContextVar[str] = ContextVar("tillplug_use_case", default=OTHER)

INTERACTIVE_HOLD = 2.0  # seconds the outbox yields after an interactive 429 that gave no Retry-After
MAX_HOLD = 3600.0  # a Retry-After longer than an hour is read as an hour
RATE_WINDOW = 60.0  # seconds: the time constant of the interactive request rate
BUSY_WINDOW = 3600.0  # seconds: the time constant of how busy this till is, for its weight in the fleet


# The till API's routes and the use case each serves (method, path pattern): the daemon sets
# the use case per request from this table, so neither the routes nor the flows need to.
ROUTE_USE_CASES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"^/v1/members/[^/]+$"), "lookup"),
    ("POST", re.compile(r"^/v1/checkouts$"), "open"),
    ("PUT", re.compile(r"^/v1/checkouts/[^/]+/member$"), "attach"),
    ("POST", re.compile(r"^/v1/checkouts/[^/]+/points$"), "spend"),
    ("POST", re.compile(r"^/v1/checkouts/[^/]+/vouchers$"), "voucher"),
    ("GET", re.compile(r"^/v1/checkouts/[^/]+/benefits$"), "benefits"),
    ("POST", re.compile(r"^/v1/checkouts/[^/]+/benefits/[^/]+/redeem$"), "redeem"),
    ("POST", re.compile(r"^/v1/checkouts/[^/]+/tender$"), "tender"),
    ("POST", re.compile(r"^/v1/checkouts/[^/]+/complete$"), "complete"),
    ("POST", re.compile(r"^/v1/checkouts/[^/]+/void$"), "void"),
    ("POST", re.compile(r"^/v1/print/balance$"), "balance_slip"),
    ("GET", re.compile(r"^/v1/health$"), "health"),
]


def use_case_of(method: str, path: str) -> str:
    for route_method, pattern, name in ROUTE_USE_CASES:
        if method == route_method and pattern.match(path.rstrip("/") or "/"):
            return name
    return OTHER


class UseCaseMiddleware:
    """ASGI: every request to the till API runs with its use case set (see ``ROUTE_USE_CASES``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        with use_case(use_case_of(scope.get("method", ""), scope.get("path", ""))):
            await self.app(scope, receive, send)


def current_use_case() -> str:
    return _use_case.get()


@contextmanager
def use_case(name: str) -> Iterator[None]:
    """Engine requests made inside are counted under ``name``."""
    token = _use_case.set(name)
    try:
        yield
    finally:
        _use_case.reset(token)


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds or an HTTP date), at most an hour; None if unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now()
        except (TypeError, ValueError, IndexError):
            return None
    return None if math.isnan(seconds) else min(MAX_HOLD, max(0.0, seconds))


def bounded_hold(retry_after: float | None, default: float) -> float:
    """A Retry-After as a wait in seconds: missing or unreadable → ``default``, at most an hour."""
    if retry_after is None or math.isnan(retry_after):
        return default
    return min(MAX_HOLD, max(0.0, retry_after))


class Traffic:
    """Per-till engine traffic: requests by use case and the interactive rate-limit signal."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.requests: dict[str, int] = {}
        self.rate_limited: dict[str, int] = {}  # 429 answers by use case
        self.interactive_limited_until = 0.0
        self.interactive_ok_at: float | None = None  # the engine last answered a cashier's call
        self.interactive_failed_at: float | None = None  # a cashier's call last failed (5xx, timeout, no connection)
        # Called when the engine answers a cashier's call: the outbox wakes on it if it was waiting
        # out an outage, so a till learns the engine is back from its cashiers, not a row's backoff.
        self.on_interactive_ok: Callable[[], None] | None = None
        self._rate = 0.0  # interactive requests per second, exponentially weighted
        self._busy = 0.0  # the same over an hour
        self._rate_stamp = clock()
        self._started = self._rate_stamp

    def request(self, name: str | None = None) -> None:
        """One HTTP exchange with the engine is starting (called by the engine client)."""
        name = name or current_use_case()
        self.requests[name] = self.requests.get(name, 0) + 1
        if name != OUTBOX:
            self._decay()
            self._rate += 1.0 / RATE_WINDOW
            self._busy += 1.0 / BUSY_WINDOW

    def answered(self, status: int, retry_after: float | None, name: str | None = None) -> None:
        """The engine answered ``status``; a 429/503 to a cashier's call makes the outbox yield."""
        name = name or current_use_case()
        if status == 429:
            self.rate_limited[name] = self.rate_limited.get(name, 0) + 1
        if name != OUTBOX and status < 500 and status != 429:
            self.interactive_ok_at = self.clock()
            if self.on_interactive_ok is not None:
                self.on_interactive_ok()
        if name != OUTBOX and status >= 500:
            self.interactive_failed_at = self.clock()
        if name != OUTBOX and status in (429, 503):
            until = self.clock() + bounded_hold(retry_after, INTERACTIVE_HOLD)
            self.interactive_limited_until = max(self.interactive_limited_until, until)

    def unanswered(self, name: str | None = None) -> None:
        """An exchange got no answer at all (timeout, no connection): for the outage's timing."""
        if (name or current_use_case()) != OUTBOX:
            self.interactive_failed_at = self.clock()

    def interactive_hold(self) -> float:
        """Seconds the outbox should still yield to rate-limited interactive calls (0: none)."""
        return max(0.0, self.interactive_limited_until - self.clock())

    def interactive_rate(self) -> float:
        """Interactive requests per second, averaged over about a minute."""
        self._decay()
        return self._rate

    def busy_rate(self) -> float:
        """Interactive requests per second over about an hour (corrected for a shorter history)."""
        self._decay()
        seen = 1.0 - math.exp(-max(1.0, self.clock() - self._started) / BUSY_WINDOW)
        return self._busy / seen

    def _decay(self) -> None:
        now = self.clock()
        elapsed = max(0.0, now - self._rate_stamp)
        self._rate *= math.exp(-elapsed / RATE_WINDOW)
        self._busy *= math.exp(-elapsed / BUSY_WINDOW)
        self._rate_stamp = now


__all__ = [
    "OUTBOX",
    "Traffic",
    "UseCaseMiddleware",
    "bounded_hold",
    "current_use_case",
    "parse_retry_after",
    "use_case",
    "use_case_of",
]
