"""Every printer's spool, and the calls the flows and the API make on them.

The flows' one call into printing is ``submit(lane, receipt)``: it renders the slip, stores the job
and answers ``{"job": ID, "state": "queued"}`` without touching the printer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tillplug.errors import (
    InvalidRequest,
    PrinterNotReady,
    PrintJobConflict,
    PrintJobNotFound,
)
from tillplug.receipts.layout import Receipt
from tillplug.spool.drawer import NO_SENSOR, DrawerState
from tillplug.spool.jobs import WAITING, JobState, JobStore, PrintJob
from tillplug.spool.spool import JobChanged, PrintSpool

DRAWER_HOLD_SECONDS = 5.0  # a drawer that opens long after the cashier asked is worse than one that does not
KICK_CHECK_EVERY = 0.25  # while a till waits for the close: how often the kick's own job is looked at
NOT_PRINTED = (JobState.FAILED, JobState.EXPIRED, JobState.CANCELLED)


class PrintSpools:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.spools: dict[str, PrintSpool] = {}

    def add(self, spool: PrintSpool) -> None:
        self.spools[spool.name] = spool

    def remove(self, name: str) -> PrintSpool | None:
        return self.spools.pop(name, None)

    def for_lane(self, lane: int) -> PrintSpool:
        spool = next((s for s in self.spools.values() if s.config.lane == lane), None)
        if spool is None:
            raise PrinterNotReady(f"No printer is configured for lane {lane}.")
        return spool

    def named(self, name: str | None) -> PrintSpool:
        spool = self.spools.get(name) if name else next(iter(self.spools.values()), None)
        if spool is None:
            raise InvalidRequest(f"No printer named {name!r}." if name else "No printer is configured.")
        return spool

    def pick(self, printer: str | None, lane: int | None) -> PrintSpool:
        """The printer a till's request names (by name or lane; else the first): a bad name is the till's mistake."""
        if printer is None and lane is not None:
            spool = next((s for s in self.spools.values() if s.config.lane == lane), None)
            if spool is None:
                raise InvalidRequest(f"No printer is configured for lane {lane}.")
            return spool
        return self.named(printer)

    async def submit(self, lane: int, receipt: Receipt) -> dict[str, Any]:
        """Queue a slip for the lane's printer: ``{"job": ID, "state": "queued"}``, never waiting on paper."""
        return (await self.for_lane(lane).submit_receipt(receipt)).summary()

    async def submit_raw(self, data: bytes, *, printer: str | None = None, lane: int | None = None) -> dict[str, Any]:
        """The till's own ESC/POS bytes, printed whole between tillplug's slips."""
        return (await self.pick(printer, lane).submit(data, "raw", source="till")).summary()

    async def open_drawer(
        self, *, printer: str | None = None, lane: int | None = None, pin: int = 2, wait_for_close: float = 0
    ) -> dict[str, Any]:
        """Kick the drawer; with ``wait_for_close`` (seconds, at most 30), answer once it has opened and
        closed again, or when that time is up, with the drawer's state then."""
        spool = self.pick(printer, lane)
        kick = getattr(spool.driver, "drawer_kick", None)
        if kick is None:
            raise InvalidRequest(f"Printer {spool.name} cannot open a cash drawer.")
        if wait_for_close and not spool.drawer.fitted:
            raise InvalidRequest(f"Printer {spool.name} cannot tell when its drawer closes: {NO_SENSOR}.")
        job = await spool.submit(kick(pin), "drawer", source="till", hold_seconds=DRAWER_HOLD_SECONDS)
        if not wait_for_close:
            return job.summary()
        why_not = await self._until_closed(spool, job.id, wait_for_close)
        drawer = spool.drawer.view()
        if why_not is not None:
            drawer["reason"] = why_not
        return {**job.summary(), "drawer": drawer}

    async def _until_closed(self, spool: PrintSpool, job_id: int, timeout: float) -> str | None:
        """None once the drawer has opened and closed again; else why not, as soon as that is known: the
        time is up, or the kick was never printed (held past its 5 s, failed) and the drawer did not open."""
        opened_before = spool.drawer.opened
        waiter = asyncio.ensure_future(spool.drawer.wait_for_close(timeout))
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=KICK_CHECK_EVERY)
                if waiter.done() or spool.drawer.opened > opened_before or spool.drawer.state is DrawerState.OPEN:
                    continue  # open, or opened: the close is what is waited for now
                job = await asyncio.to_thread(self.store.get, job_id)
                if job is not None and job.state in NOT_PRINTED:
                    return f"the drawer did not open: its kick was {job.state.value} ({job.reason})"
            if waiter.result():
                return None
            return "the drawer did not open" if spool.drawer.state is DrawerState.CLOSED else "not closed in time"
        finally:
            waiter.cancel()

    def drawer(self, *, printer: str | None = None, lane: int | None = None) -> dict[str, Any]:
        """What the drawer sensor last said: open, closed, or unknown (with why)."""
        return self.pick(printer, lane).drawer.view()

    async def jobs(self, *, printer: str | None = None, state: str | None = None, limit: int = 100) -> list[PrintJob]:
        if state is not None and state not in {s.value for s in JobState}:
            raise InvalidRequest(f"state must be one of {', '.join(s.value for s in JobState)}.")
        return await asyncio.to_thread(self.store.list_jobs, printer=printer, state=state, limit=limit)

    async def job(self, job_id: int) -> PrintJob:
        job = await asyncio.to_thread(self.store.get, job_id)
        if job is None:
            raise PrintJobNotFound(f"There is no print job {job_id}.")
        return job

    async def reprint(self, job_id: int) -> dict[str, Any]:
        """A new job with the same bytes.  A job still waiting is cancelled, so it cannot print twice."""
        old = await self.job(job_id)
        if old.state is JobState.PRINTING:
            raise PrintJobConflict(f"Print job {job_id} is printing now.")
        spool = self.spools.get(old.printer)
        if spool is None:
            raise PrintJobConflict(f"Printer {old.printer} is no longer configured.")
        if old.state in WAITING:
            cancelled = await asyncio.to_thread(
                self.store.move, job_id, JobState.CANCELLED, "reprinted", only_from=WAITING
            )
            if cancelled is not None:
                spool.tell(JobChanged(cancelled))
        data = await asyncio.to_thread(self.store.data, job_id)
        # A drawer kick keeps its own short hold: a drawer opening minutes after the cashier asked is worse.
        hold = DRAWER_HOLD_SECONDS if old.kind == "drawer" else spool.hold_seconds
        job = await asyncio.to_thread(
            self.store.add, old.printer, old.lane, old.kind, old.source, data, hold_seconds=hold, reprint_of=job_id
        )
        spool.tell(JobChanged(job))
        spool.wake()
        return job.summary()

    async def cancel(self, job_id: int) -> dict[str, Any]:
        old = await self.job(job_id)
        job = await asyncio.to_thread(self.store.move, job_id, JobState.CANCELLED, "cancelled", only_from=WAITING)
        if job is None:
            raise PrintJobConflict(f"Print job {job_id} is already {old.state.value}.")
        spool = self.spools.get(job.printer)
        if spool is not None:
            spool.tell(JobChanged(job))
        return job.to_dict()
