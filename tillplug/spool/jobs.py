"""Print jobs, kept durably: SQLite in WAL mode in the state directory.

Job life::

    queued ──claim──► printing ──► printed   the printer confirmed after the cut
       │  ▲                   ├──► sent      written; the printer cannot or did not confirm it
       │  │ fault cleared     ├──► held      paper out, cover open, printer away: found before writing
       ▼  │                   └──► failed    the printer took part of it, or the bytes cannot be printed
     held ──(hold_minutes)──► expired        never printed by itself: no slip for the next customer
    queued/held ──DELETE──► cancelled

A job's bytes go to the printer at most once: a job is written only when claimed from queued/held,
and once written it ends printed, sent or failed, never held (so never claimed again).  Held is
only ever a job nothing was written of.  A reprint is a new job with the same bytes.

Bounded (``StoreLimits``, from ``[printing]``): waiting jobs and their bytes per printer, and the
database's size; finished jobs are pruned after ``keep_finished_seconds`` (and beyond
``KEEP_FINISHED`` rows), oldest first when a new job needs the room.  Past a bound ``add`` refuses
with ``PrintQueueFull``: the disk never fills.  The methods block: callers on the event loop use
``asyncio.to_thread``.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tillplug.errors import PrintQueueFull, StorageError, StorageFull

if TYPE_CHECKING:
    from tillplug.config.model import PrintingConfig

log = logging.getLogger(__name__)
SCHEMA = """
CREATE TABLE IF NOT EXISTS print_jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    printer     TEXT NOT NULL,
    lane        INTEGER NOT NULL,
    kind        TEXT NOT NULL,              -- balance, voucher, points, refund, sale, test, raw, drawer
    source      TEXT NOT NULL,              -- tillplug, or till (raw bytes from the till software)
    data        BLOB NOT NULL,              -- the exact ESC/POS bytes
    state       TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    reprint_of  INTEGER,
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    expires     REAL NOT NULL               -- after this a queued or held job is never printed by itself
);
CREATE INDEX IF NOT EXISTS print_jobs_next ON print_jobs (printer, state, id);
-- pruning on every add reads this range, not the whole table (a scan was a millisecond a slip)
CREATE INDEX IF NOT EXISTS print_jobs_updated ON print_jobs (updated);
"""
KEEP_FINISHED = 2000  # finished jobs kept for GET /v1/print/jobs and reprints; older ones are pruned
MIB = 1 << 20
WAL_LIMIT = 4 * MIB  # the write-ahead log is cut back to this after each checkpoint
ROW_OVERHEAD = 256  # what a job's row costs beyond its bytes, for the database bound


@dataclass(frozen=True)
class StoreLimits:
    """The print bounds (``[printing]`` in the config; these defaults are its defaults)."""

    max_waiting_jobs: int = 200  # per printer: queued, held and printing
    max_waiting_bytes: int = 32 * MIB  # per printer, the waiting jobs' bytes together
    max_database_bytes: int = 256 * MIB  # the print database, finished jobs included
    keep_finished_seconds: float = 24 * 3600.0  # printed, sent, failed, expired, cancelled jobs kept this long

    @classmethod
    def from_config(cls, printing: PrintingConfig) -> StoreLimits:
        return cls(
            max_waiting_jobs=int(printing.max_waiting_jobs),
            max_waiting_bytes=int(printing.max_waiting_mib * MIB),
            max_database_bytes=int(printing.max_database_mib * MIB),
            keep_finished_seconds=float(printing.keep_finished_hours * 3600),
        )


@dataclass(frozen=True)
class QueueFigures:
    """One printer's waiting jobs (queued, held, printing) and their bytes."""

    waiting: int = 0
    waiting_bytes: int = 0


class JobState(enum.StrEnum):
    QUEUED = "queued"
    PRINTING = "printing"
    PRINTED = "printed"
    SENT = "sent"
    HELD = "held"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


WAITING = (JobState.QUEUED, JobState.HELD)
FINISHED = "state NOT IN ('queued', 'held', 'printing')"


