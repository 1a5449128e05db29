"""One lane's screen, to whoever shows it: pole displays and the web page's event streams.

The hub follows the event bus, keeps each lane's ``Screen`` (``tillplug.display.screen``) and tells
each lane's watchers the new screen, never a raw event: a display stream cannot carry a product
scan, another lane's news or anything the screen does not show.  A watcher that falls behind loses
the older screens, never the latest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tillplug.display.screen import SALE_EVENTS, Screen, ScreenBook
from tillplug.flows.events import EventBus

log = logging.getLogger(__name__)
TICK = 1.0  # how often idle timeouts are looked at
WATCHER_QUEUE = 8


class DisplayHub:
    def __init__(self, events: EventBus, book: ScreenBook) -> None:
        self.events = events
        self.book = book
        self._watchers: dict[int, set[asyncio.Queue[Screen | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def end_watchers(self) -> None:
        """Every watcher is told the end (None): display streams end when the daemon stops."""
        for queues in self._watchers.values():
            for queue in queues:
                _put_latest(queue, None)

    async def close(self) -> None:
        self.end_watchers()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def current(self, lane: int) -> Screen:
        return self.book.screen(lane)

    def watch(self, lane: int) -> asyncio.Queue[Screen | None]:
        queue: asyncio.Queue[Screen | None] = asyncio.Queue(WATCHER_QUEUE)
        self._watchers.setdefault(lane, set()).add(queue)
        return queue

    def unwatch(self, lane: int, queue: asyncio.Queue[Screen | None]) -> None:
        self._watchers.get(lane, set()).discard(queue)

    def tell(self, screen: Screen) -> None:
        for queue in self._watchers.get(screen.lane, ()):
            _put_latest(queue, screen)

    async def _run(self) -> None:
        queue = self.events.subscribe(SALE_EVENTS)  # the only events that move a screen
        try:
            while True:
                try:
                    async with asyncio.timeout(TICK):  # no task a wait (wait_for's): this runs for every event
                        event = await queue.get()
                except TimeoutError:
                    event = None
                else:
                    if event is None:  # the bus is closing: so are the display streams
                        self.end_watchers()
                        return
                if event is not None:
                    try:
                        screen = await self.book.see(event.type, event.data, event.lane)
                    except Exception:  # a display must never stop for one odd event
                        log.exception("customer display: the %s event could not be shown", event.type)
                        screen = None
                    if screen is not None:
                        self.tell(screen)
                for screen in self.book.expire():
                    self.tell(screen)
        finally:
            self.events.unsubscribe(queue)


def _put_latest(queue: asyncio.Queue[Screen | None], item: Screen | None) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)
