"""Checkouts and their points deductions, kept in the outbox's database.

A deduction is money: its row is written *before* the engine is asked, and its
state moves sending → confirmed | failed | unknown → refunded.  Writes that
change a deduction and queue an outbox row happen in one transaction, so a
crash between them cannot leave points taken with no refund queued.
"""

from __future__ import annotations

import json
import time
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
"""


@dataclass
class Member:
    id: str  # WLL UUID
    auth_identifier: str | None
    masked: str  # for slips, logs and the event stream


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


class CheckoutStore:
    def __init__(self, outbox: OutboxStore) -> None:
        self.outbox = outbox
        with outbox.transaction() as tx:
            tx.executescript_inside(SCHEMA)

    def transaction(self) -> AbstractContextManager[Tx]:
        return self.outbox.transaction()

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

    def add_deduction(self, tx: Tx, d: Deduction) -> None:
        tx.execute(
            "INSERT INTO deductions (event_key, tx_id, points, money, state, created) VALUES (?, ?, ?, ?, ?, ?)",
            (d.event_key, d.tx_id, d.points, d.money, d.state, time.time()),
        )

    def set_deduction(self, tx: Tx, event_key: str, state: str) -> None:
        tx.execute("UPDATE deductions SET state=? WHERE event_key=?", (state, event_key))

    def deductions(self, tx_id: str, state: str | None = None) -> list[Deduction]:
        sql = "SELECT event_key, tx_id, points, money, state FROM deductions WHERE tx_id=?"
        args: tuple[Any, ...] = (tx_id,)
        if state:
            sql += " AND state=?"
            args += (state,)
        return [Deduction(*r) for r in self.outbox.query(sql + " ORDER BY created", args)]

    def interrupted_deductions(self) -> list[Deduction]:
        """Deductions a crash left in 'sending': their outcome is unknown."""
        rows = self.outbox.query("SELECT event_key, tx_id, points, money, state FROM deductions WHERE state='sending'")
        return [Deduction(*r) for r in rows]
