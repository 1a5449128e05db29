"""The durable outbox: engine writes that must arrive exactly once.

SQLite in WAL mode with ``synchronous=FULL`` (a committed row survives a power
cut), explicit ``BEGIN IMMEDIATE`` transactions, rows as JSON.  A write is
acknowledged to the till only after its row is committed.

Row life:  pending ──claim──► sending ──► delivered
              ▲                  │
              └── retry later ◄──┤ (unreachable, 5xx, 429, outcome unknown → look up first)
                                 └──► dead (a permanent rejection: kept, never dropped)
A technician may ``retry`` or ``discard`` (with a reason) a row in any open state —
pending, sending (left by a crash), dead, unverifiable — never a delivered one.
Rows found in ``sending`` at start-up were interrupted: they go back to
``pending`` marked for look-up, due at once, so a crash never causes a blind resend.
The deliverer claims rows in batches (``claim_batch``: one commit marks them all ``sending``
before the first is sent) and records what the engine acknowledged with its next claim, in
the same commit: an acknowledgement lost to a crash is found by that look-up.

Times are wall-clock seconds from ``clock`` (``open_store`` gives a ``SteadyClock``, which a
clock step cannot move while tillplug runs).  A due time read from disk at start (``recover``)
is trusted only as far as it is sane: a row waits at most as long after now as it was meant
to wait when its due time was set (``next_attempt - updated``), and never more than
``MAX_DELAY`` — so a clock set back while tillplug was stopped cannot hold a row for the
size of the step.  Ages are never negative.

A pending row may be flagged ``unverifiable``: its look-up could not tell whether the
engine has the write (neither the eventKey filter nor the engine's recent list could tell).
It is never resent and never marked "not needed"; it waits, is looked up again now and
then, and is counted in ``Stats.unverifiable`` for health and metrics.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tillplug.errors import StorageError
from tillplug.outbox.clock import SteadyClock

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_key     TEXT NOT NULL UNIQUE,
    kind          TEXT NOT NULL CHECK (kind IN ('event', 'order')),
    stream        TEXT NOT NULL,            -- delivery order is kept within a stream (a checkout)
    body          TEXT NOT NULL,            -- the JSON request body
    requires_key  TEXT,                     -- send only if the engine has this event (else: not needed)
    state         TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'dead', 'discarded')),
    needs_lookup  INTEGER NOT NULL DEFAULT 0,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  REAL NOT NULL,
    last_error    TEXT,
    engine_id     TEXT,
    note          TEXT,
    created       REAL NOT NULL,
    updated       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt);
CREATE INDEX IF NOT EXISTS outbox_stream ON outbox (stream, id);
"""
# Added after the first release: created on databases that predate it.
# requires_since: for a reversal, the earliest the write it reverses can have been sent (epoch s):
# how far back a look-up that reads the engine's unfiltered list must reach (NULL: to its end).
# requires_applied: a reversal sent only once the engine shows the write it reverses applied (a
# deduction a void held: shown never applied); a read that fails then proves nothing, so it waits.
COLUMNS_ADDED = {
    "unverifiable": "INTEGER NOT NULL DEFAULT 0",
    "requires_since": "REAL",
    "requires_applied": "INTEGER NOT NULL DEFAULT 0",
}
# The error codes (tillplug/errors.py) of rows that waited only for the engine to be there.
WAITED_FOR_ENGINE = ("engine_unreachable", "engine_timeout", "engine_error", "engine_busy", "engine_outcome_unknown")

MAX_DELAY = 3600.0  # seconds: the longest a row is ever meant to wait (Retry-After is honoured up to an hour)
# A stored due time, bounded (see the module's docstring).  Parameters: now, MAX_DELAY.
DUE = "MIN(next_attempt, ? + MIN(?, MAX(0, next_attempt - updated)))"
# A row's move to delivered.  Parameters: engine_id, note, note.  The note is added to what a
# technician wrote (kept for audit), never put in its place.
DELIVERED = "state='delivered', engine_id=?, note=COALESCE(note || ?, ?, note), last_error=NULL, unverifiable=0"


