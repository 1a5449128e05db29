"""Checkouts and their money intents, kept in the outbox's database.

Every engine write that moves points or burns a voucher has an *intent* row,
committed before the engine hears of it: a deduction (points) or a burn (a
voucher).  Its outcome is one of *landed*, *did not land* or *unknown*:

    deduction   sending ──► confirmed (landed) ──► refunded (a refund is queued in the outbox)
                        ├─► failed    (did not land)
                        └─► unknown   (timeout, reset, unreadable 2xx: settled by look-up)
    burn        sending ──► burned | failed | unknown

``pending = 1`` on an unknown intent means the till was told ``pending`` and the
settler owes it a verdict on the event stream.  An unknown deduction with
``pending = 0`` was interrupted by a crash: the till got no answer, and a
refund-if-it-landed is already queued in the outbox.

Writes that change an intent and queue an outbox row happen in one transaction,
so a crash between them cannot leave points taken with no refund queued.  The
methods that commit are synchronous (SQLite with fsync); the flows call them
through ``asyncio.to_thread`` so a commit never stalls the event loop.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

from tillplug.outbox.store import OutboxStore, Tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkouts (
    tx_id    TEXT PRIMARY KEY,
    lane     INTEGER NOT NULL,
    state    TEXT NOT NULL CHECK (state IN ('open', 'completed', 'voided')),
    data     TEXT NOT NULL,
    created  REAL NOT NULL,
    updated  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS checkouts_lane ON checkouts (lane, state);
CREATE TABLE IF NOT EXISTS deductions (
    event_key  TEXT PRIMARY KEY,
    tx_id      TEXT NOT NULL REFERENCES checkouts (tx_id),
    points     INTEGER NOT NULL CHECK (points > 0),
    money      INTEGER NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('sending', 'confirmed', 'failed', 'unknown', 'refunded')),
    created    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deductions_tx ON deductions (tx_id);
CREATE TABLE IF NOT EXISTS burns (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_id       TEXT NOT NULL REFERENCES checkouts (tx_id),
    code        TEXT NOT NULL,
    benefit_id  TEXT,
    state       TEXT NOT NULL CHECK (state IN ('sending', 'burned', 'failed', 'unknown')),
    pending     INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS burns_tx ON burns (tx_id);
CREATE TABLE IF NOT EXISTS member_cache (
    ident_hash  TEXT PRIMARY KEY,   -- sha256 of the scanned identifier: the card text is not kept
    member_id   TEXT NOT NULL,      -- the WLL id: no name, no e-mail, nothing else
    expires     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS member_cache_expires ON member_cache (expires);  -- its pruning, on every look-up
"""

# Columns added after the first release: (table, column, definition).
MIGRATIONS = (
    ("deductions", "pending", "INTEGER NOT NULL DEFAULT 0"),
    # 1 once tender (or complete) found the deduction applied and the member's balance covering it.
    ("deductions", "final", "INTEGER NOT NULL DEFAULT 0"),
)
MEMBER_CACHE_ROWS = 50_000
# A completed or voided checkout is kept this long (a POS's late retry, a look-up), then pruned with its
# spends and burns, once none of them is still being sent or looked up: the table does not grow forever.
KEEP_FINISHED_CHECKOUTS = 30 * 86400.0


@dataclass
class Member:
    id: str  # WLL UUID (or, offline, the identifier the engine accepts as an event subject)
    auth_identifier: str | None
    masked: str  # for slips, logs and the event stream
    offline: bool = False  # attached while the engine was down: earns through the outbox, spends nothing
    # Offline, from a code keyed by hand and not looked up in the last 14 days: it may be a typo naming
    # someone else (account numbers have no check digit), so no points figure is promised; the sale
    # earns only if the engine, once back, takes the code as a member's.
    unverified: bool = False


@dataclass
class AppliedVoucher:
    code: str
    benefit_id: str | None
    name: str
    discounts: list[dict[str, Any]]
    burned: bool

    def to_api(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "benefitId": self.benefit_id,
            "name": self.name,
            "discounts": self.discounts,
            "burned": self.burned,
        }


