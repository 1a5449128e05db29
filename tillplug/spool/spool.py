"""A spool per printer, owned by one task: the only code that talks to that printer.

Print calls add a job and return at once; the task prints jobs in order, one whole job at a time
(so the till's own receipts and tillplug's slips never mix inside a job).  While the printer cannot
print (paper out, cover open, away), the breaker is open: new jobs are held at once instead of each
waiting on the printer, and the task probes every ``PROBE_EVERY`` seconds; when the printer is back,
held jobs that have not expired print in order.  Health reads what the task last saw, never the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from tillplug.devices.base import PrinterDriver, PrinterState, PrinterStatus
from tillplug.devices.supervisor import DeviceHealth, DeviceState, should_log
from tillplug.receipts.layout import Block, Receipt
from tillplug.spool.jobs import JobState, JobStore, PrintJob
from tillplug.spool.link import Outcome, PrinterLink
from tillplug.spool.sales import has_cut, insert_before_cut
from tillplug.spool.share import SharePort

log = logging.getLogger(__name__)
PROBE_EVERY = 0.5  # while the printer cannot print: a return is noticed within this plus the connect timeout
IDLE_CHECK_EVERY = 5.0  # with nothing to print: ask the printer now and then, so health stays true

Publish = Callable[[str, dict[str, Any], int | None], object]


class PrintSpool:
    def __init__(
        self,
        config: Any,
        driver: PrinterDriver,
        store: JobStore,
        *,
        publish: Publish = lambda type_, data, lane: None,
        on_state: Callable[[DeviceHealth], None] = lambda h: None,
        hold_seconds: float = 120.0,
        till_block: Callable[[int], list[Block] | None] | None = None,
    ) -> None:
        self.config = config
        self.driver = driver
        self.store = store
        self.publish = publish
        self.on_state = on_state
        self.hold_seconds = hold_seconds
        self.till_block = till_block  # the loyalty block for the till's own receipt on this lane, if any
        self.link = PrinterLink(driver)
        self.health = DeviceHealth(config.name, "printer")
        self.last_status = PrinterStatus(PrinterState.UNKNOWN, "not asked yet")
        self.fault: str | None = None  # the breaker: open while set
        # Set by the share port while a till receipt too long for one job arrives in parts, and then
        # ``till_first`` until its last part has left the queue: only the till's jobs print meanwhile,
        # so none of tillplug's slips lands inside that receipt.
        self.till_floor = False
        self.till_first = False
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        port, path = getattr(config, "share_port", None), getattr(config, "share_socket", None)
        self.share = SharePort(self, port, socket_path=path) if port or path else None

    @property
    def name(self) -> str:
        return str(self.config.name)

    # -- the till's side -------------------------------------------------------------

    async def submit(
        self, data: bytes, kind: str, *, source: str = "tillplug", hold_seconds: float | None = None
    ) -> PrintJob:
        """Queue bytes for this printer; returns the queued job at once."""
        hold = self.hold_seconds if hold_seconds is None else hold_seconds
        if (
            source == "till"
            and kind == "raw"
            and self.till_block is not None
            and await asyncio.to_thread(has_cut, data)
        ):
            blocks = self.till_block(self.config.lane)  # the block goes before a real cut only
            if blocks:
                rendered = await asyncio.to_thread(self.driver.render, Receipt("loyalty", blocks))
                data = insert_before_cut(data, rendered.removeprefix(b"\x1b@")) or data  # no reset inside
        job = await asyncio.to_thread(
            self.store.add, self.name, self.config.lane, kind, source, data, hold_seconds=hold
        )
        self._changed(job)
        self._wake.set()
        return job

    async def status(self) -> PrinterStatus:
        """What the printer said last (health never waits on the wire)."""
        return self.last_status

    # -- the task ------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self.share is not None:
            await self.share.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 15)
        await asyncio.to_thread(self.link.close)

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        if self.share is not None:
            await self.share.start()
        await self._probe()
        while not self._stopping:
            try:
                await self._step()
            except Exception:  # a bug must not stop printing for good
                log.exception("printer %s: spool step failed", self.name)
                await self._sleep(PROBE_EVERY)

    async def _step(self) -> None:
        for job in await asyncio.to_thread(self.store.expire, self.name):
            self._changed(job)
        if self.fault is not None:
            for job in await asyncio.to_thread(self.store.hold_queued, self.name, self.fault):
                self._changed(job)  # fail fast while the printer cannot print
            if not await self._probe():
                await self._sleep(PROBE_EVERY)
                return
        only_till = self.till_floor or self.till_first
        claimed = await asyncio.to_thread(self.store.claim, self.name, source="till" if only_till else None)
        if claimed is None and self.till_first and not self.till_floor:
            self.till_first = False  # the long receipt is out: back to first come, first served
            claimed = await asyncio.to_thread(self.store.claim, self.name)
        if claimed is None:
            if await self._sleep(IDLE_CHECK_EVERY) is False:
                await self._probe()
            return
        job, data = claimed
        self._changed(job)
        try:
            status, outcome = await asyncio.to_thread(self.link.print_job, data)
        except Exception as exc:  # a driver bug: the job must not stay "printing"
            log.exception("printer %s: job %d failed in the driver", self.name, job.id)
            await asyncio.to_thread(self.link.close)
            status, outcome = self.last_status, Outcome(JobState.FAILED, f"driver error: {type(exc).__name__}")
        moved = await asyncio.to_thread(self.store.move, job.id, outcome.state, outcome.reason)
        if moved is not None:
            self._changed(moved)
        self._saw(status, outcome if outcome.fault else None)

    async def _probe(self) -> bool:
        """Ask the printer; True when it can print."""
        status, fault = await asyncio.to_thread(self.link.check)
        self._saw(status, fault)
        return fault is None

    async def _sleep(self, seconds: float) -> bool:
        """Until woken (True) or the time is up (False)."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
            woken = True
        except TimeoutError:
            woken = False
        self._wake.clear()
        return woken

    # -- telling the till ------------------------------------------------------------

    def _changed(self, job: PrintJob) -> None:
        self.publish("print_job", job.to_dict(), job.lane)
        if job.state in (JobState.FAILED, JobState.HELD):
            # The job's reason is the technician's detail; the cashier gets a sentence.
            sentence = cashier_sentence(self.name, job.state, job.reason)
            self.publish("error", {"code": "printer_not_ready", "message": sentence, "job": job.id}, job.lane)

    def _saw(self, status: PrinterStatus, fault: Outcome | None) -> None:
        self.last_status = status
        h = self.health
        if fault is None:
            if self.fault is not None or h.state is not DeviceState.READY:
                if h.failures:
                    h.reconnects += 1
                    log.info("printer %s can print again after %d failed check(s)", self.name, h.failures)
                h.failures = 0
                self.fault = None
                self._set(DeviceState.READY, status.reason if status.state is PrinterState.WARNING else "")
                self._wake.set()
            return
        h.failures += 1
        if should_log(h.failures):
            log.warning("printer %s cannot print: %s", self.name, fault.fault)
        self.fault = fault.fault
        self._set(DeviceState.STALE if fault.away else DeviceState.ERROR, fault.fault or "")

    def _set(self, state: DeviceState, reason: str) -> None:
        h = self.health
        if h.state is not state or h.reason != reason:
            h.state, h.reason, h.since = state, reason, time.time()
            self.on_state(h)


# What the cashier is told, by what the printer or the wire said (the reason names the cause).
_TROUBLE = (
    ("paper", "is out of paper"),
    ("cover", "has its cover open"),
    ("cutter", "has a cutter fault"),
)


def cashier_sentence(printer: str, state: JobState, reason: str) -> str:
    """A sentence for the cashier about a slip that did not print, never ``[Errno 5] Input/output error``."""
    trouble = next(
        (words for key, words in _TROUBLE if key in reason.lower()),
        "is not answering; check it is switched on and connected",
    )
    then = (
        "The slip prints when that is fixed, or can be reprinted."
        if state is JobState.HELD
        else "The slip was not printed; it can be reprinted."
    )
    return f"The receipt printer {printer} {trouble}. {then} The sale is not affected."
