"""Reconciliation that cannot be fooled: what a look-up by eventKey may conclude.

The outbox asks the engine whether a write carrying ``eventKey`` arrived.  WLL documents
no filter syntax, so an answer proves only what it shows:

* **landed** (found): a returned event (or order) carries the key in its payload (or metadata);
* **not landed** (not found): nothing carries it *and* the engine is known to filter — either
  the dialect file says engine-check saw the filter work, or a look-up in this process
  returned results that all carried the requested key (so the engine filtered);
* **unknown** (unverifiable): anything else — the filter ignored (other keys came back),
  rejected (a 4xx), or never yet seen to work.  Such a row is never resent and never
  marked "not needed"; it is held and reported.

The verdict is an ``Outcome`` (``tillplug.engine.outcome``), the money writes' one vocabulary.

Where the filter cannot tell, the engine's recent list is read unfiltered, newest first
(``scan_recent``): ``limit`` at the documented maximum, at most ``SCAN_MAX_PAGES`` pages per
look-up.  Found if an item carries the key; **not found** only if the engine's own timestamps
prove the list was read back past the write's earliest send (less ``SCAN_SKEW``), or the whole
list was read; otherwise unverifiable.  Either way "not found" is believed by the caller only
once the write can no longer be in flight (``tillplug.engine.clock.InFlight``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tillplug.engine.models import parse_time
from tillplug.engine.outcome import Outcome
from tillplug.errors import EngineAuthError, EngineProtocolError, EngineRejected

LIST_LIMIT = 1000  # the documented maximum of ``limit`` on WLL's list endpoints (engine-api.md 3.4)
SCAN_MAX_PAGES = 3  # pages of the unfiltered list one look-up may read
# How far before the write's earliest send (our clock, moved to the engine's) a scan must reach:
# the engine stamps an event when it stores it, and the two clocks are compared through Date
# headers of whole seconds; this covers both, and a clock stepped by less while tillplug ran.
SCAN_SKEW = 120.0


@dataclass(frozen=True)
class Lookup:
    outcome: Outcome  # landed (found), not_landed (surely absent), unknown (cannot tell)
    engine_id: str | None = None
    reason: str = ""
    # Unverifiable only because the filter was never seen to work (nothing contradicted it):
    # a look-up of a key the engine surely has can settle that (``Deliverer`` does).
    unproven: bool = False

    @property
    def found(self) -> bool:
        return self.outcome is Outcome.LANDED


@dataclass
class PageVerdict:
    """What one page of look-up results shows (an empty page: neither)."""

    match: Any | None  # the first item carrying the key
    foreign: bool  # an item carrying another key (or none): the filter was not applied


def read_page(items: Iterable[Any], key: str, key_of: Callable[[Any], object]) -> PageVerdict:
    match = None
    foreign = False
    for item in items:
        if key_of(item) == key:
            match = item if match is None else match
        else:
            foreign = True
    return PageVerdict(match, foreign)


class FilterEvidence:
    """Per look-up kind (event, order): has this engine been seen to filter by eventKey?

    ``True`` from the dialect file or from a look-up whose results all carried the
    requested key; ``False`` once a look-up returned another key (the filter was ignored).
    The latest observation wins: an engine may change under a running daemon.
    """

    def __init__(self, calibrated: dict[str, bool] | None = None) -> None:
        self._seen: dict[str, bool] = dict(calibrated or {})

    def works(self, kind: str) -> bool:
        return self._seen.get(kind, False)

    def observe(self, kind: str, page: PageVerdict) -> None:
        if page.foreign:
            self._seen[kind] = False
        elif page.match is not None:
            self._seen[kind] = True


def stamped(item: Any) -> float | None:
    """When the engine stored a listed event or order (its ``createdAt``), epoch seconds; None if unknown."""
    value = item.get("createdAt") if isinstance(item, dict) else None
    try:
        when = parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return when.timestamp() if when is not None and when.tzinfo is not None else None


def key_in(item: Any, kind: str) -> object:
    holder = item.get("metadata" if kind == "order" else "payload") if isinstance(item, dict) else None
    return holder.get("eventKey") if isinstance(holder, dict) else None


async def scan_recent(
    page: Callable[[int, int], Awaitable[list[Any]]],
    key: str,
    since: float | None,
    *,
    kind: str = "event",
    max_pages: int = SCAN_MAX_PAGES,
    limit: int = LIST_LIMIT,
) -> Lookup:
    """Read the unfiltered list newest first until the write is found or proven absent.

    ``since``: the earliest the write can have been stored, on the engine's clock (None: only
    reading the whole list proves anything).  Absent is proven by the list's end, or by an item
    stamped before ``since - SCAN_SKEW`` in a list whose stamps never grew (so it really is
    newest first).  A refused or unreadable list proves nothing (unverifiable).
    """
    back_to = None if since is None else since - SCAN_SKEW
    previous: float | None = None
    ordered = True
    for number in range(max_pages):
        try:
            items = await page(number * limit, limit)
        except EngineAuthError:
            raise
        except (EngineRejected, EngineProtocolError) as exc:
            return Lookup(Outcome.UNKNOWN, reason=f"the unfiltered list was refused too ({exc.code})")
        for item in items:
            if key_in(item, kind) == key:
                return Lookup(Outcome.LANDED, engine_id=str(item.get("id") or "found"))
            when = stamped(item)
            if when is None or (previous is not None and when > previous):
                ordered = False  # no stamp, or not newest first: only the list's end proves absence
            previous = when if when is not None else previous
        if len(items) < limit:
            return Lookup(Outcome.NOT_LANDED)
        if ordered and back_to is not None and previous is not None and previous < back_to:
            return Lookup(Outcome.NOT_LANDED)
    return Lookup(Outcome.UNKNOWN, reason=f"not among the newest {max_pages * limit} and the list goes on")