@dataclass(frozen=True)
class Row:
    id: int
    event_key: str
    kind: str
    stream: str
    body: dict[str, Any]
    requires_key: str | None
    state: str
    needs_lookup: bool
    attempts: int
    next_attempt: float
    last_error: str | None
    engine_id: str | None
    note: str | None
    created: float
    updated: float
    unverifiable: bool = False
    requires_since: float | None = None
    requires_applied: bool = False
    body_error: str | None = None  # the stored body cannot be read (the row can never be sent)

    @classmethod
    def from_sql(cls, r: sqlite3.Row) -> Row:
        d = dict(r)
        try:
            body = json.loads(d["body"])
        except ValueError as exc:
            body, d["body_error"] = {}, f"its stored body is not JSON ({exc})"
        else:
            if not isinstance(body, dict):
                body, d["body_error"] = {}, "its stored body is not a JSON object"
        d["body"] = body
        d["needs_lookup"] = bool(d["needs_lookup"])
        d["unverifiable"] = bool(d.get("unverifiable", 0))
        d["requires_applied"] = bool(d.get("requires_applied", 0))
        return cls(**d)

    def summary(self) -> dict[str, Any]:
        """For the CLI and health: everything but the body (which may name a member)."""
        return {k: v for k, v in self.__dict__.items() if k != "body"} | {"type": self.body.get("type")}


# States a technician's retry or discard may change ('delivered' and 'discarded' are final).
CHANGEABLE_STATES = ("pending", "sending", "dead")


@dataclass(frozen=True)
class Decision:
    """What a technician's command found (``row`` as it was; None: no such row) and whether it acted."""

    row: Row | None
    done: bool


@dataclass(frozen=True)
class Stats:
    pending: int
    sending: int
    delivered: int
    dead: int
    discarded: int
    oldest_pending_age: float  # seconds, 0 if none
    unverifiable: int = 0  # pending rows whose look-up could not tell whether the engine has them

    @property
    def depth(self) -> int:
        return self.pending + self.sending

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "depth": self.depth}


