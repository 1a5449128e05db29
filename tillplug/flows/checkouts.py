"""Checkouts and their money intents, kept in the outbox's database.

Every engine write that moves points or burns a voucher has an *intent* row,
committed before the engine hears of it: a deduction (points) or a burn (a
voucher).  Both follow the one intent machine of ``tillplug.flows.intents``
(states ``sending``, ``landed``, ``not_landed``, ``unknown``, ``refunded`` for a
deduction given back, ``unverifiable`` for a burn no look-up can tell of; ``owed``
while the till awaits a verdict).  A state directory written before that
vocabulary is migrated when the store opens (``migrate_intents``).

The methods that commit are synchronous (SQLite with fsync); the flows call them
through ``asyncio.to_thread`` so a commit never stalls the event loop.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tillplug.flows.intents import OPEN_STATES, IntentTable, State
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
    state      TEXT NOT NULL CHECK (state IN ('sending', 'landed', 'not_landed', 'unknown', 'refunded')),
    owed       INTEGER NOT NULL DEFAULT 0,
    created    REAL NOT NULL,
    final      INTEGER NOT NULL DEFAULT 0  -- 1 once tender (or complete) found it applied and covered
);
CREATE INDEX IF NOT EXISTS deductions_tx ON deductions (tx_id);
CREATE TABLE IF NOT EXISTS burns (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_id       TEXT NOT NULL REFERENCES checkouts (tx_id),
    code        TEXT NOT NULL,
    benefit_id  TEXT,
    state       TEXT NOT NULL CHECK (state IN ('sending', 'landed', 'not_landed', 'unknown', 'unverifiable')),
    owed        INTEGER NOT NULL DEFAULT 0,
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

# Columns added after the first release to tables written before the intent machine: (table, column, definition).
OLD_COLUMNS = (
    ("deductions", "pending", "INTEGER NOT NULL DEFAULT 0"),
    ("deductions", "final", "INTEGER NOT NULL DEFAULT 0"),
)
MEMBER_CACHE_ROWS = 50_000
MEMBER_CACHE_CAP_EVERY = 500  # commits between two trims to MEMBER_CACHE_ROWS (past it by 500 cards at most)
# A completed or voided checkout is kept this long (a POS's late retry, a look-up), then pruned with its
# spends and burns, once none of them is still being sent or looked up: the table does not grow forever.
KEEP_FINISHED_CHECKOUTS = 30 * 86400.0


CheckoutState = Literal["open", "completed", "voided"]  # the checkouts table's CHECK, for the type checker


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
    discounts: list[dict[str, Any]]  # as the engine's reward lists them (``flows.answers.Discount``)
    burned: bool


@dataclass
class Checkout:
    tx_id: str
    lane: int
    cashier_id: str | None = None
    state: CheckoutState = "open"
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
    def from_row(cls, tx_id: str, lane: int, state: CheckoutState, data: str) -> Checkout:
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
    state: str  # a tillplug.flows.intents.State
    owed: bool = False  # the till awaits a verdict (points_settled)
    created: float = 0.0
    final: bool = False  # tender found it applied and covered: the sale's points are final

    @classmethod
    def from_sql(cls, r: Any) -> Deduction:
        return cls(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], bool(r[7]))


@dataclass(frozen=True)
class Burn:
    id: int
    tx_id: str
    code: str
    benefit_id: str | None
    state: str  # a tillplug.flows.intents.State
    owed: bool  # the till awaits a verdict (voucher_settled)
    created: float

    @classmethod
    def from_sql(cls, r: Any) -> Burn:
        return cls(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6])

    @property
    def awaiting_verdict(self) -> bool:
        """Its outcome is still being looked up (unknown, or interrupted while sending)."""
        return self.state in OPEN_STATES


def ident_hash(ident: str) -> str:
    return hashlib.sha256(ident.encode("utf-8")).hexdigest()


def migrate_intents(tx: Tx) -> None:
    """Tables written before the intent machine: old state words and ``pending`` become the new ones.

    ``confirmed``/``burned`` → landed, ``failed`` → not_landed, ``pending`` → ``owed``; a burn
    left unknown and not pending (its look-up had given up) → unverifiable.  SQLite cannot change
    a CHECK constraint in place, so each table is copied into its new form; one transaction.
    """
    for table, column, definition in OLD_COLUMNS:
        columns = {r[1] for r in tx.execute(f"PRAGMA table_info({table})").fetchall()}
        if "owed" not in columns and column not in columns:
            tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    renamed = "CASE state WHEN 'confirmed' THEN 'landed' WHEN 'burned' THEN 'landed' WHEN 'failed' THEN 'not_landed'"
    copies = {
        "deductions": "INSERT INTO deductions (event_key, tx_id, points, money, state, owed, created, final)"
        f" SELECT event_key, tx_id, points, money, {renamed} ELSE state END, pending, created, final FROM old",
        "burns": "INSERT INTO burns (id, tx_id, code, benefit_id, state, owed, created)"
        f" SELECT id, tx_id, code, benefit_id, {renamed}"
        " WHEN 'unknown' THEN (CASE pending WHEN 1 THEN 'unknown' ELSE 'unverifiable' END) ELSE state END,"
        " pending, created FROM old",
    }
    for table, copy in copies.items():
        if "owed" in {r[1] for r in tx.execute(f"PRAGMA table_info({table})").fetchall()}:
            continue
        tx.execute(f"ALTER TABLE {table} RENAME TO old")
        tx.execute(f"DROP INDEX IF EXISTS {table}_tx")
        tx.executescript_inside(_table_in(SCHEMA, table))
        tx.execute(copy.replace(" FROM old", " FROM old ORDER BY rowid"))
        tx.execute("DROP TABLE old")


def _table_in(schema: str, table: str) -> str:
    """The CREATE TABLE and CREATE INDEX statements of ``table`` in ``schema``."""
    return ";".join(s for s in schema.split(";") if f" {table} (" in s or f" ON {table} (" in s)


class CheckoutStore:
    def __init__(self, outbox: OutboxStore) -> None:
        self.outbox = outbox
        self._commits_to_cap = 0  # the first commit trims: a cache grown past the cap before a restart
        with outbox.transaction() as tx:
            tx.executescript_inside(SCHEMA)
            migrate_intents(tx)
        columns = "event_key, tx_id, points, money, state, owed, created, final"
        self.deduction_intents = IntentTable(outbox, "deductions", "event_key", columns, Deduction)
        self.burn_intents = IntentTable(
            outbox, "burns", "id", "id, tx_id, code, benefit_id, state, owed, created", Burn
        )

    def transaction(self, *, fsync: bool = True) -> AbstractContextManager[Tx]:
        return self.outbox.transaction(fsync=fsync)

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

    # -- deductions and burns (their machine: tillplug.flows.intents) -------------------

    def add_deduction(self, tx: Tx, d: Deduction) -> None:
        """Write a deduction down as it is, inside the caller's transaction."""
        self.deduction_intents.begin(
            tx,
            event_key=d.event_key,
            tx_id=d.tx_id,
            points=d.points,
            money=d.money,
            state=State(d.state).value,
            owed=int(d.owed),
            created=d.created or time.time(),
        )

    def begin_deduction(self, d: Deduction) -> None:
        """The intent, durable before the engine hears of it."""
        with self.transaction() as tx:
            self.add_deduction(tx, d)

    def finalize_deduction(self, event_key: str) -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE deductions SET final=1 WHERE event_key=?", (event_key,))

    def deduction(self, event_key: str) -> Deduction | None:
        return self.deduction_intents.get(event_key)

    def deductions(self, tx_id: str, state: str | None = None) -> list[Deduction]:
        if state is None:
            return self.deduction_intents.where("tx_id=? ORDER BY created", (tx_id,))
        return self.deduction_intents.where("tx_id=? AND state=? ORDER BY created", (tx_id, State(state).value))

    def begin_burn(self, tx_id: str, code: str, benefit_id: str | None, created: float) -> int:
        """The burn's intent, stamped ``created`` (wall time, taken with the flow's steady moment)."""
        burn_id: int = self.burn_intents.begin(tx_id=tx_id, code=code, benefit_id=benefit_id, created=created)
        return burn_id

    def settle_burn(self, burn_id: int, state: State, *, owed: bool = False, checkout: Checkout | None = None) -> None:
        """The burn's outcome, and with it (same transaction) the checkout that now carries the voucher."""
        also = None if checkout is None else (lambda tx: self.save(tx, checkout))
        self.burn_intents.settle(burn_id, state, owed=owed, also=also)

    def burns(self, tx_id: str) -> list[Burn]:
        return self.burn_intents.where("tx_id=? ORDER BY id", (tx_id,))

    def codes_awaiting_verdict(self, tx_id: str) -> list[str]:
        """The sale's codes whose burn is still being looked up, each once (a code tried twice is one voucher)."""
        return list(dict.fromkeys(b.code for b in self.burns(tx_id) if b.awaiting_verdict))

    # -- the offline member cache -----------------------------------------------------

    def remember_member(self, ident: str, member_id: str, ttl: float) -> None:
        self.remember_members({ident: member_id}, ttl)

    def remember_members(self, members: Mapping[str, str], ttl: float) -> None:
        """Cards seen (ident → WLL id), kept ``ttl`` seconds for offline attach: one commit for them all."""
        now = time.time()
        # A cache: lost to a power cut it costs a look-up, so its commit is not flushed by itself (a
        # look-up's fsync cost more than the slip's own commit).  The cap is kept every so many commits:
        # finding the rows past it walks the whole cache (a millisecond at 20,000 cards).
        with self.transaction(fsync=False) as tx:
            self._commits_to_cap -= 1  # under the store's lock: look-ups commit from worker threads
            for ident, member_id in members.items():
                tx.execute(
                    "INSERT INTO member_cache (ident_hash, member_id, expires) VALUES (?, ?, ?)"
                    " ON CONFLICT (ident_hash) DO UPDATE SET member_id=excluded.member_id, expires=excluded.expires",
                    (ident_hash(ident), member_id, now + ttl),
                )
            tx.execute("DELETE FROM member_cache WHERE expires < ?", (now,))
            if self._commits_to_cap <= 0:
                self._commits_to_cap = MEMBER_CACHE_CAP_EVERY
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
                    " AND tx_id NOT IN (SELECT tx_id FROM deductions WHERE state IN (?, ?))"
                    " AND tx_id NOT IN (SELECT tx_id FROM burns WHERE state IN (?, ?))"
                    " LIMIT 5000",
                    (cutoff, *OPEN_STATES, *OPEN_STATES),
                )
            ]
            for table in ("deductions", "burns", "checkouts"):
                tx.execute(f"DELETE FROM {table} WHERE tx_id IN (SELECT value FROM json_each(?))", (json.dumps(old),))
        return len(old)

    def open_checkouts(self) -> Iterator[tuple[int, str]]:
        for row in self.outbox.query("SELECT lane, tx_id FROM checkouts WHERE state='open' ORDER BY created"):
            yield row[0], row[1]
