"""The intent machine: every engine write that moves money is written down before the engine may hear of it.

Three kinds of write share one vocabulary, ``Outcome`` (``tillplug.engine.outcome``): the
write **landed**, it did **not_land**, or it is **unknown**.  A points deduction (table
``deductions``) and a voucher burn (table ``burns``) are *intents* and share this machine;
an outbox row (earnings, refunds: ``tillplug.outbox``) has its own life of sends and
retries but decides after a look-up by the same words and the same in-flight rule.

An intent's ``state`` column holds one of ``State``:

    sending ──► landed ──► refunded       (a deduction given back: its refund queued in the outbox)
       ├──────► not_landed
       └──────► unknown ──settle──► landed | not_landed | refunded (landed on a sale closed meanwhile)
                                └─► unverifiable   (a burn the engine can never tell of: a supervisor decides)

``owed`` (a column) is 1 while the till, told the outcome is being looked up, is owed a verdict
on the event stream.  An unknown deduction that is not owed was cut off by a crash: the till
heard nothing, and the outbox's refund-if-it-landed settles it (``requires_key``).

The rules, once for every kind:

* ``IntentTable.begin`` commits the intent (fsync) before the engine may be called; a write
  that changes an intent and queues an outbox row does both in one transaction.
* ``settle`` (``tillplug.flows.settle``, beside the checkouts and the flows' context it needs) is
  the one skeleton for an unknown outcome: the kind looks the intent up
  (``Kind.look_up`` → a ``Finding``); "nothing found" is believed only once the write can no
  longer be in flight (``InFlight``); then, under the checkout's lock and only if the intent
  is still owed, the kind acts on what was found — did not land, landed on the open sale,
  landed on a sale closed meanwhile, or cannot be told — and the till hears the verdict.
* ``Settler`` runs ``settle`` over every owed intent of every kind, and at start-up hands each
  intent a crash left ``sending`` to its kind (``Kind.interrupted``).

A new kind (a return's refund, the relay) needs a table with ``state``, ``owed`` and
``created`` columns (``IntentTable``) and a ``Kind``: its look-up and its four actions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from tillplug.engine.outcome import Outcome, write_outcome
from tillplug.outbox.store import OutboxStore, Tx

log = logging.getLogger(__name__)


class State(StrEnum):
    """Where an intent is; stored as written in the ``state`` column."""

    SENDING = "sending"  # written down; the engine may be hearing of it now
    LANDED = "landed"  # the engine has it
    NOT_LANDED = "not_landed"  # the engine has not, and this write never will reach it
    UNKNOWN = "unknown"  # nobody can tell yet: settled by look-up
    REFUNDED = "refunded"  # a deduction given back: its refund is queued in the outbox
    UNVERIFIABLE = "unverifiable"  # a burn the engine can never tell of: held for a supervisor


# What each state was called before the one vocabulary (state directories written by 0.x).
OLD_STATES = {"confirmed": State.LANDED, "burned": State.LANDED, "failed": State.NOT_LANDED}
# Intents whose outcome is still open: their checkout is never pruned.
OPEN_STATES = (State.SENDING, State.UNKNOWN)


class Intent(Protocol):
    """What the machine reads of any intent (``Deduction``, ``Burn``)."""

    @property
    def tx_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def owed(self) -> bool: ...
    @property
    def created(self) -> float: ...


IntentT = TypeVar("IntentT", bound=Intent)


@dataclass(frozen=True)
class Finding:
    """What a look-up of one intent shows.

    ``absent`` (with not_landed): only because nothing carrying the write was found — believed
    once the write can no longer be in flight.  (A burn found used before our intent did not land
    either, but no late request can change that.)  ``evidence``: what was read (a benefit).
    """

    outcome: Outcome
    absent: bool = False
    evidence: Any = None


class IntentTable(Generic[IntentT]):
    """One table of intents: its key column, ``state``, ``owed``, ``created`` and its kind's own columns."""

    def __init__(self, store: OutboxStore, table: str, key: str, columns: str, row_type: type[IntentT]) -> None:
        self.store, self.table, self.key, self.row_type = store, table, key, row_type
        self._select = f"SELECT {columns} FROM {table}"
        self._row: Callable[[Any], IntentT] = row_type.from_sql  # type: ignore[attr-defined]

    def begin(self, tx: Tx | None = None, **values: Any) -> Any:
        """Write the intent down in ``sending``, before the engine may hear of it; its key."""
        values = {"state": State.SENDING.value, "owed": 0, "created": time.time()} | values
        sql = f"INSERT INTO {self.table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})"
        if tx is not None:
            cur = tx.execute(sql, tuple(values.values()))
        else:
            with self.store.transaction() as own:
                cur = own.execute(sql, tuple(values.values()))
        return values.get(self.key, cur.lastrowid)

    def set(self, tx: Tx, key: Any, state: State, *, owed: bool = False) -> None:
        """Move an intent inside the caller's transaction (with the outbox row that goes with it)."""
        tx.execute(f"UPDATE {self.table} SET state=?, owed=? WHERE {self.key}=?", (State(state).value, int(owed), key))

    def settle(self, key: Any, state: State, *, owed: bool = False, also: Callable[[Tx], None] | None = None) -> None:
        """Move an intent in a transaction of its own, with ``also`` (e.g. the checkout it changes)."""
        with self.store.transaction() as tx:
            self.set(tx, key, state, owed=owed)
            if also is not None:
                also(tx)

    def get(self, key: Any) -> IntentT | None:
        rows = self.store.query(f"{self._select} WHERE {self.key}=?", (key,))
        return self._row(rows[0]) if rows else None

    def where(self, condition: str, args: tuple[Any, ...] = ()) -> list[IntentT]:
        return [self._row(r) for r in self.store.query(f"{self._select} WHERE {condition}", args)]

    def owed(self) -> list[IntentT]:
        """Unknown outcomes the till was told are being looked up: the settler owes it a verdict."""
        return self.where(f"state='unknown' AND owed=1 ORDER BY created, {self.key}")

    def interrupted(self) -> list[IntentT]:
        """Intents a crash left in ``sending``: whether the engine heard of them is unknown."""
        return self.where(f"state='sending' ORDER BY created, {self.key}")


__all__ = [
    "OLD_STATES",
    "OPEN_STATES",
    "Finding",
    "Intent",
    "IntentTable",
    "Outcome",
    "State",
    "write_outcome",
]