class OutboxStore:
    """One connection, guarded by a lock; every call is short and runs in a worker thread when async."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._lock = threading.RLock()
        self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        with self.transaction() as tx:
            tx.executescript_inside(SCHEMA)
            have = {r[1] for r in tx.execute("PRAGMA table_info(outbox)").fetchall()}
            for column, decl in COLUMNS_ADDED.items():
                if column not in have:
                    tx.execute(f"ALTER TABLE outbox ADD COLUMN {column} {decl}")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextmanager
    def transaction(self, *, fsync: bool = True) -> Iterator[Tx]:
        """BEGIN IMMEDIATE … COMMIT; the lock serialises writers in this process too.

        ``fsync=False`` is for what may be lost to a power cut (a cache): its commit is not flushed to
        the disk by itself, only with the next durable commit (the write-ahead log is written in order,
        so a later flush covers it); a crash of the process alone loses nothing."""
        with self._lock:
            if not fsync:
                self.db.execute("PRAGMA synchronous=NORMAL")
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield Tx(self.db)
                except BaseException:
                    if self.db.in_transaction:  # SQLite itself rolls back on a full disk (SQLITE_FULL)
                        self.db.execute("ROLLBACK")
                    raise
                try:
                    self.db.execute("COMMIT")
                except BaseException:
                    if self.db.in_transaction:  # a failed COMMIT (disk full, I/O) must not leave it open
                        self.db.execute("ROLLBACK")
                    raise
            finally:
                if not fsync:
                    self.db.execute("PRAGMA synchronous=FULL")

    # -- writes ------------------------------------------------------------------

    def enqueue(
        self,
        tx: Tx,
        *,
        kind: str,
        stream: str,
        body: dict[str, Any],
        event_key: str,
        requires_key: str | None = None,
        requires_since: float | None = None,
        requires_applied: bool = False,
    ) -> int:
        """Add a row inside the caller's transaction (so it commits with the caller's own writes)."""
        now = self.clock()
        cur = tx.db.execute(
            "INSERT INTO outbox (event_key, kind, stream, body, requires_key, requires_since, requires_applied,"
            " state, next_attempt, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
            (
                event_key,
                kind,
                stream,
                json.dumps(body, separators=(",", ":")),
                requires_key,
                requires_since,
                int(requires_applied),
                now,
                now,
                now,
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def add(
        self, *, kind: str, stream: str, body: dict[str, Any], event_key: str, requires_key: str | None = None
    ) -> int:
        with self.transaction() as tx:
            return self.enqueue(tx, kind=kind, stream=stream, body=body, event_key=event_key, requires_key=requires_key)

    def recover(self) -> int:
        """At start-up: rows left in 'sending' by a crash go back to pending, due now, to be looked up first.

        Due times are bounded too (see the module's docstring): the clock may have been set back
        while tillplug was stopped.  Returns the number of interrupted rows.
        """
        now = self.clock()
        with self.transaction() as tx:
            tx.db.execute(
                f"UPDATE outbox SET next_attempt={DUE} WHERE state='pending' AND next_attempt > {DUE}",
                (now, MAX_DELAY, now, MAX_DELAY),
            )
            cur = tx.db.execute(
                "UPDATE outbox SET state='pending', needs_lookup=1, next_attempt=MIN(next_attempt, ?), updated=?"
                " WHERE state='sending'",
                (now, now),
            )
            return cur.rowcount

    def claim(self, now: float | None = None) -> Row | None:
        """The next due row whose stream has nothing earlier still open (order per checkout)."""
        claimed = self.claim_batch(1, now)
        return claimed[0] if claimed else None

    def claim_batch(
        self,
        limit: int,
        now: float | None = None,
        *,
        delivered: Sequence[tuple[int, str | None]] = (),
        unsent: Sequence[int] = (),
    ) -> list[Row]:
        """Up to ``limit`` due rows, each the first still open in its stream, in due order: all
        marked 'sending' in one commit, before any of them can be sent.

        The same commit first settles the batch before: ``delivered``, the rows the engine
        acknowledged (row id, the engine's id for it), and ``unsent``, claimed rows never sent,
        back to pending as they were (no look-up: they never left).  A crash before it leaves
        them in 'sending', looked up at start; ``limit`` 0 only settles.
        """
        if limit <= 0 and not delivered and not unsent:
            return []
        now = self.clock() if now is None else now
        with self.transaction() as tx:
            tx.db.executemany(
                f"UPDATE outbox SET {DELIVERED}, updated=? WHERE id=? AND state='sending'",
                [(engine_id, None, None, now, row_id) for row_id, engine_id in delivered],
            )
            tx.db.executemany(
                "UPDATE outbox SET state='pending', attempts=MAX(0, attempts-1), updated=?"
                " WHERE id=? AND state='sending'",
                [(now, row_id) for row_id in unsent],
            )
            if limit <= 0:
                return []
            found = tx.db.execute(
                "SELECT o.* FROM outbox o WHERE o.state='pending' AND o.next_attempt <= ?"
                " AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.stream=o.stream AND e.id < o.id"
                "                 AND e.state IN ('pending', 'sending'))"
                " ORDER BY o.next_attempt, o.id LIMIT ?",
                (now, limit),
            ).fetchall()
            tx.db.executemany(
                "UPDATE outbox SET state='sending', attempts=attempts+1, updated=? WHERE id=?",
                [(now, r["id"]) for r in found],
            )
            return [Row.from_sql(r) for r in found]

    def delivered(self, row_id: int, *, engine_id: str | None = None, note: str | None = None) -> None:
        self._finish(row_id, DELIVERED, (engine_id, note, note))

    def hold_unverifiable(self, row_id: int, *, at: float, reason: str) -> None:
        """The look-up could not tell: keep the row pending (its stream waits behind it), flagged."""
        self._finish(
            row_id,
            "state='pending', next_attempt=?, last_error=?, unverifiable=1",
            (at, f"unverifiable: {reason}"[:500]),
        )

    def retry_later(self, row_id: int, *, at: float, error: str, needs_lookup: bool) -> None:
        self._finish(
            row_id,
            "state='pending', next_attempt=?, last_error=?, needs_lookup=MAX(needs_lookup, ?)",
            (at, error[:500], int(needs_lookup)),
        )

    def release_waiting(self, now: float | None = None) -> int:
        """After an outage: rows that waited only because the engine was unavailable are due now."""
        now = self.clock() if now is None else now
        with self.transaction() as tx:
            cur = tx.db.execute(
                "UPDATE outbox SET next_attempt=?, updated=? WHERE state='pending' AND next_attempt > ?"
                f" AND last_error IN ({', '.join('?' * len(WAITED_FOR_ENGINE))})",
                (now, now, now, *WAITED_FOR_ENGINE),
            )
            return cur.rowcount

    def dead(self, row_id: int, *, error: str) -> None:
        self._finish(row_id, "state='dead', last_error=?", (error[:500],))

    def _finish(self, row_id: int, assignments: str, args: tuple[Any, ...]) -> None:
        with self.transaction() as tx:
            tx.db.execute(
                f"UPDATE outbox SET {assignments}, updated=? WHERE id=? AND state='sending'",
                (*args, self.clock(), row_id),
            )

    # -- the technician's commands -------------------------------------------------

    def retry(self, row_id: int, *, resend_unverified: bool = False) -> Decision:
        """Try a row again now: pending, dead, or left in 'sending' by a crash (looked up first).

        An unverifiable row is looked up again, never resent — unless ``resend_unverified``: the
        technician has checked the Loyalty Console and accepts that the engine may count it twice.
        A delivered or discarded row is left as it is.
        """
        now = self.clock()
        with self.transaction() as tx:
            found = tx.db.execute("SELECT * FROM outbox WHERE id=?", (row_id,)).fetchone()
            if found is None:
                return Decision(None, False)
            row = Row.from_sql(found)
            if row.state not in CHANGEABLE_STATES or (resend_unverified and not row.unverifiable):
                return Decision(row, False)
            if resend_unverified:
                # Neither its own look-up nor that of the write it reverses: the technician decided.
                assignments = "needs_lookup=0, unverifiable=0, requires_key=NULL"
                reversed_key = f" (it reverses eventKey {row.requires_key})" if row.requires_key else ""
                note = f"resent unverified by technician{reversed_key}; "
            elif row.state == "sending":  # interrupted mid-request: it may have landed
                assignments, note = "needs_lookup=1", "recovered from sending by technician; "
            else:
                assignments, note = "needs_lookup=needs_lookup", "retried by technician; "
            tx.db.execute(
                f"UPDATE outbox SET state='pending', {assignments}, next_attempt=?, updated=?,"
                " note=COALESCE(note, '') || ? WHERE id=?",
                (now, now, note, row_id),
            )
            return Decision(row, True)

    def discard(self, row_id: int, reason: str) -> Decision:
        """Give a row up for good (kept, with the reason): any state but delivered or discarded."""
        if not reason.strip():
            raise ValueError("a reason is required to discard a row")
        with self.transaction() as tx:
            found = tx.db.execute("SELECT * FROM outbox WHERE id=?", (row_id,)).fetchone()
            if found is None:
                return Decision(None, False)
            row = Row.from_sql(found)
            if row.state not in CHANGEABLE_STATES:
                return Decision(row, False)
            tx.db.execute(
                "UPDATE outbox SET state='discarded', note=COALESCE(note, '') || ?, updated=? WHERE id=?",
                (f"discarded: {reason.strip()[:300]}", self.clock(), row_id),
            )
            return Decision(row, True)

    # -- reads -------------------------------------------------------------------

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """A read for rooms that keep their own tables in this database (checkouts)."""
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def by_key(self, event_key: str) -> Row | None:
        with self._lock:
            r = self.db.execute("SELECT * FROM outbox WHERE event_key=?", (event_key,)).fetchone()
        return Row.from_sql(r) if r else None

    def delivered_key(self, kind: str) -> str | None:
        """The eventKey of the latest write of ``kind`` the engine acknowledged (to test its filter)."""
        with self._lock:
            r = self.db.execute(
                "SELECT event_key FROM outbox WHERE state='delivered' AND kind=? AND engine_id IS NOT NULL"
                " ORDER BY id DESC LIMIT 1",
                (kind,),
            ).fetchone()
        return str(r[0]) if r else None

    def rows(self, state: str | None = None, limit: int = 1000) -> list[Row]:
        with self._lock:
            if state:
                found = self.db.execute("SELECT * FROM outbox WHERE state=? ORDER BY id LIMIT ?", (state, limit))
            else:
                found = self.db.execute("SELECT * FROM outbox ORDER BY id LIMIT ?", (limit,))
            return [Row.from_sql(r) for r in found.fetchall()]

    def stats(self) -> Stats:
        with self._lock:
            counts = dict(self.db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
            oldest = self.db.execute(
                "SELECT MIN(created) FROM outbox WHERE state IN ('pending', 'sending')"
            ).fetchone()[0]
            unverifiable = self.db.execute(
                "SELECT COUNT(*) FROM outbox WHERE unverifiable=1 AND state IN ('pending', 'sending')"
            ).fetchone()[0]
        return Stats(
            pending=counts.get("pending", 0),
            sending=counts.get("sending", 0),
            delivered=counts.get("delivered", 0),
            dead=counts.get("dead", 0),
            discarded=counts.get("discarded", 0),
            oldest_pending_age=max(0.0, self.clock() - oldest) if oldest else 0.0,
            unverifiable=unverifiable,
        )

    def backlog(self, before: float) -> tuple[int, int]:
        """Rows still to deliver (pending or sending), and how many of them were queued before
        ``before``: two counts on an index, cheap enough to ask before each send."""
        with self._lock:
            found = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(created < ?), 0) FROM outbox WHERE state IN ('pending', 'sending')",
                (before,),
            )
            waiting, older = found.fetchone()
            return int(waiting), int(older)

    def next_due(self) -> float | None:
        with self._lock:
            due: float | None = self.db.execute(
                "SELECT MIN(next_attempt) FROM outbox WHERE state='pending'"
            ).fetchone()[0]
            return due


class Tx:
    """The open transaction handed to callers; they may add their own statements to it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, args)

    def executescript_inside(self, script: str) -> None:
        # executescript() would COMMIT first; run statement by statement instead.
        for statement in script.split(";"):
            if statement.strip():
                self.db.execute(statement)


def open_store(path: str | Path) -> OutboxStore:
    """The outbox, or a StorageError whose one line names the file and what to do (never a traceback).

    The file is never deleted or rewritten here: a corrupt outbox may still hold unsent sales.
    """
    try:
        return OutboxStore(path, clock=SteadyClock())
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            raise StorageError(
                f"the outbox {path} is damaged ({exc}); it was left as it is. Stop tillplug, move the file "
                "aside for a technician (it may hold unsent loyalty writes) and start again"
            ) from exc
        raise StorageError(
            f"the outbox {path} cannot be opened for writing ({exc}); check that the disk is mounted "
            "read-write, has space, and that the file and its folder belong to the tillplug user"
        ) from exc
    except OSError as exc:
        raise StorageError(f"the outbox {path} cannot be opened ({exc.strerror or exc})") from exc