@dataclass(frozen=True)
class PrintJob:
    id: int
    printer: str
    lane: int
    kind: str
    source: str
    state: JobState
    reason: str
    reprint_of: int | None
    created: float
    updated: float
    expires: float
    size: int

    @classmethod
    def from_sql(cls, r: sqlite3.Row) -> PrintJob:
        d = dict(r)
        d["state"] = JobState(d["state"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The API's view of a job (and the ``print_job`` event's data): no bytes, no personal data."""
        return {
            "job": self.id,
            "state": self.state.value,
            "reason": self.reason,
            "printer": self.printer,
            "lane": self.lane,
            "kind": self.kind,
            "source": self.source,
            "reprintOf": self.reprint_of,
            "createdAt": self.created,
            "updatedAt": self.updated,
            "expiresAt": self.expires,
            "bytes": self.size,
        }

    def summary(self) -> dict[str, Any]:
        """What a print call answers at once."""
        return {"job": self.id, "state": self.state.value}


_COLUMNS = "id, printer, lane, kind, source, state, reason, reprint_of, created, updated, expires, length(data) AS size"


class JobStore:
    def __init__(self, path: Path | str, *, limits: StoreLimits | None = None) -> None:
        self.limits = limits or StoreLimits()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        # Pages freed by pruning go back to the file system (incremental_vacuum after each prune).
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a slip lost to a power cut is reprinted, not owed
        self._db.executescript(SCHEMA)
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self._lock = threading.Lock()
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            self._convert()

    def _convert(self) -> None:
        """A database made before the bounds: prune it, then rebuild it once so freed space can go back."""
        self._prune(time.time())
        try:
            self._db.execute("VACUUM")  # needs free space as large as what is left; pruned first for that
        except sqlite3.Error as exc:  # the bounds still hold on the pages in use; only the file stays large
            log.warning("print database not rebuilt (%s); its file shrinks once it can be", exc)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, job_id: int) -> PrintJob | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM print_jobs WHERE id = ?", (job_id,)).fetchone()
        return PrintJob.from_sql(row) if row else None

    def add(  # noqa: PLR0913 -- a job's columns, then how its caller holds the printer and tells the till
        self,
        printer: str,
        lane: int,
        kind: str,
        source: str,
        data: bytes,
        *,
        hold_seconds: float,
        reprint_of: int | None = None,
        claim: bool = False,
        added: Callable[[PrintJob], object] | None = None,
    ) -> PrintJob:
        """Store a queued job; ``PrintQueueFull`` past a bound, ``StorageError`` if the disk refuses.

        With ``claim``, a job that would be the printer's only waiting one is stored already claimed
        (``printing``): recorded and marked in one commit, for a caller that holds the printer and
        writes it next.  Behind other waiting jobs it is stored queued, to wait its turn.  ``added`` is
        called with the stored job before any other thread can claim it (the till hears "queued" first)."""
        now = time.time()
        expires = now + hold_seconds
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    figures = self._figures(printer)
                    freed = self._check_room(printer, len(data), now, figures)
                    state = JobState.PRINTING if claim and figures.waiting == 0 else JobState.QUEUED
                    cur = self._db.execute(
                        "INSERT INTO print_jobs (printer, lane, kind, source, data, state, reprint_of, created, "
                        "updated, expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (printer, lane, kind, source, data, state.value, reprint_of, now, now, expires),
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                if freed:
                    self._db.execute("PRAGMA incremental_vacuum")
                # The row as stored (its reason is the column's default), without reading it back.
                job = PrintJob(
                    int(cur.lastrowid or 0),
                    printer,
                    lane,
                    kind,
                    source,
                    state,
                    "",
                    reprint_of,
                    now,
                    now,
                    expires,
                    len(data),
                )
                if added is not None:
                    added(job)
        except sqlite3.Error as exc:  # translated here: the one boundary a print call crosses
            if "full" in str(exc).lower():
                raise StorageFull(f"The print database cannot grow: {exc}.") from exc
            raise StorageError(f"The print database refused the job: {exc}.") from exc
        return job

    def _check_room(self, printer: str, size: int, now: float, figures: QueueFigures) -> int:
        """Inside add's transaction: the printer's bounds, then the database's (finished jobs make room).
        How many finished jobs went to make it."""
        limits = self.limits
        if figures.waiting >= limits.max_waiting_jobs:
            raise PrintQueueFull(
                f"Printer {printer} has {figures.waiting} jobs waiting, its bound ([printing] max_waiting_jobs); "
                "nothing was queued. Check the printer."
            )
        if figures.waiting_bytes + size > limits.max_waiting_bytes:
            raise PrintQueueFull(
                f"Printer {printer} has {figures.waiting_bytes // 1024} KiB waiting; {size // 1024} KiB more is "
                f"past its bound of {limits.max_waiting_bytes // MIB} MiB ([printing] max_waiting_mib); nothing "
                "was queued. Check the printer."
            )
        freed = self._prune(now)
        need = size + ROW_OVERHEAD
        while self._used() + need > limits.max_database_bytes:
            gone = self._db.execute(
                f"DELETE FROM print_jobs WHERE id IN (SELECT id FROM print_jobs WHERE {FINISHED} ORDER BY id LIMIT 20)"
            ).rowcount
            if not gone:
                raise PrintQueueFull(
                    f"The print database is at its bound of {limits.max_database_bytes // MIB} MiB ([printing] "
                    f"max_database_mib) with jobs still waiting; nothing was queued for printer {printer}."
                )
            freed += gone
        return freed

    def _figures(self, printer: str) -> QueueFigures:
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(data)), 0) FROM print_jobs "
            "WHERE printer = ? AND state IN ('queued', 'held', 'printing')",
            (printer,),
        ).fetchone()
        return QueueFigures(int(row[0]), int(row[1]))

    def _used(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages - free) * self._page_size

    def _prune(self, now: float) -> int:
        """Finished jobs past their keep time, and beyond the newest KEEP_FINISHED; waiting jobs never."""
        last = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM print_jobs").fetchone()[0]
        # Two index ranges (rowid, updated), each usually empty: a slip's add does not read every kept job.
        return int(
            self._db.execute(
                f"DELETE FROM print_jobs WHERE id IN (SELECT id FROM print_jobs WHERE id <= ? AND {FINISHED} "
                f"UNION SELECT id FROM print_jobs WHERE updated < ? AND {FINISHED})",
                (int(last) + 1 - KEEP_FINISHED, now - self.limits.keep_finished_seconds),  # the new job counts
            ).rowcount
        )

    def prune(self, now: float | None = None) -> int:
        """Drop finished jobs past their keep time (the spool calls this now and then); how many went."""
        with self._lock:
            gone = self._prune(time.time() if now is None else now)
            if gone:
                self._db.execute("PRAGMA incremental_vacuum")
            return gone

    def figures(self, printer: str) -> QueueFigures:
        with self._lock:
            return self._figures(printer)

    def used_bytes(self) -> int:
        """The database's pages in use (freed pages not counted)."""
        with self._lock:
            return self._used()

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database and cut it back."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def get(self, job_id: int) -> PrintJob | None:
        with self._lock:
            return self._one(job_id)

    def data(self, job_id: int) -> bytes:
        with self._lock:
            row = self._db.execute("SELECT data FROM print_jobs WHERE id = ?", (job_id,)).fetchone()
        return bytes(row[0]) if row else b""

    def list_jobs(self, *, printer: str | None = None, state: str | None = None, limit: int = 100) -> list[PrintJob]:
        where, args = [], []
        if printer:
            where.append("printer = ?")
            args.append(printer)
        if state:
            where.append("state = ?")
            args.append(state)
        sql = f"SELECT {_COLUMNS} FROM print_jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [PrintJob.from_sql(r) for r in rows]

    def move(
        self, job_id: int, state: JobState, reason: str = "", *, only_from: tuple[JobState, ...] | None = None
    ) -> PrintJob | None:
        """Set a job's state; with ``only_from``, only if it is in one of those (None if it was not)."""
        sql = "UPDATE print_jobs SET state = ?, reason = ?, updated = ? WHERE id = ?"
        args: list[Any] = [state.value, reason, time.time(), job_id]
        if only_from:
            sql += f" AND state IN ({', '.join('?' * len(only_from))})"
            args += [s.value for s in only_from]
        with self._lock:
            changed = self._db.execute(sql, args).rowcount
            return self._one(job_id) if changed else None

    def claim(
        self, printer: str, now: float | None = None, *, source: str | None = None
    ) -> tuple[PrintJob, bytes] | None:
        """The oldest waiting (queued or held) job that has not expired (of ``source`` only, if given),
        now marked printing."""
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT id, data FROM print_jobs WHERE printer = ? AND state IN ('queued', 'held') "
                    "AND expires > ? AND source = coalesce(?, source) ORDER BY id LIMIT 1",
                    (printer, now, source),
                ).fetchone()
                if row is None:
                    self._db.execute("COMMIT")
                    return None
                self._db.execute(
                    "UPDATE print_jobs SET state = 'printing', reason = '', updated = ? WHERE id = ?", (now, row[0])
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            job = self._one(row[0])
        assert job is not None
        return job, bytes(row[1])

    def hold_queued(self, printer: str, reason: str) -> list[PrintJob]:
        """Every queued job of this printer is held (the printer is known to be unable to print)."""
        return self._move_where("printer = ? AND state = 'queued'", (printer,), JobState.HELD, reason)

    def expire(self, printer: str, now: float | None = None) -> list[PrintJob]:
        now = time.time() if now is None else now
        return self._move_where(
            "printer = ? AND state IN ('queued', 'held') AND expires <= ?",
            (printer, now),
            JobState.EXPIRED,
            "not printed in time",
        )

    def recover(self) -> list[PrintJob]:
        """At start-up: a job found printing was interrupted; nobody can tell how much came out."""
        return self._move_where("state = 'printing'", (), JobState.FAILED, "interrupted by a restart")

    def _move_where(self, where: str, args: tuple[Any, ...], state: JobState, reason: str) -> list[PrintJob]:
        with self._lock:
            ids = [r[0] for r in self._db.execute(f"SELECT id FROM print_jobs WHERE {where}", args)]
            if not ids:
                return []
            marks = ", ".join("?" * len(ids))
            self._db.execute(
                f"UPDATE print_jobs SET state = ?, reason = ?, updated = ? WHERE id IN ({marks})",
                (state.value, reason, time.time(), *ids),
            )
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM print_jobs WHERE id IN ({marks}) ORDER BY id", ids)
            return [PrintJob.from_sql(r) for r in rows]
