"""A spool per printer, owned by one task: the only code that talks to that printer.

Print calls add a job and return at once; the task prints jobs in order, one whole job at a time
(so the till's own receipts and tillplug's slips never mix inside a job).  While the printer cannot
print (paper out, cover open, away), the breaker is open: new jobs are held at once instead of each
waiting on the printer, and the task probes every ``PROBE_EVERY`` seconds; when the printer is back,
held jobs that have not expired print in order.  Health reads what the task last saw, never the wire.

What the spool tells the daemon are typed events (``JobChanged``, ``JobNotPrinted``), each with its
own fields.  Health and the device state are updated before anyone is told, and a listener that
raises is logged, never allowed to stop the task: once a listener's KeyError on an event without a
``printer`` aborted every step, so held jobs went untold and health said ``ok`` for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from tillplug.devices.base import PrinterDriver, PrinterState, PrinterStatus
from tillplug.devices.supervisor import DeviceHealth, DeviceState, should_log
from tillplug.errors import DriverError, PrintQueueFull, TillplugError
from tillplug.receipts.layout import Block, Receipt
from tillplug.spool.drawer import WATCH_EVERY, DrawerChanged, DrawerWatch
from tillplug.spool.jobs import JobState, JobStore, PrintJob, QueueFigures
from tillplug.spool.link import Outcome, PrinterLink
from tillplug.spool.sales import has_cut, insert_before_cut
from tillplug.spool.share import SharePort

if TYPE_CHECKING:
    from tillplug.config.model import PrinterConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
PROBE_EVERY = 0.5  # while the printer cannot print: a return is noticed within this plus the connect timeout
IDLE_CHECK_EVERY = 5.0  # with nothing to print: ask the printer now and then, so health stays true
PRUNE_EVERY = 300.0  # finished jobs past their keep time are dropped this often (and on every add)
# A printer that could confirm slips and has not confirmed this many in a row is "unknown", not "ready":
# its jobs end "sent" (never resent), and health says they may not have printed.  Two can be a slow
# printer's status reply; three in a row is a pattern the technician should see.
UNCONFIRMED_LIMIT = 3
UNCONFIRMED_REASON = f"has not confirmed {UNCONFIRMED_LIMIT} slips in a row: sent, maybe not printed"


@dataclass(frozen=True)
class JobChanged:
    """A job moved to a new state: the till hears ``print_job`` with the job's API view."""

    job: PrintJob
    type: ClassVar[str] = "print_job"

    @property
    def lane(self) -> int:
        return self.job.lane

    def data(self) -> dict[str, Any]:
        return self.job.to_dict()


@dataclass(frozen=True)
class JobNotPrinted:
    """A job was held or failed: the till hears ``error`` with a sentence for the cashier."""

    job: PrintJob
    message: str
    type: ClassVar[str] = "error"
    code: ClassVar[str] = "printer_not_ready"

    @property
    def lane(self) -> int:
        return self.job.lane

    def data(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "job": self.job.id, "printer": self.job.printer}


@dataclass
class _Step:
    """What one step of the spool's task did in its worker thread."""

    claimed: tuple[PrintJob, bytes] | None = None
    status: PrinterStatus | None = None
    outcome: Outcome | None = None
    moved: PrintJob | None = None
    queued: PrintJob | None = None  # a slip stored to wait its turn (printing it at once was not possible)
    expired: list[PrintJob] = field(default_factory=list)
    figures: QueueFigures = field(default_factory=QueueFigures)


SpoolEvent = JobChanged | JobNotPrinted | DrawerChanged
Publish = Callable[[SpoolEvent], object]


