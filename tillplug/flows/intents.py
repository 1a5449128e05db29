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
* ``settle`` is the one skeleton for an unknown outcome: the kind looks the intent up
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

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from tillplug.engine.outcome import Outcome, write_outcome
from tillplug.outbox.store import OutboxStore, Tx

if TYPE_CHECKING:
    from tillplug.flows.checkouts import Checkout
    from tillplug.flows.context import FlowContext

log = logging.getLogger(__name__)
SETTLE_FIRST = 0.5  # seconds before the first look-up of an unknown outcome
SETTLE_MAX = 60.0  # the longest wait between look-ups (backoff doubles up to this)


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


class Kind(Protocol[IntentT]):
    """What one kind of intent brings to the machine: its table, its look-up, what each verdict does.

    Each action runs under the checkout's lock with the intent still owed; it moves the intent
    (``table.set``/``settle``) and returns what the till is told on ``settled_event`` — or None
    to tell nothing and keep the intent owed (looked up again later).
    """

    table: IntentTable[IntentT]
    settled_event: str

    def key(self, intent: IntentT) -> Any: ...
    def flight_key(self, intent: IntentT) -> str:
        """The write's name for the in-flight rule (``EngineClient.in_flight``)."""
        ...

    async def look_up(self, intent: IntentT, checkout: Checkout) -> Finding | None:
        """What the engine shows of the write; None if it could not answer now (asked again later)."""
        ...

    async def not_landed(self, intent: IntentT, checkout: Checkout) -> dict[str, Any] | None: ...
    async def landed_open(self, intent: IntentT, checkout: Checkout, finding: Finding) -> dict[str, Any] | None: ...
    async def landed_closed(self, intent: IntentT, checkout: Checkout, finding: Finding) -> dict[str, Any] | None: ...
    async def cannot_tell(self, intent: IntentT, checkout: Checkout, finding: Finding) -> dict[str, Any] | None: ...
    def interrupted(self, intent: IntentT) -> None:
        """At start-up, synchronously: an intent a crash left ``sending``."""
        ...


async def settle(
    ctx: FlowContext, kind: Kind[IntentT], intent: IntentT, *, window: float | None = None
) -> State | None:
    """Settle one owed intent: the state it was settled into, or None if it is still owed.

    ``window``: the in-flight window (None: the client's, ``engine.in_flight_window``).
    """
    finding = await kind.look_up(intent, ctx.checkout(intent.tx_id))
    if finding is None:
        return None  # the engine could not answer now
    if finding.absent and ctx.client.in_flight.may_land(kind.flight_key(intent), window):
        return None  # not found, but it may still be on its way: asked again later, never guessed
    key = kind.key(intent)
    async with ctx.checkout_locks.hold(intent.tx_id):
        current = kind.table.get(key)
        if current is None or current.state != State.UNKNOWN or not current.owed:
            return None  # settled meanwhile
        checkout = ctx.checkout(intent.tx_id)
        if finding.outcome is Outcome.NOT_LANDED:
            told = await kind.not_landed(current, checkout)
        elif finding.outcome is Outcome.UNKNOWN:
            told = await kind.cannot_tell(current, checkout, finding)
        elif checkout.state == "open":
            told = await kind.landed_open(current, checkout, finding)
        else:
            told = await kind.landed_closed(current, checkout, finding)
        if told is None:
            return None
        after = kind.table.get(key)
        log.info("owed %s on %s settled: %s", kind.settled_event, intent.tx_id, told.get("outcome"))
        ctx.events.publish(kind.settled_event, told, lane=checkout.lane)
        return State(after.state) if after is not None else None


class Settler:
    """Every kind's owed intents settled by look-up, backing off while the engine cannot tell."""

    def __init__(
        self,
        ctx: FlowContext,
        kinds: Sequence[Kind[Any]],
        *,
        waiting: Sequence[Callable[[], Awaitable[int]]] = (),
    ) -> None:
        """``waiting``: passes over work that waits on settled writes (a return's take-back waits
        for its sale's earn); each returns how many still wait."""
        self.ctx = ctx
        self.kinds = list(kinds)
        self.waiting = list(waiting)
        self.wake = asyncio.Event()
        ctx.wake_settler = self.wake.set

    def recover(self) -> int:
        """At start-up: each intent a crash left ``sending`` goes to its kind; how many there were."""
        count = 0
        for kind in self.kinds:
            for intent in kind.table.interrupted():
                kind.interrupted(intent)
                count += 1
        return count

    def kind_of(self, intent: Intent) -> Kind[Any]:
        for kind in self.kinds:
            if isinstance(intent, kind.table.row_type):
                return kind
        raise TypeError(f"no kind settles {type(intent).__name__}")

    async def settle(self, intent: Intent, *, window: float | None = None) -> State | None:
        return await settle(self.ctx, self.kind_of(intent), intent, window=window)

    async def settle_owed(self) -> int:
        """One pass over every owed intent; how many are still owed."""
        left = 0
        for kind in self.kinds:
            for intent in await asyncio.to_thread(kind.table.owed):
                left += await settle(self.ctx, kind, intent) is None
        for waiting in self.waiting:
            left += await waiting()
        return left

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: settle what is owed, backing off while the engine cannot tell."""
        delay = SETTLE_FIRST
        while not stop.is_set():
            self.wake.clear()
            try:
                left = await self.settle_owed()
            except Exception:  # the settler must outlive any single bug
                log.exception("settling owed outcomes failed; trying again")
                left = 1
            delay = min(SETTLE_MAX, delay * 2) if left else SETTLE_FIRST
            wait = delay if left else SETTLE_MAX
            waiters = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w
            if self.wake.is_set():
                await asyncio.sleep(SETTLE_FIRST)  # a fresh unknown: give the engine a moment first
                delay = SETTLE_FIRST


__all__ = [
    "OLD_STATES",
    "OPEN_STATES",
    "Finding",
    "Intent",
    "IntentTable",
    "Kind",
    "Outcome",
    "Settler",
    "State",
    "settle",
    "write_outcome",
]