@dataclass
class Checkout:
    tx_id: str
    lane: int
    cashier_id: str | None = None
    state: str = "open"
    member: Member | None = None
    vouchers: list[AppliedVoucher] = field(default_factory=list)
    total: int | None = None
    created: float = field(default_factory=time.time)
    # The member's points balance as read when the card was attached (None offline): with the points
    # spent and earned on this sale it gives the sale summary's new balance.
    balance: float | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("state")
        return json.dumps(data)

    @classmethod
    def from_row(cls, tx_id: str, lane: int, state: str, data: str) -> Checkout:
        d = json.loads(data)
        member = Member(**d.pop("member")) if d.get("member") else None
        d.pop("member", None)
        vouchers = [AppliedVoucher(**v) for v in d.pop("vouchers", [])]
        d.pop("tx_id", None)
        d.pop("lane", None)
        return cls(tx_id=tx_id, lane=lane, state=state, member=member, vouchers=vouchers, **d)


@dataclass(frozen=True)
class Deduction:
    event_key: str
    tx_id: str
    points: int
    money: int
    state: str
    pending: bool = False
    created: float = 0.0
    final: bool = False  # tender found it applied and covered: the sale's points are final


@dataclass(frozen=True)
class Burn:
    id: int
    tx_id: str
    code: str
    benefit_id: str | None
    state: str
    pending: bool
    created: float

    @property
    def awaiting_verdict(self) -> bool:
        """Its outcome is still being looked up: unknown and pending, or interrupted while sending.

        Unknown and not pending is a look-up that gave up: the burn cannot be verified.
        """
        return self.state == "sending" or (self.state == "unknown" and self.pending)


def ident_hash(ident: str) -> str:
    return hashlib.sha256(ident.encode("utf-8")).hexdigest()


_DEDUCTION = "SELECT event_key, tx_id, points, money, state, pending, created, final FROM deductions"
_BURN = "SELECT id, tx_id, code, benefit_id, state, pending, created FROM burns"


def _deduction(r: Any) -> Deduction:
    return Deduction(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], bool(r[7]))


def _burn(r: Any) -> Burn:
    return Burn(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6])


