"""Health from state: what ``/v1/health`` and ``tillplug status`` say, in milliseconds.

The answer is built from facts the daemon already holds — the last engine outcomes, a snapshot of
the outbox and the disk refreshed in the background, the devices' last known states — and never
waits on the engine, a printer or the database.  A slow engine once made health take 10 s, so
``tillplug status`` declared a running daemon dead; and health said "ok" while the engine refused
the credentials on every call, or the disk was full.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tillplug import __version__
from tillplug.config.model import Config
from tillplug.errors import TillplugError
from tillplug.outbox.store import OutboxStore, Stats

log = logging.getLogger(__name__)
REFRESH_EVERY = 1.0  # seconds between outbox and disk snapshots
PING_EVERY = 10.0  # with no engine traffic for this long, the background probe asks the engine
STALE_AFTER = 15.0  # a snapshot this old means the database is not answering
STUCK_AFTER = 300.0  # a row in 'sending' this long is stuck (a delivery takes seconds)
MIN_FREE_BYTES = 16 * 1024 * 1024  # below this the outbox may fail to write a sale


class EngineWatch:
    """Engine reachability from real traffic: the last success and the last failure, by endpoint.

    ``__call__`` hears every HTTP exchange (``error`` is a transport failure or None);
    ``failed`` hears every answer that was a failure (429, 5xx, 401/403, other 4xx).
    """

    def __init__(self) -> None:
        self.last_ok = 0.0
        self.last_error: tuple[float, str, str] | None = None
        self.latency: dict[str, float] = {}
        self.auth_refused: tuple[float, str] | None = None  # (when, endpoint) of the last refusal
        self.trouble = EngineTroubleLog()
        self._ok_mono = 0.0
        self._auth_mono = 0.0

    def __call__(self, endpoint: str, seconds: float, error: str | None) -> None:
        if error is None:
            self.last_ok = time.time()
            self._ok_mono = time.monotonic()
            self.latency[endpoint] = seconds
        else:
            self.last_error = (time.time(), endpoint, error)
            self.trouble.note(endpoint, error)

    def failed(self, endpoint: str, kind: str) -> None:
        """An answer that was a failure; ``kind`` as in ``tillplug.daemon.metrics.failure_kind``.

        A refusal of one request (a 4xx other than 401/403/429) proves the engine is there: it is
        counted and logged, but does not make the engine "unreachable".
        """
        self.trouble.note(endpoint, kind)
        if kind == "rejected":
            return
        self.last_error = (time.time(), endpoint, kind)
        if kind == "auth":
            self.auth_refused = (time.time(), endpoint)
            self._auth_mono = time.monotonic()

    @property
    def credentials_refused(self) -> bool:
        """The engine's last word on our credentials was no (a later success clears it)."""
        return self.auth_refused is not None and self._auth_mono >= self._ok_mono

    def view(self) -> dict[str, Any]:
        reachable = self.last_ok > (self.last_error[0] if self.last_error else 0)
        return {
            "reachable": reachable,
            "credentialsRefused": self.credentials_refused,
            "lastOk": self.last_ok or None,
            "lastError": {"at": self.last_error[0], "endpoint": self.last_error[1], "error": self.last_error[2]}
            if self.last_error
            else None,
            "latencyMs": {k: round(v * 1000, 1) for k, v in self.latency.items()},
        }


KIND_WORDS = {
    "rate_limited": "rate limited (HTTP 429)",
    "server_error": "server errors (HTTP 5xx)",
    "auth": "credentials refused (HTTP 401/403)",
    "rejected": "requests refused (HTTP 4xx)",
    "timeout": "timeouts",
    "unreachable": "connection failures",
    "transport": "connections cut (reset, half an answer)",
    "protocol": "answers that could not be decoded (e.g. a proxy's broken gzip)",
}


