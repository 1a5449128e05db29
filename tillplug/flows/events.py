"""The event stream the till software listens to (served as server-sent events).

Events carry no personal data: members appear only as masked ids.  A slow
listener loses its oldest events (counted in ``EventBus.dropped``) rather than
slowing the till down or growing memory; it catches up from the history by
reconnecting with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
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


class EventBus:
    def __init__(self, history: int = 200) -> None:
        self._ids = itertools.count(1)
        self._subscribers: set[asyncio.Queue[TillEvent | None]] = set()
        self.history: list[TillEvent] = []
        self._history_size = history
        self.dropped = 0

    def publish(self, type_: str, data: dict[str, Any] | None = None, *, lane: int | None = None) -> TillEvent:
        event = TillEvent(next(self._ids), type_, data or {}, lane)
        self.history.append(event)
        del self.history[: -self._history_size]
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)
        return event

    def subscribe(self) -> asyncio.Queue[TillEvent | None]:
        queue: asyncio.Queue[TillEvent | None] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[TillEvent | None]) -> None:
        self._subscribers.discard(queue)

    def close(self) -> None:
        """End every stream (None is the end mark), so a shutdown does not wait on listeners."""
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    def since(self, last_id: int) -> list[TillEvent]:
        """Events after ``last_id`` still in history: lets a reconnecting listener catch up."""
        return [e for e in self.history if e.id > last_id]
