"""Idempotency keys: a POS that retries a call whose answer it never got gets the first call's answer.

A spend can take seconds (a balance read with a retry, the report, the confirming reads); a POS
whose HTTP client gives up sooner and sends "spend 500 points" again would spend twice.  With an
``Idempotency-Key`` header on a call that changes something (open, attach, spend, voucher, redeem,
tender, complete, void, return, raw print, drawer), the rules are:

* a key is scoped to the operation and the checkout (the path's ``tx``; for opening or a return, the body's
  ``transactionId``): the same key on another checkout is another request;
* the first call claims the key, committed before the call runs, so a restart cannot forget it;
* its answer (status and body) is kept for at least ``KEEP_SECONDS`` (24 h) and pruned after; a
  retry with the same request answers it again, marked ``Idempotent-Replayed: true``;
* a retry while the first call still runs → 409 ``request_in_progress`` (ask again shortly);
* the same key with a different request (body, or another path parameter) → 422
  ``idempotency_key_reused``;
* a call that failed without changing anything (a retryable error other than an unknown outcome:
  the engine unreachable or busy, a device or the till's disk not ready) releases its key, so the
  retry runs again;
* a call cut short by a restart cannot say what it did: its retries answer 409
  ``request_interrupted`` (read the checkout to see what happened).

SQLite in WAL mode with ``synchronous=FULL`` beside the outbox (``state_dir/idempotency.sqlite3``):
a stored answer survives a power cut, like the deduction it answers for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tillplug.errors import FlowError, OutcomeUnknown, RetryableError, StorageError

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
KEEP_SECONDS = 24 * 3600.0
MAX_KEYS = 100_000  # a busy till makes a few thousand keyed calls a day
MAX_KEY_LENGTH = 255
PRUNE_EVERY = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done')),
    status INTEGER,
    body BLOB,
    created REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created)
"""


class RequestInProgress(FlowError):
    code = "request_in_progress"
    default_message = "The first call with this Idempotency-Key is still running; ask again in a moment."
    http_status = 409


class IdempotencyKeyReused(FlowError):
    code = "idempotency_key_reused"
    default_message = "This Idempotency-Key was used for a different request; use a new key for a new request."
    http_status = 422


class RequestInterrupted(FlowError):
    code = "request_interrupted"
    default_message = (
        "The first call with this Idempotency-Key was cut short by a restart; read the checkout to see what it did."
    )
    http_status = 409


class TooManyKeys(RetryableError):
    code = "idempotency_keys_full"
    default_message = "Too many Idempotency-Keys in the last 24 hours; try again later or send the call without one."
    http_status = 503


def valid_key(value: str) -> bool:
    """1 to 255 visible ASCII characters (a UUID is the usual choice)."""
    return 0 < len(value) <= MAX_KEY_LENGTH and all("!" <= c <= "~" for c in value)


def fingerprint(request: object) -> str:
    """What makes two requests the same one: their JSON meaning, whatever the key order or spacing."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def keeps_key(exc: BaseException | None) -> bool:
    """Whether an answer is kept under its key: every answer, except a failure that changed nothing
    and that trying again may cure (the tree's retryable errors, but for an unknown outcome)."""
    return not (isinstance(exc, RetryableError) and not isinstance(exc, OutcomeUnknown))


@dataclass(frozen=True)
class Claim:
    outcome: Literal["new", "replay", "running", "mismatch"]
    status: int = 0
    body: bytes = b""


class IdempotencyStore:
    """One connection behind a lock; every call is short and runs in a worker thread when async."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._lock = threading.RLock()
        self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        with self._transaction():
            for statement in SCHEMA.split(";"):
                self.db.execute(statement)
        self.interrupted = self._recover()
        self._pruned_at = -PRUNE_EVERY
        self._count = 0
        self.prune()

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            try:
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def _recover(self) -> int:
        """Calls still running when the last run ended were cut short: their retries say so."""
        body = json.dumps({"error": RequestInterrupted().to_dict()}).encode()
        with self._transaction():
            cur = self.db.execute(
                "UPDATE requests SET state = 'done', status = ?, body = ? WHERE state = 'running'",
                (RequestInterrupted.http_status, body),
            )
        if cur.rowcount:
            log.warning("%d keyed API call(s) were cut short by the last stop; their retries answer 409", cur.rowcount)
        return cur.rowcount

    def prune(self) -> int:
        """Forget answers older than ``KEEP_SECONDS``."""
        now = self.clock()
        with self._transaction():
            gone = self.db.execute(
                "DELETE FROM requests WHERE created < ? AND state = 'done'", (now - KEEP_SECONDS,)
            ).rowcount
            self._count = self.db.execute("SELECT count(*) FROM requests").fetchone()[0]
        self._pruned_at = now
        return gone

    def claim(self, scope: str, key: str, request_fingerprint: str) -> Claim:
        """Claim ``key`` for a new call (committed), or say what an earlier call with it left."""
        now = self.clock()
        if now - self._pruned_at >= PRUNE_EVERY or self._count >= MAX_KEYS:
            self.prune()
        with self._transaction():
            row = self.db.execute(
                "SELECT fingerprint, state, status, body FROM requests WHERE scope = ? AND key = ?", (scope, key)
            ).fetchone()
            if row is not None:
                stored_fingerprint, state, status, body = row
                if stored_fingerprint != request_fingerprint:
                    return Claim("mismatch")
                if state == "running":
                    return Claim("running")
                return Claim("replay", status, bytes(body))
            if self._count >= MAX_KEYS:
                raise TooManyKeys()
            self.db.execute(
                "INSERT INTO requests (scope, key, fingerprint, state, created) VALUES (?, ?, ?, 'running', ?)",
                (scope, key, request_fingerprint, now),
            )
            self._count += 1
        return Claim("new")

    def finish(self, scope: str, key: str, status: int, body: bytes) -> None:
        with self._transaction():
            self.db.execute(
                "UPDATE requests SET state = 'done', status = ?, body = ? WHERE scope = ? AND key = ?",
                (status, body, scope, key),
            )

    def release(self, scope: str, key: str) -> None:
        """The call changed nothing: its key may be used again, by its retry."""
        with self._transaction():
            gone = self.db.execute(
                "DELETE FROM requests WHERE scope = ? AND key = ? AND state = 'running'", (scope, key)
            ).rowcount
            self._count -= gone


def open_idempotency_store(path: str | Path) -> IdempotencyStore:
    """The store, or a StorageError whose one line names the file and what to do (never a traceback)."""
    try:
        return IdempotencyStore(path)
    except sqlite3.DatabaseError as exc:
        raise StorageError(
            f"the API's idempotency keys {path} cannot be opened ({exc}); check that the disk is mounted "
            "read-write and has space, and that the file belongs to the tillplug user (if it is damaged, move "
            "it aside: the keys only answer retries)"
        ) from exc
