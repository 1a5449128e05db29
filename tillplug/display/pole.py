"""One pole display, kept showing its lane's screen: the only code that writes to that display.

It shows the lane's screen when it opens, then each new one; a display that is unplugged or
switched off is reopened every ``RETRY_EVERY`` seconds and shown the current screen at once.
Writes run in a worker thread; only the newest screen is written after a wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from tillplug.devices.base import DisplayDriver
from tillplug.devices.supervisor import DeviceHealth, DeviceState, should_log
from tillplug.display.hub import DisplayHub
from tillplug.display.screen import Screen
from tillplug.errors import DeviceError, DriverError

log = logging.getLogger(__name__)
RETRY_EVERY = 2.0

Lines = Callable[[Screen], tuple[str, str]]


class PoleDisplayLink:
    def __init__(
        self,
        driver: DisplayDriver,
        hub: DisplayHub,
        lines: Lines,
        *,
        on_state: Callable[[DeviceHealth], None] = lambda h: None,
    ) -> None:
        self.driver = driver
        self.hub = hub
        self.lines = lines
        self.on_state = on_state
        self.lane: int = driver.config.lane
        self.health = DeviceHealth(driver.config.name, "display")
        self.shown: tuple[str, str] | None = None  # the lines last written
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await asyncio.to_thread(self.driver.close)

    async def _run(self) -> None:
        queue = self.hub.watch(self.lane)
        try:
            while True:
                if not await self._write(self.hub.current(self.lane)):
                    await asyncio.sleep(RETRY_EVERY)
                    continue
                if await queue.get() is None:
                    return
                while not queue.empty():  # only the newest screen matters
                    if queue.get_nowait() is None:
                        return
        finally:
            self.hub.unwatch(self.lane, queue)

    async def _write(self, screen: Screen) -> bool:
        """Show the screen, opening the display first if needed; False when the display is away."""
        lines = self.lines(screen)
        try:
            if self.health.state is not DeviceState.READY:
                await asyncio.to_thread(self.driver.open)
            await asyncio.to_thread(self.driver.show, lines)
        except (DeviceError, DriverError) as exc:
            await asyncio.to_thread(self.driver.close)
            self.health.failures += 1
            if should_log(self.health.failures):
                log.warning("display %s: %s", self.health.name, exc.message)
            self._set(DeviceState.STALE, exc.message)
            return False
        self.shown = lines
        if self.health.failures:
            self.health.reconnects += 1
            self.health.failures = 0
        self._set(DeviceState.READY, "")
        return True

    def _set(self, state: DeviceState, reason: str) -> None:
        self.health.move(state, reason, self.on_state)
