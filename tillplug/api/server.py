"""The API's HTTP server: uvicorn with bounds a hostile local client cannot get round.

uvicorn bounds idle keep-alive connections, but not a connection that opens and sends nothing, or
a request head sent a byte at a time: 1,100 of those once used up the daemon's open files and
stopped the API.  Here every connection has ``head_timeout`` seconds to send a whole request head,
and at most ``max_connections`` are open.  A new connection beyond that closes the connection that
has been idle longest (no request in progress) instead of being refused, so idle sockets can never
lock the till out: 200 of them once kept ``/v1/health`` from answering for 10 s.  Only when every
connection is busy is a new one let in beyond the cap, up to ``HEALTH_RESERVE`` more, and there it
may only ask ``GET /v1/health`` (anything else is 503 ``server_busy``): health always answers.  Event
streams, which stay busy, have their own smaller cap in the app (``stream_limit``), so short requests
keep the rest.  At shutdown a
stream still open is cut (a listener that stopped reading once held a stop for 10 s and a
traceback); other requests in flight finish.  What is refused is logged once a minute with a
count instead of once per connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from tillplug.api.guard import RESERVED
from tillplug.api.routes import OPERATIONS, Operation
from tillplug.config.model import ApiConfig

if TYPE_CHECKING:
    from starlette.types import ASGIApp

log = logging.getLogger(__name__)
HEAD_TIMEOUT = 10.0  # seconds to send a request line and headers (api.request_timeout)
KEEP_ALIVE = 5.0  # seconds an idle connection stays open between requests
MAX_HEAD_BYTES = 16 * 1024
HEALTH_RESERVE = 4  # connections beyond the cap, for /v1/health only, when every other one is busy


def stream_limit(max_connections: int) -> int:
    """Event streams (and every other streaming answer) at once: a quarter of the connections (64 → 16),
    so three quarters always stay for short requests such as /v1/health."""
    return max(1, max_connections // 4)


class RefusalCounter:
    """Counts refused connections and says so at most once per ``every`` seconds (flood logs stay small)."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self.counts: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self._last_said = -every

    def add(self, why: str) -> None:
        self.counts[why] = self.counts.get(why, 0) + 1
        self.total[why] = self.total.get(why, 0) + 1
        now = time.monotonic()
        if now - self._last_said >= self.every:
            self._last_said = now
            said = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
            log.warning("API connections refused in the last %g s: %s", self.every, said)
            self.counts.clear()


class RepeatFilter(logging.Filter):
    """One line per kind of message per ``every`` seconds; the next one says how many were held back."""

    def __init__(self, every: float = 60.0) -> None:
        super().__init__()
        self.every = every
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        last, held = self._seen.get(key, (-self.every, 0))
        if now - last < self.every:
            self._seen[key] = (last, held + 1)
            return False
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.every:.0f} s)"
        self._seen[key] = (now, 0)
        if len(self._seen) > 1000:  # bounded, whatever the messages
            self._seen.clear()
        return True


def quiet_floods(every: float = 60.0) -> None:
    """uvicorn logs each bad request and asyncio each failed accept: a flood of either is one line a minute."""
    for name in ("uvicorn.error", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter(every))


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head and a cap on connections."""

    head_timeout = HEAD_TIMEOUT
    max_connections = 64
    refused = RefusalCounter()  # server_config gives each server its own
    streams: tuple[Operation, ...] = tuple(op for op in OPERATIONS if op.stream)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._reserved = False  # let in beyond the cap: /v1/health only

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_since = self.loop.time()
        if len(self.connections) > self.max_connections:
            idle = self._longest_idle()
            if idle is not None:
                self.refused.add("idle, closed to make room")
                idle.transport.abort()
            elif len(self.connections) <= self.max_connections + HEALTH_RESERVE:
                self._reserved = True
            else:
                self.refused.add("over the connection limit")
                self.transport.abort()
                return
        self._arm()

    def _longest_idle(self) -> BoundedH11Protocol | None:
        idle = [
            c
            for c in self.connections
            if c is not self
            and isinstance(c, BoundedH11Protocol)
            and not c._in_request()
            and not c.transport.is_closing()
        ]
        return min(idle, key=lambda c: c._idle_since, default=None)

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        super().on_response_complete()

    def shutdown(self) -> None:
        """A stream still open at shutdown is cut: it never ends by itself, and a listener that stopped
        reading would hold the stop until uvicorn's graceful timeout, then a traceback."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and self._is_stream(cycle.scope):
            self.transport.abort()
            return
        super().shutdown()

    def _is_stream(self, scope: Any) -> bool:
        return any(op.matches(scope.get("method", ""), scope.get("path", "")) for op in self.streams)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and not self._in_request():
            self._arm()  # a new request head begins on a kept-alive connection
        super().data_received(data)
        if self._in_request():
            self._disarm()
            if self._reserved and self.cycle is not None:  # the app has not run yet: it reads this first
                self.cycle.scope[RESERVED] = True  # type: ignore[literal-required]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self._in_request() and not self.transport.is_closing():
            self.refused.add("too slow to send a request")
            self.transport.abort()


def server_config(app: ASGIApp, api: ApiConfig) -> uvicorn.Config:
    quiet_floods()
    protocol = type(
        "TillApiProtocol",
        (BoundedH11Protocol,),
        {"max_connections": api.max_connections, "head_timeout": api.request_timeout, "refused": RefusalCounter()},
    )
    return uvicorn.Config(
        app,
        http=protocol,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=10,
        # Our own cap makes room or closes extra connections on arrival; uvicorn's (answering 503) is the backstop.
        limit_concurrency=api.max_connections + HEALTH_RESERVE + 1,
        timeout_keep_alive=int(KEEP_ALIVE),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
