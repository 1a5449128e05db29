"""One job on one printer, told truthfully.  Blocking: the spool runs it in a worker thread.

Before a job: (re)connect if the connection is closed or died (a network printer that restarted),
then ask the printer's status where the connection can answer.  After the cut: ask again.
Only an answer after the cut makes a job ``printed``; a connection that cannot answer makes it
``sent``.  A printer that has answered before and now does not is treated as away before a job
(nothing written, the job is held); after a job's bytes are written nothing makes it held again:
no answer after the cut is ``sent`` ("did not confirm"), so the same bytes never go out twice.
``unconfirmed`` counts the jobs in a row the printer has not confirmed on a wire that could answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tillplug.devices.base import PrinterDriver, PrinterState, PrinterStatus
from tillplug.errors import DeviceError, DriverError
from tillplug.spool.jobs import JobState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    state: JobState
    reason: str = ""
    # Set when the printer cannot print now (the job is held): what the till and health are told.
    fault: str | None = None
    away: bool = False  # no connection at all (as opposed to paper/cover)


class PrinterLink:
    def __init__(self, driver: PrinterDriver) -> None:
        self.driver = driver
        self._open = False
        self.answered = False  # this printer has answered a status query since we started
        # Connected, asked, never answered: a printer without status (or a wire that drops it); not asked
        # again on this connection, so each slip does not wait status_timeout for nothing.
        self.silent = False
        self.unconfirmed = 0  # jobs in a row written to a printer that could confirm them and did not

    def _ensure_open(self) -> None:
        if self._open and self.driver.alive():
            return
        self.close()
        self.driver.open()
        self._open = True
        self.silent = False

    def close(self) -> None:
        self._open = False
        self.driver.close()

    def _status(self) -> PrinterStatus:
        if self.silent:
            return PrinterStatus(PrinterState.UNKNOWN, "the printer does not answer status queries")
        status = self.driver.status()
        if status.state is not PrinterState.UNKNOWN:
            self.answered = True
        elif not self.answered:
            self.silent = True
        return status

    def drawer_pin3(self) -> bool | None:
        """The drawer sensor, between jobs; None when not connected or the printer does not answer."""
        if not self._open or self.silent:
            return None
        try:
            return self.driver.drawer_pin3()
        except (DeviceError, DriverError):
            return None

    def check(self) -> tuple[PrinterStatus, Outcome | None]:
        """Connect if needed and ask: the status, and the fault (as an outcome) if it cannot print now."""
        try:
            self._ensure_open()
        except (DeviceError, DriverError) as exc:
            self.close()
            reason = f"printer away: {exc.message}"
            return PrinterStatus(PrinterState.UNKNOWN, reason), Outcome(JobState.HELD, reason, reason, away=True)
        status = self._status()
        if status.state is PrinterState.ERROR:
            return status, Outcome(JobState.HELD, status.reason, status.reason)
        if status.state is PrinterState.UNKNOWN and self.answered:
            self.close()  # whatever is on the other end is not the printer we knew: reconnect next time
            reason = "printer away: it stopped answering"
            return status, Outcome(JobState.HELD, reason, reason, away=True)
        return status, None

    def print_job(self, data: bytes, written: Callable[[], object] = lambda: None) -> tuple[PrinterStatus, Outcome]:
        """``written`` is called once the bytes are out, before the printer is asked how the job ended."""
        before, fault = self.check()
        if fault is not None:
            return before, fault
        try:
            self.driver.write(data)
        except (DeviceError, DriverError) as exc:
            self.close()
            reason = f"printer away: {exc.message}"
            # Part of the slip may be out: not repeated by itself (a reprint is one call away).
            return before, Outcome(JobState.FAILED, reason, reason, away=True)
        written()
        if before.state is PrinterState.UNKNOWN and not self.answered:
            self._unconfirmed()
            return before, Outcome(JobState.SENT, before.reason)
        after = self._status()
        if after.state in (PrinterState.OK, PrinterState.WARNING):
            self.unconfirmed = 0
            return after, Outcome(JobState.PRINTED, after.reason)
        if after.state is PrinterState.ERROR:
            return after, Outcome(JobState.FAILED, f"{after.reason} while printing", after.reason)
        # Written, then no answer: it may well have printed.  Sent, never held (held jobs are printed
        # again); the next job reconnects and asks first, so a printer really gone is noticed then.
        self.close()
        self._unconfirmed()
        return after, Outcome(JobState.SENT, "sent; the printer did not confirm it")

    def _unconfirmed(self) -> None:
        if self.driver.answers_status():  # a wire that cannot answer is not the printer's silence
            self.unconfirmed += 1