class EngineTroubleLog:
    """One log line per kind of engine failure per interval, with counts: never silent, never a flood.

    The first failure of a kind is told at once; the rest of the interval is counted and told when
    the interval ends (``flush``) — even if the failures have stopped by then.
    """

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._window: dict[str, tuple[float, dict[str, int]]] = {}  # kind → (window start, endpoint → count)

    def note(self, endpoint: str, kind: str) -> None:
        now = self.clock()
        if kind not in self._window:
            self._window[kind] = (now, {})
            log.warning("engine: %s on %s", KIND_WORDS.get(kind, kind), endpoint)
            return
        counts = self._window[kind][1]
        counts[endpoint] = counts.get(endpoint, 0) + 1
        self.flush()

    def flush(self) -> None:
        """Tell the counts of every interval that has ended."""
        now = self.clock()
        for kind, (start, counts) in list(self._window.items()):
            if now - start < self.every:
                continue
            if counts:
                where = ", ".join(f"{e} {n}" for e, n in sorted(counts.items()))
                log.warning(
                    "engine: %d more %s in the last %g s (%s)",
                    sum(counts.values()),
                    KIND_WORDS.get(kind, kind),
                    self.every,
                    where,
                )
                self._window[kind] = (now, {})  # still failing: the next interval is counted too
            else:
                del self._window[kind]  # a quiet interval: the next failure is told at once


@dataclass
class Snapshot:
    """What the background refresh last found (read by health without waiting)."""

    at: float = 0.0  # monotonic
    stats: Stats | None = None
    stuck: int = 0
    outcomes_pending: int = 0  # spends and voucher burns whose outcome is still being looked up
    free_bytes: int | None = None
    write_error: str | None = None  # why a test write in the state folder failed, if it did
    read_error: str | None = None  # why the outbox could not be read, if it could not
    problems: list[dict[str, str]] = field(default_factory=list)


def _probe_write(folder: Path) -> str | None:
    """Write, sync and remove a small file in ``folder``: None if that works, else why not."""
    probe = folder / ".health-probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink(missing_ok=True)
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
        return "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else f"not writable ({exc.strerror})"
    return None


