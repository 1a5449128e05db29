"""Print jobs, kept durably: SQLite in WAL mode in the state directory.

Job life::

    queued ──claim──► printing ──► printed   the printer confirmed after the cut
       │  ▲                   ├──► sent      written; this connection cannot answer
       │  │ fault cleared     ├──► held      paper out, cover open, printer away (printed when it clears)
       ▼  │                   └──► failed    the printer took part of it, or the bytes cannot be printed
     held ──(hold_minutes)──► expired        never printed by itself: no slip for the next customer
    queued/held ──DELETE──► cancelled

A reprint is a new job with the same bytes.  The methods block: callers on the event loop use
``asyncio.to_thread``.
"""

from __future__ import annotations

import enum
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
"""
KEEP_FINISHED = 2000  # finished jobs kept for GET /v1/print/jobs and reprints; older ones are pruned


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
    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a slip lost to a power cut is reprinted, not owed
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, job_id: int) -> PrintJob | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM print_jobs WHERE id = ?", (job_id,)).fetchone()
        return PrintJob.from_sql(row) if row else None

    def add(
        self,
        printer: str,
        lane: int,
        kind: str,
        source: str,
        data: bytes,
        *,
        hold_seconds: float,
        reprint_of: int | None = None,
    ) -> PrintJob:
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO print_jobs (printer, lane, kind, source, data, state, reprint_of, created, updated, "
                "expires) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                (printer, lane, kind, source, data, reprint_of, now, now, now + hold_seconds),
            )
            self._db.execute(  # the history is bounded; waiting jobs are never pruned
                "DELETE FROM print_jobs WHERE id <= ? AND state NOT IN ('queued', 'held', 'printing')",
                (int(cur.lastrowid or 0) - KEEP_FINISHED,),
            )
            job = self._one(int(cur.lastrowid or 0))
        assert job is not None
        return job

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