class PrintSpool:
    def __init__(
        self,
        config: PrinterConfig,
        driver: PrinterDriver,
        store: JobStore,
        *,
        publish: Publish = lambda event: None,
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
        sensor = getattr(config, "drawer_sensor", False)
        self.drawer = DrawerWatch(
            config.name, config.lane, getattr(config, "drawer_open_level", None) if sensor else None
        )
        self.health = DeviceHealth(config.name, "printer")
        self.last_status = PrinterStatus(PrinterState.UNKNOWN, "not asked yet")
        self.fault: str | None = None  # the breaker: open while set
        self.queue = QueueFigures()  # waiting jobs and bytes, as last counted (health reads this)
        self.refused = 0  # jobs refused past a bound since the queue last had room
        self._pruned_at = time.monotonic()
        # Set by the share port while a till receipt too long for one job arrives in parts, and then
        # ``till_first`` until its last part has left the queue: only the till's jobs print meanwhile,
        # so none of tillplug's slips lands inside that receipt.
        self.till_floor = False
        self.till_first = False
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # Held by whichever worker thread talks to the printer: the task's steps and probes, or a slip
        # printed at once by ``submit_receipt``; one at a time, so their bytes never mix.
        self._wire = threading.Lock()
        self._printing_now: set[asyncio.Future[_Step]] = set()
        port, path = config.share_port, config.share_socket
        self.share = SharePort(self, port, socket_path=path) if port or path else None

    @property
    def name(self) -> str:
        return str(self.config.name)

    # -- the till's side -------------------------------------------------------------

    async def submit(
        self, data: bytes, kind: str, *, source: str = "tillplug", hold_seconds: float | None = None
    ) -> PrintJob:
        """Queue bytes for this printer; returns the queued job at once (``PrintQueueFull`` past a bound)."""
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
        return await self._add(
            lambda told: self.store.add(self.name, self.config.lane, kind, source, data, hold_seconds=hold, added=told)
        )

    async def submit_receipt(self, receipt: Receipt) -> PrintJob:
        """Render one of tillplug's slips and queue it, in one worker-thread hop (``submit`` for bytes).

        On a printer known ready with nothing waiting, that same hop prints it: the slip is recorded
        already ``printing`` (one commit, the durable mark before its bytes go out), the printer is
        asked, the bytes written, and the caller has its job as soon as they are out; how the job
        ended is told as the task would tell it.  Otherwise it is queued for the task."""
        if self.fault is None and self.health.state is DeviceState.READY and not self._stopping:
            return await self._print_at_once(receipt)
        return await self._add(
            lambda told: self.store.add(
                self.name,
                self.config.lane,
                receipt.kind,
                "tillplug",
                self._render(receipt),
                hold_seconds=self.hold_seconds,
                added=told,
            )
        )

    def _render(self, receipt: Receipt) -> bytes:
        try:
            return self.driver.render(receipt)
        except TillplugError:
            raise
        except Exception as exc:  # python-escpos or Pillow: translated at this boundary
            raise DriverError(f"printer {self.name} cannot lay out a {receipt.kind} slip: {exc}") from exc

    async def _print_at_once(self, receipt: Receipt) -> PrintJob:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[PrintJob] = loop.create_future()

        def written(job: PrintJob) -> None:  # on the loop: its bytes are out; the till hears what the task says
            if not answer.done():
                queued = dataclasses.replace(job, state=JobState.QUEUED)  # what this call did, as the API says
                self.tell(JobChanged(queued))
                self.tell(JobChanged(job))
                answer.set_result(queued)

        # Handed to a worker at once (asyncio.to_thread would wait a turn of the loop to start its task).
        work = loop.run_in_executor(
            None,
            functools.partial(
                contextvars.copy_context().run,
                self._print_now,
                receipt,
                self._teller(loop),
                lambda job: loop.call_soon_threadsafe(written, job),
            ),
        )
        self._printing_now.add(work)
        work.add_done_callback(functools.partial(self._printed_now, answer, written))
        return await answer

    def _print_now(
        self, receipt: Receipt, told: Callable[[PrintJob], object], written: Callable[[PrintJob], object]
    ) -> _Step:
        """In a worker thread: render, then (the printer free and nothing waiting) claim, print and record."""
        data = self._render(receipt)
        step = _Step()
        if self.till_floor or self.till_first or not self._wire.acquire(blocking=False):
            step.queued = self._store_slip(receipt.kind, data, claim=False, told=told)  # the task prints it in turn
            return step
        try:
            job = self._store_slip(receipt.kind, data, claim=True, told=told)
            if job.state is not JobState.PRINTING:
                step.queued = job
                return step
            step.claimed = (job, data)
            self._print_claimed(step, job, data, written=lambda: written(job))
        finally:
            self._wire.release()
        step.expired, step.figures = self._expire_and_count()
        return step

    def _store_slip(self, kind: str, data: bytes, *, claim: bool, told: Callable[[PrintJob], object]) -> PrintJob:
        return self.store.add(
            self.name,
            self.config.lane,
            kind,
            "tillplug",
            data,
            hold_seconds=self.hold_seconds,
            claim=claim,
            added=lambda job: job.state is JobState.QUEUED and told(job),  # printing now: ``written`` tells it
        )

    def _teller(self, loop: asyncio.AbstractEventLoop) -> Callable[[PrintJob], object]:
        """For a worker thread: tell the till of a job just stored, on the loop, in the order it happened."""
        return lambda job: loop.call_soon_threadsafe(self._changed, job)

    def _printed_now(
        self, answer: asyncio.Future[PrintJob], written: Callable[[PrintJob], None], work: asyncio.Future[_Step]
    ) -> None:
        """On the loop, once a slip printed at once is done with: the caller answered, the rest told."""
        self._printing_now.discard(work)
        if work.cancelled():
            answer.cancel()
            return
        if (exc := work.exception()) is not None:
            if isinstance(exc, PrintQueueFull):
                self._refused()
            if not answer.done():
                answer.set_exception(exc)
            else:  # after its bytes went out (recording how it ended failed): said, as the task's step would
                log.error("printer %s: a slip printed at once was not recorded: %s", self.name, exc, exc_info=exc)
            return
        step = work.result()
        if step.queued is not None:  # told "queued" as it was stored
            self._wake.set()
            if not answer.done():
                answer.set_result(step.queued)
            return
        if step.claimed is not None:
            written(step.claimed[0])  # held or failed before a byte went out: answered now
        self._finish(step)

    async def _add(self, add: Callable[[Callable[[PrintJob], object]], PrintJob]) -> PrintJob:
        """``add`` stores the job in a worker thread and tells the till "queued" as it does, before the
        task (another worker thread) can claim it and tell "printing"."""
        try:
            job = await asyncio.to_thread(add, self._teller(asyncio.get_running_loop()))
        except PrintQueueFull:
            self._refused()
            raise
        self._wake.set()
        return job

    def _refused(self) -> None:
        self.refused += 1
        if should_log(self.refused):
            log.error("printer %s: print queue full, %d job(s) refused", self.name, self.refused)

    def queue_view(self) -> dict[str, Any]:
        """The queue's figures for health: ``full`` once a job was refused, until a job leaves the queue."""
        limits = self.store.limits
        return {
            "waiting": self.queue.waiting,
            "waitingBytes": self.queue.waiting_bytes,
            "maxWaitingJobs": limits.max_waiting_jobs,
            "maxWaitingBytes": limits.max_waiting_bytes,
            "refused": self.refused,
            "full": self.refused > 0,
        }

    def tell(self, event: SpoolEvent) -> None:
        """Tell the daemon; whatever its listener raises, the spool goes on (and says so in the log)."""
        try:
            self.publish(event)
        except Exception:
            job = getattr(event, "job", None)
            what = f"the {event.type} event for job {job.id}" if job is not None else f"a {event.type} event"
            log.exception("printer %s: %s could not be told", self.name, what)

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
        if self._printing_now:
            await asyncio.wait(self._printing_now, timeout=15)
        await asyncio.to_thread(self._wired, self.link.close)

    def _wired(self, talk: Callable[[], T]) -> T:
        """In a worker thread: ``talk`` to the printer while no other thread does."""
        with self._wire:
            return talk()

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
        if self.fault is not None:
            self._housekeep(*await asyncio.to_thread(self._expire_and_count))
            for job in await asyncio.to_thread(self.store.hold_queued, self.name, self.fault):
                self._changed(job)  # fail fast while the printer cannot print
            if not await self._probe():
                await self._sleep(PROBE_EVERY)
                return
        loop = asyncio.get_running_loop()
        # One worker-thread hop a job: claim it (the durable mark), print it, record how it ended, then
        # the queue's housekeeping.  A hop each cost more than the printing on a ready printer.
        step = await asyncio.to_thread(self._print_next, lambda job: loop.call_soon_threadsafe(self._changed, job))
        if step.claimed is None:
            self._housekeep(step.expired, step.figures)
            if time.monotonic() - self._pruned_at > PRUNE_EVERY:
                self._pruned_at = time.monotonic()
                await asyncio.to_thread(self.store.prune)
            await self._idle()
            return
        self._finish(step)

    def _finish(self, step: _Step) -> None:
        """A job printed (or not): health first (telling may fail), then the till, then the queue's figures."""
        if step.status is not None and step.outcome is not None:
            self._saw(step.status, step.outcome if step.outcome.fault else None)
        if step.moved is not None:
            self._changed(step.moved)
        self._housekeep(step.expired, step.figures)

    async def _idle(self) -> None:
        """Nothing to print: wait for a job, asking the printer now and then; with a drawer sensor, read it
        often meanwhile (one real-time query), so an opening or a close is told within ``WATCH_EVERY``."""
        if not self.drawer.fitted:
            if await self._sleep(IDLE_CHECK_EVERY) is False:
                await self._probe()
            return
        until = time.monotonic() + IDLE_CHECK_EVERY
        while time.monotonic() < until and not self._stopping:
            if await self._sleep(WATCH_EVERY):
                return
            pin3 = await asyncio.to_thread(self._wired, self.link.drawer_pin3)
            if pin3 is not None:  # no answer: the probe below decides whether the printer is away
                self.last_status = dataclasses.replace(self.last_status, drawer_pin3=pin3)  # the share port's too
                self._drawer_saw(pin3)
        await self._probe()

    def _drawer_saw(self, pin3: bool | None, why_unknown: str = "the printer did not report the sensor") -> None:
        change = self.drawer.saw(pin3, why_unknown)
        if change is not None:
            self.tell(change)

    def _print_next(self, claimed_now: Callable[[PrintJob], object]) -> _Step:
        """In a worker thread: the next job claimed and printed, and the queue's figures after it."""
        step = _Step()
        only_till = self.till_floor or self.till_first
        with self._wire:
            claimed = self.store.claim(self.name, source="till" if only_till else None)
            if claimed is None and self.till_first and not self.till_floor:
                self.till_first = False  # the long receipt is out: back to first come, first served
                claimed = self.store.claim(self.name)
            if claimed is not None:
                job, data = step.claimed = claimed
                claimed_now(job)
                self._print_claimed(step, job, data)
        step.expired, step.figures = self._expire_and_count()
        return step

    def _print_claimed(
        self, step: _Step, job: PrintJob, data: bytes, written: Callable[[], object] = lambda: None
    ) -> None:
        """In a worker thread holding the wire: a claimed job printed and how it ended recorded."""
        try:
            step.status, outcome = self.link.print_job(data, written)
        except Exception as exc:  # a driver bug: the job must not stay "printing"
            log.exception("printer %s: job %d failed in the driver", self.name, job.id)
            self.link.close()
            step.status = self.last_status
            outcome = Outcome(JobState.FAILED, f"driver error: {type(exc).__name__}")
        step.outcome = outcome
        step.moved = self.store.move(job.id, outcome.state, outcome.reason)

    def _expire_and_count(self) -> tuple[list[PrintJob], QueueFigures]:
        return self.store.expire(self.name), self.store.figures(self.name)

    def _housekeep(self, expired: list[PrintJob], figures: QueueFigures) -> None:
        """Expired jobs told; the queue's figures for health (a job that left the queue ends "full")."""
        for job in expired:
            self._changed(job)
        if figures.waiting < self.queue.waiting or figures.waiting_bytes < self.queue.waiting_bytes:
            self.refused = 0
        self.queue = figures

    async def _probe(self) -> bool:
        """Ask the printer; True when it can print."""
        status, fault = await asyncio.to_thread(self._wired, self.link.check)
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
        self.tell(JobChanged(job))
        if job.state in (JobState.FAILED, JobState.HELD):
            # The job's reason is the technician's detail; the cashier gets a sentence.
            self.tell(JobNotPrinted(job, cashier_sentence(self.name, job.state, job.reason)))

    def _saw(self, status: PrinterStatus, fault: Outcome | None) -> None:
        self.last_status = status
        self._drawer_saw(status.drawer_pin3, status.reason or "the printer did not report the sensor")
        h = self.health
        if fault is None:
            if h.failures:
                h.reconnects += 1
                log.info("printer %s can print again after %d failed check(s)", self.name, h.failures)
            h.failures = 0
            cleared, self.fault = self.fault is not None, None
            if self.link.unconfirmed >= UNCONFIRMED_LIMIT:
                if h.state is not DeviceState.UNKNOWN:
                    log.warning("printer %s %s", self.name, UNCONFIRMED_REASON)
                self._set(DeviceState.UNKNOWN, UNCONFIRMED_REASON)
            else:
                self._set(DeviceState.READY, status.reason if status.state is PrinterState.WARNING else "")
            if cleared:
                self._wake.set()
            return
        h.failures += 1
        if should_log(h.failures):
            log.warning("printer %s cannot print: %s", self.name, fault.fault)
        self.fault = fault.fault
        self._set(DeviceState.STALE if fault.away else DeviceState.ERROR, fault.fault or "")

    def _set(self, state: DeviceState, reason: str) -> None:
        self.health.move(state, reason, self.on_state)


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