def _problem(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


class HealthMonitor:
    def __init__(
        self,
        config: Config,
        store: OutboxStore,
        engine: EngineWatch,
        devices: Callable[[], list[dict[str, Any]]],
        *,
        ping: Callable[[], Any] | None = None,
        money: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.config = config
        self.money = money  # problems the points flows found (code -> message): reactors, rates, overdraws
        self.store = store
        self.engine = engine
        self.devices = devices
        self.ping = ping
        self.snapshot = Snapshot()
        self._refreshing = asyncio.Lock()

    # -- background ---------------------------------------------------------------

    def _take(self) -> Snapshot:
        """One snapshot (runs in a worker thread)."""
        snap = Snapshot(at=time.monotonic())
        try:
            snap.stats = self.store.stats()
            stuck = self.store.query(
                # The store's clock (steady in the daemon): a clock step makes no row look stuck.
                "SELECT COUNT(*) FROM outbox WHERE state='sending' AND updated < ?",
                (self.store.clock() - STUCK_AFTER,),
            )
            snap.stuck = int(stuck[0][0])
        except Exception as exc:  # sqlite3 errors of every kind: reported, never raised
            snap.read_error = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(sqlite3.OperationalError):  # no flows tables yet: nothing is pending
            pending = self.store.query(
                "SELECT (SELECT COUNT(*) FROM deductions WHERE state='unknown')"
                " + (SELECT COUNT(*) FROM burns WHERE state IN ('unknown', 'unverifiable'))"
            )
            snap.outcomes_pending = int(pending[0][0])
        folder = self.config.state_dir
        try:
            snap.free_bytes = shutil.disk_usage(folder).free
        except OSError:
            snap.free_bytes = None
        snap.write_error = _probe_write(folder)
        return snap

    async def refresh(self) -> None:
        async with self._refreshing:  # one probe at a time (the alarm refreshes too)
            self.snapshot = await asyncio.to_thread(self._take)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception:  # never let the watcher die: health would freeze on an old snapshot
                log.exception("health refresh failed")
            self.engine.trouble.flush()
            if self.ping is not None and time.time() - max(self.engine.last_ok, self._last_ping) > PING_EVERY:
                self._last_ping = time.time()
                self._spawn_ping()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REFRESH_EVERY)
        if self._ping_task is not None:  # stopping: a probe still waiting on the engine is not needed
            self._ping_task.cancel()

    _last_ping = 0.0
    _ping_task: asyncio.Task[Any] | None = None

    def _spawn_ping(self) -> None:
        """Ask the engine in the background; a black-holed engine holds only this task."""
        if self._ping_task is not None and not self._ping_task.done():
            return
        assert self.ping is not None

        async def ping() -> None:
            with contextlib.suppress(TillplugError):
                await self.ping()  # type: ignore[misc]

        self._ping_task = asyncio.ensure_future(ping())

    # -- the answer ---------------------------------------------------------------------

    def problems(self, devices: list[dict[str, Any]], over_limit: bool) -> list[dict[str, str]]:
        found = [*self._engine_problems(), *self._storage_problems(over_limit)]
        if self.money is not None:
            found += [_problem(code, message) for code, message in self.money().items()]
        for d in devices:
            if d["state"] != "ready":
                found.append(_problem("device_not_ready", f"{d['kind']} {d['name']} is {d['state']}: {d['reason']}"))
            paper = d.get("paper")
            if paper and paper.get("state") == "error":
                found.append(_problem("printer_fault", f"printer {d['name']}: {paper.get('reason') or 'fault'}"))
            queue = d.get("queue")
            if queue and queue.get("full"):
                found.append(
                    _problem(
                        "print_queue_full",
                        f"printer {d['name']}: {queue['refused']} print job(s) refused, its queue or the print "
                        f"database is at its bound ({queue['waiting']} waiting); check the printer.",
                    )
                )
        return found

    def _engine_problems(self) -> list[dict[str, str]]:
        if self.engine.credentials_refused:
            return [_problem("engine_credentials_refused", "The loyalty service refuses this till's credentials.")]
        if not self.engine.view()["reachable"] and self.engine.last_error is not None:
            return [_problem("engine_unreachable", "The loyalty service cannot be reached; sales queue their points.")]
        return []

    def _storage_problems(self, over_limit: bool) -> list[dict[str, str]]:
        snap, found = self.snapshot, []
        if snap.read_error:
            found.append(_problem("outbox_unreadable", f"The outbox cannot be read ({snap.read_error[:120]})."))
        low = snap.free_bytes is not None and snap.free_bytes < MIN_FREE_BYTES
        if snap.write_error == "disk_full" or low:
            where = self.config.state_dir
            found.append(_problem("disk_full", f"The disk holding {where} is full; sales cannot be queued."))
        elif snap.write_error:
            found.append(_problem("outbox_unwritable", f"{self.config.state_dir} is {snap.write_error}."))
        if (age := time.monotonic() - snap.at) > STALE_AFTER:
            found.append(_problem("health_stale", f"The outbox has not answered for {age:.0f} s."))
        if over_limit:
            found.append(_problem("outbox_over_limit", "Loyalty points wait to be sent beyond the configured limits."))
        if snap.stats is not None and snap.stats.dead:
            n = snap.stats.dead
            found.append(
                _problem("outbox_dead_rows", f"{n} write(s) the engine refused for good; see `tillplug outbox`.")
            )
        if snap.stats is not None and snap.stats.unverifiable:
            n = snap.stats.unverifiable
            found.append(
                _problem(
                    "outbox_unverifiable",
                    f"{n} write(s) whose arrival the engine cannot confirm are held, neither resent nor dropped; "
                    "run `tillplug engine-check`.",
                )
            )
        if snap.outcomes_pending:
            found.append(
                _problem(
                    "outcomes_pending",
                    f"{snap.outcomes_pending} points spend(s) or voucher burn(s) whose outcome the engine's answer "
                    "did not tell are being looked up; if this lasts, run `tillplug engine-check`.",
                )
            )
        if snap.stuck:
            minutes = STUCK_AFTER / 60
            found.append(_problem("outbox_row_stuck", f"{snap.stuck} write(s) sending for over {minutes:.0f} minutes."))
        return found

    def view(self) -> dict[str, Any]:
        snap = self.snapshot
        stats = snap.stats or Stats(0, 0, 0, 0, 0, 0.0)
        limits = self.config.outbox
        over = limits.exceeded(stats.depth, stats.oldest_pending_age)
        devices = self.devices()
        problems = self.problems(devices, over)
        return {
            "status": "degraded" if problems else "ok",
            "version": __version__,
            "tillId": self.config.till_id,
            "branchId": self.config.branch_id,
            "problems": problems,
            "devices": devices,
            "engine": self.engine.view(),
            "outbox": {
                **stats.to_dict(),
                "overLimit": over,
                "maxRows": limits.max_rows,
                "maxAgeHours": limits.max_age_hours,
                "stuck": snap.stuck,
                "freeBytes": snap.free_bytes,
                "snapshotAgeMs": round((time.monotonic() - snap.at) * 1000, 1),
            },
        }
