"""The event stream the till software listens to (served as server-sent events), and what came of a scan.

Events carry no personal data: members appear only as masked ids.  A slow
listener loses its oldest events (counted in ``EventBus.dropped``) rather than
slowing the till down or growing memory; it catches up from the history by
reconnecting with ``Last-Event-ID``.

A member card or voucher read by one of tillplug's scanners is told to the till
as events (``member_found``, ``voucher_result``, ``error``, ...); the flow that
handled it also returns the same news as a ``ScanOutcome``, which the scan path
(``tillplug.daemon.scans``) turns into the scanner's feedback.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

QUEUE_SIZE = 1000


@dataclass(frozen=True)
class TillEvent:
    id: int
    type: str  # scan, member_found, member_attached, voucher_result, redemption, device_state, error, ...
    data: dict[str, Any]
    lane: int | None = None
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "lane": self.lane, "at": self.at, "data": self.data}


class ScanResult(enum.Enum):
    """What a card or voucher scanned at a scanner came to (``tillplug.daemon.scans.verdict``: good or bad)."""

    MEMBER_FOUND = "member_found"  # no sale open on the lane: looked up (its balance slip queued)
    MEMBER_ATTACHED = "member_attached"  # to the lane's open sale (offline too, while the engine is away)
    MEMBER_NOT_FOUND = "member_not_found"
    VOUCHER_CHECKED = "voucher_checked"  # no sale open: usable now, only checked, never burned
    VOUCHER_ACCEPTED = "voucher_accepted"  # on the lane's sale: burned, or checked for check_then_burn
    VOUCHER_PENDING = "voucher_pending"  # the burn's outcome is being looked up (voucher_settled tells)
    VOUCHER_REFUSED = "voucher_refused"  # used, expired, another member's...: a voucher_result says which
    FAILED = "failed"  # the engine could not answer, or the sale could not take it: an error event says why


@dataclass(frozen=True)
class ScanOutcome:
    """What came of a member card or voucher scanned at one of tillplug's scanners."""

    result: ScanResult
    error: str | None = None  # the code the till was told for a refusal or failure (member_not_found, ...)
    slip_failed: bool = False  # a slip was due and could not be queued (the till got an error saying why)


class EventBus:
    def __init__(self, history: int = 200) -> None:
        self._ids = itertools.count(1)
        # Each listener's queue, with the event types it takes (None: every event).
        self._subscribers: dict[asyncio.Queue[TillEvent | None], frozenset[str] | None] = {}
        self.history: list[TillEvent] = []
        self._history_size = history
        self.dropped = 0

    def publish(self, type_: str, data: dict[str, Any] | None = None, *, lane: int | None = None) -> TillEvent:
        event = TillEvent(next(self._ids), type_, data or {}, lane)
        self.history.append(event)
        del self.history[: -self._history_size]
        for queue, types in self._subscribers.items():
            if types is not None and type_ not in types:
                continue
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)
        return event

    def subscribe(self, types: Iterable[str] | None = None) -> asyncio.Queue[TillEvent | None]:
        """A queue of the events published from now on; with ``types``, only those (a listener that
        follows a few kinds is not woken for every scan and print job), and the end mark (None)."""
        queue: asyncio.Queue[TillEvent | None] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers[queue] = None if types is None else frozenset(types)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[TillEvent | None]) -> None:
        self._subscribers.pop(queue, None)

    def close(self) -> None:
        """End every stream (None is the end mark), so a shutdown does not wait on listeners."""
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    def since(self, last_id: int) -> list[TillEvent]:
        """Events after ``last_id`` still in history: lets a reconnecting listener catch up."""
        return [e for e in self.history if e.id > last_id]