class CheckoutStore:
    def __init__(self, outbox: OutboxStore) -> None:
        self.outbox = outbox
        with outbox.transaction() as tx:
            tx.executescript_inside(SCHEMA)
            for table, column, definition in MIGRATIONS:
                columns = {r[1] for r in tx.execute(f"PRAGMA table_info({table})").fetchall()}
                if column not in columns:
                    tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def transaction(self) -> AbstractContextManager[Tx]:
        return self.outbox.transaction()

    # -- checkouts -------------------------------------------------------------------

    def get(self, tx_id: str) -> Checkout | None:
        found = self.outbox.query("SELECT tx_id, lane, state, data FROM checkouts WHERE tx_id=?", (tx_id,))
        return Checkout.from_row(*found[0]) if found else None

    def insert(self, tx: Tx, checkout: Checkout) -> None:
        now = time.time()
        tx.execute(
            "INSERT INTO checkouts (tx_id, lane, state, data, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
            (checkout.tx_id, checkout.lane, checkout.state, checkout.to_json(), now, now),
        )

    def save(self, tx: Tx, checkout: Checkout) -> None:
        tx.execute(
            "UPDATE checkouts SET state=?, data=?, updated=? WHERE tx_id=?",
            (checkout.state, checkout.to_json(), time.time(), checkout.tx_id),
        )

    def commit(self, checkout: Checkout) -> None:
        """Save one checkout in a transaction of its own."""
        with self.transaction() as tx:
            self.save(tx, checkout)

    # -- deductions ------------------------------------------------------------------

    def add_deduction(self, tx: Tx, d: Deduction) -> None:
        tx.execute(
            "INSERT INTO deductions (event_key, tx_id, points, money, state, pending, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (d.event_key, d.tx_id, d.points, d.money, d.state, int(d.pending), d.created or time.time()),
        )

    def begin_deduction(self, d: Deduction) -> None:
        """The intent, durable before the engine hears of it."""
        with self.transaction() as tx:
            self.add_deduction(tx, d)

    def set_deduction(self, tx: Tx, event_key: str, state: str, *, pending: bool = False) -> None:
        tx.execute("UPDATE deductions SET state=?, pending=? WHERE event_key=?", (state, int(pending), event_key))

    def settle_deduction(self, event_key: str, state: str, *, pending: bool = False) -> None:
        with self.transaction() as tx:
            self.set_deduction(tx, event_key, state, pending=pending)

    def finalize_deduction(self, event_key: str) -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE deductions SET final=1 WHERE event_key=?", (event_key,))

    def deduction(self, event_key: str) -> Deduction | None:
        rows = self.outbox.query(_DEDUCTION + " WHERE event_key=?", (event_key,))
        return _deduction(rows[0]) if rows else None

    def deductions(self, tx_id: str, state: str | None = None) -> list[Deduction]:
        sql = _DEDUCTION + " WHERE tx_id=?"
        args: tuple[Any, ...] = (tx_id,)
        if state:
            sql += " AND state=?"
            args += (state,)
        return [_deduction(r) for r in self.outbox.query(sql + " ORDER BY created", args)]

    def interrupted_deductions(self) -> list[Deduction]:
        """Deductions a crash left in 'sending': their outcome is unknown."""
        return [_deduction(r) for r in self.outbox.query(_DEDUCTION + " WHERE state='sending'")]

    def pending_deductions(self) -> list[Deduction]:
        """Unknown outcomes the till was told are pending: the settler owes it a verdict."""
        return [_deduction(r) for r in self.outbox.query(_DEDUCTION + " WHERE state='unknown' AND pending=1")]

    # -- voucher burns ---------------------------------------------------------------

    def begin_burn(self, tx_id: str, code: str, benefit_id: str | None) -> int:
        with self.transaction() as tx:
            cur = tx.execute(
                "INSERT INTO burns (tx_id, code, benefit_id, state, pending, created)"
                " VALUES (?, ?, ?, 'sending', 0, ?)",
                (tx_id, code, benefit_id, time.time()),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def settle_burn(self, burn_id: int, state: str, *, pending: bool = False, checkout: Checkout | None = None) -> None:
        """The burn's outcome, and with it (same transaction) the checkout that now carries the voucher."""
        with self.transaction() as tx:
            tx.execute("UPDATE burns SET state=?, pending=? WHERE id=?", (state, int(pending), burn_id))
            if checkout is not None:
                self.save(tx, checkout)

    def burns(self, tx_id: str) -> list[Burn]:
        return [_burn(r) for r in self.outbox.query(_BURN + " WHERE tx_id=? ORDER BY id", (tx_id,))]

    def pending_burns(self) -> list[Burn]:
        return [_burn(r) for r in self.outbox.query(_BURN + " WHERE state='unknown' AND pending=1 ORDER BY id")]

    def interrupted_burns(self) -> list[Burn]:
        return [_burn(r) for r in self.outbox.query(_BURN + " WHERE state='sending' ORDER BY id")]

    # -- the offline member cache -----------------------------------------------------

    def remember_member(self, ident: str, member_id: str, ttl: float) -> None:
        now = time.time()
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO member_cache (ident_hash, member_id, expires) VALUES (?, ?, ?)"
                " ON CONFLICT (ident_hash) DO UPDATE SET member_id=excluded.member_id, expires=excluded.expires",
                (ident_hash(ident), member_id, now + ttl),
            )
            tx.execute("DELETE FROM member_cache WHERE expires < ?", (now,))
            tx.execute(
                "DELETE FROM member_cache WHERE ident_hash IN (SELECT ident_hash FROM member_cache"
                " ORDER BY expires DESC LIMIT -1 OFFSET ?)",
                (MEMBER_CACHE_ROWS,),
            )

    def recall_member(self, ident: str) -> str | None:
        rows = self.outbox.query(
            "SELECT member_id FROM member_cache WHERE ident_hash=? AND expires >= ?", (ident_hash(ident), time.time())
        )
        return str(rows[0][0]) if rows else None

    def prune_finished(self, now: float | None = None) -> int:
        """Drop checkouts finished before ``KEEP_FINISHED_CHECKOUTS`` with nothing unsettled; how many went."""
        cutoff = (time.time() if now is None else now) - KEEP_FINISHED_CHECKOUTS
        with self.transaction() as tx:
            old = [
                r[0]
                for r in tx.execute(
                    "SELECT tx_id FROM checkouts WHERE state != 'open' AND updated < ?"
                    " AND tx_id NOT IN (SELECT tx_id FROM deductions WHERE state IN ('sending', 'unknown'))"
                    " AND tx_id NOT IN (SELECT tx_id FROM burns WHERE state IN ('sending', 'unknown'))"
                    " LIMIT 5000",
                    (cutoff,),
                )
            ]
            for table in ("deductions", "burns", "checkouts"):
                tx.execute(f"DELETE FROM {table} WHERE tx_id IN (SELECT value FROM json_each(?))", (json.dumps(old),))
        return len(old)

    def open_checkouts(self) -> Iterator[tuple[int, str]]:
        for row in self.outbox.query("SELECT lane, tx_id FROM checkouts WHERE state='open' ORDER BY created"):
            yield row[0], row[1]
