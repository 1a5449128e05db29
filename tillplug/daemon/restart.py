"""Whether a restart now would cut something short: what ``tillplug ready-to-restart`` asks.

An update restarts the daemon only at a safe moment (docs/fleet.md).  Not safe while:

* a checkout is open on a lane (the till is in a sale: a restart would make its next call fail);
* a write to the engine is being sent (an outbox row, a points spend or a voucher burn in
  ``sending``: cut short, its outcome becomes unknown and must be looked up);
* a print job is being written to a printer (cut short, the slip is torn half printed);
* a scan is being handled on a lane.

The answer is read fresh from the databases at each question (a few indexed counts), not from the
health snapshot, which can be a second old.  A checkout untouched for ``ABANDONED_AFTER`` seconds is
one its till gave up on (a crash, a power cut): it does not hold a restart back for ever.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tillplug.outbox.store import OutboxStore
from tillplug.spool.jobs import JobState, JobStore

ABANDONED_AFTER = 3600.0  # seconds: an open checkout untouched this long no longer blocks a restart


@dataclass(frozen=True)
class Blocker:
    """One kind of work a restart would interrupt now."""

    what: str  # checkout_open | engine_write_sending | print_job_writing | scan_in_progress
    count: int
    lanes: tuple[int, ...] = ()

    def sentence(self) -> str:
        on = f" on lane {', '.join(map(str, self.lanes))}" if self.lanes else ""
        noun = {
            "checkout_open": ("checkout open", "checkouts open"),
            "engine_write_sending": ("engine write being sent", "engine writes being sent"),
            "print_job_writing": ("print job being written", "print jobs being written"),
            "scan_in_progress": ("scan being handled", "scans being handled"),
        }[self.what][self.count != 1]
        return f"{self.count} {noun}{on}"

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "count": self.count, "lanes": list(self.lanes)}


def _lanes(rows: Iterable[Any]) -> tuple[int, ...]:
    return tuple(sorted({int(r[0]) for r in rows if r[0] is not None}))


def find_blockers(
    store: OutboxStore, jobs: JobStore, busy_lanes: Iterable[int] = (), *, now: float | None = None
) -> list[Blocker]:
    """What a restart now would interrupt (runs in a worker thread: it reads the databases)."""
    now = time.time() if now is None else now
    found: list[Blocker] = []
    open_rows = store.query("SELECT lane FROM checkouts WHERE state='open' AND updated >= ?", (now - ABANDONED_AFTER,))
    if open_rows:
        found.append(Blocker("checkout_open", len(open_rows), _lanes(open_rows)))
    sending = store.query(
        "SELECT (SELECT COUNT(*) FROM outbox WHERE state='sending')"
        " + (SELECT COUNT(*) FROM deductions WHERE state='sending')"
        " + (SELECT COUNT(*) FROM burns WHERE state='sending')"
    )
    if writes := int(sending[0][0]):
        found.append(Blocker("engine_write_sending", writes))
    if printing := jobs.list_jobs(state=JobState.PRINTING.value, limit=1000):
        found.append(Blocker("print_job_writing", len(printing)))
    if lanes := tuple(sorted(set(busy_lanes))):
        found.append(Blocker("scan_in_progress", len(lanes), lanes))
    return found


def readiness(blockers: list[Blocker]) -> dict[str, Any]:
    """The answer of ``GET /v1/restart``: safe, and if not, why on one line."""
    return {
        "safe": not blockers,
        "reason": "; ".join(b.sentence() for b in blockers) or None,
        "blockers": [b.to_dict() for b in blockers],
    }
