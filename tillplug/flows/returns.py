"""Returns after the sale: the earned points taken back, the spent points given back, exactly once.

``POST /v1/returns`` names a completed sale by its transaction id.  The sale is read from this
till's checkouts table: without the relay, a return works only at the till that made the sale.
With the chain's relay (``engine.relay_url``) every return is registered at the relay first, which
counts the returns of a sale across the chain's tills; a sale made at another till is read from
what the chain reported for it (``ChainSale``: its member's id and amounts) and returned the same
way, its points moves through this till's outbox (docs/relay.md, "Returns at any till").

The rules, all here:

* The returns of one sale never exceed it: the amounts returned add up to at most the sale's
  total before the points discount (the goods' value), and, when lines are given, each SKU's
  quantity and amount to at most what was sold.  Beyond that the return is refused
  (``return_exceeds_sale``) and nothing changes.
* The same ``returnId`` answers the first answer again; with another request, ``return_id_reused``.
* Earned points (read from the engine's reactions to the sale's earning write, never recomputed
  from the till's config) are taken back in proportion to the amount returned over the amount
  paid; spent points (the sale's confirmed deductions) given back in proportion to the amount
  returned over the sale's total before the points discount.  Each share is cumulative and
  floored (``share``), so the returns of one sale never add up to more than the original, and
  a whole return moves exactly the original.  Policies: ``returns.take_back`` / ``give_back``.
* A take-back never drives the balance below zero unless ``returns.allow_negative_balance``;
  what could not be taken back is reported (``notTakenBack``) and not asked for again.
* The return's row and its outbox rows (the give-back first, then the take-back, in the sale's
  stream, behind its earning write) commit in one transaction: a crash leaves all or nothing.
* A return whose original earn is still in the outbox (or whose reactions the engine does not
  show yet, or while the engine is away) gives back at once and *waits* for the take-back; the
  settler (``settle_waiting``) queues it once the earn's reactions are read, in the order the
  returns came, and tells the till (``return_settled``).
* The slip says "taken back" only once the take-back's reactions show it.

The seam with the intents machinery: ``_commit`` and ``_commit_take_back`` are the only writes; each
queues its rows with ``OutboxStore.enqueue`` inside the return's own transaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from tillplug.engine.models import points_of
from tillplug.engine.reactors import LISTED_REACTIONS
from tillplug.errors import (
    CheckoutConflict,
    CheckoutNotFound,
    EngineAuthError,
    EngineProtocolError,
    RetryableError,
    ReturnExceedsSale,
    ReturnIdReused,
    SaleNotReported,
    TillplugError,
)
from tillplug.flows.checkouts import Checkout, Deduction, Member
from tillplug.flows.context import FlowContext
from tillplug.flows.intents import State
from tillplug.flows.locks import KeyedLocks
from tillplug.flows.points import Shown
from tillplug.flows.returned import (
    ChainSale,
    Policy,
    ReturnedLine,
    ReturnRequest,
    moved_before,
    past_the_sale,
    share,
)
from tillplug.logs import mask
from tillplug.outbox.store import Row
from tillplug.receipts import templates

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS returns (
    return_id        TEXT PRIMARY KEY,
    tx_id            TEXT NOT NULL,
    lane             INTEGER NOT NULL,
    fingerprint      TEXT NOT NULL,
    amount           INTEGER NOT NULL CHECK (amount > 0),
    lines            TEXT NOT NULL,
    give_back        INTEGER NOT NULL DEFAULT 0,
    give_back_key    TEXT,
    take_back_state  TEXT NOT NULL CHECK (take_back_state IN ('none', 'waiting', 'done', 'unverifiable')),
    earned           INTEGER,
    take_back_due    INTEGER NOT NULL DEFAULT 0,
    take_back        INTEGER NOT NULL DEFAULT 0,
    take_back_key    TEXT,
    reason           TEXT,
    answer           TEXT,
    created          REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS returns_tx ON returns (tx_id);
"""
# A delivered earn whose reactions show no points yet is believed to earn nothing after this long:
# reactions take "almost instant to a few seconds" (engine-api.md §5.6).
EARN_REACTIONS_WITHIN = 60.0
FIRST_CONFIRM_READ = 0.1  # seconds; doubled up to MAX_CONFIRM_GAP between reads
MAX_CONFIRM_GAP = 1.0
NOT_IN_CHAIN = "There is no completed sale {tx!r} on this till, and the chain's relay knows none either: {why}"
NO_RELAY = (
    "There is no completed sale {tx!r} on this till. Without the relay a return is taken only at the till "
    "that made the sale, within 30 days."
)


class Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class TakeBack(Answer):
    # none: nothing to take back; waiting: for the sale's earn (the settler queues it, return_settled);
    # queued: sent through the outbox, not yet shown applied; applied: the engine's reactions show it;
    # unverifiable: the sale's earned points cannot be read (reason).
    state: Literal["none", "waiting", "queued", "applied", "unverifiable"]
    policy: Policy
    due: int = 0  # what the policy asks of this return
    points: int = 0  # queued (or applied)
    notTakenBack: int = 0  # due, but it would have taken the balance below zero
    reason: str | None = None


class GiveBack(Answer):
    state: Literal["none", "queued", "applied"]
    policy: Policy
    points: int = 0


class ReturnAnswer(Answer):
    """What ``POST /v1/returns`` answers (and answers again for the same returnId)."""

    returnId: str
    transactionId: str
    lane: int
    amount: int
    currency: str
    returnedSoFar: int  # the sale's returns so far, this one included (minor units)
    returnable: int  # what may still be returned of the sale
    pointsEarned: int | None  # on the sale, as the engine's reactions showed (None: not read yet)
    pointsSpent: int  # on the sale
    takeBack: TakeBack
    giveBack: GiveBack
    balanceAfter: int | None = None  # the member's balance, once read
    balanceEstimated: bool = False  # not every point move shown applied yet: the balance counts them
    member: str | None = None  # masked

    def event(self) -> dict[str, Any]:
        """The ``return`` event's payload: no member, not even masked."""
        return self.model_dump(exclude={"member"})


# -- the durable record ----------------------------------------------------------------


@dataclass(frozen=True)
class ReturnRecord:
    return_id: str
    tx_id: str
    lane: int
    fingerprint: str
    amount: int
    lines: tuple[ReturnedLine, ...]
    give_back: int
    give_back_key: str | None
    take_back_state: str
    earned: int | None
    take_back_due: int
    take_back: int
    take_back_key: str | None
    reason: str | None
    answer: str | None
    created: float


_RECORD = (
    "SELECT return_id, tx_id, lane, fingerprint, amount, lines, give_back, give_back_key, take_back_state, earned,"
    " take_back_due, take_back, take_back_key, reason, answer, created FROM returns"
)


def _record(r: Any) -> ReturnRecord:
    lines = tuple(ReturnedLine(str(x[0]), float(x[1]), int(x[2])) for x in json.loads(r[5]))
    return ReturnRecord(r[0], r[1], r[2], r[3], r[4], lines, *tuple(r[6:]))


@dataclass(frozen=True)
class Earned:
    """The sale's earned points as the engine shows them: known, waiting, or unverifiable (reason)."""

    state: Literal["known", "waiting", "unverifiable"]
    points: int = 0
    reason: str | None = None
    key: str | None = None  # the earning write's eventKey


@dataclass(frozen=True)
class Sale:
    """A completed sale as a return needs it."""

    checkout: Checkout
    paid: int  # the amount paid (the total the till completed with)
    spent: int  # points spent on it (confirmed deductions)
    gross: int  # total before the points discount: paid + the money of the points spent
    basket: dict[str, tuple[float, int]]  # sku -> (quantity, amount) sold
    earn: Row | None  # the sale's earning write in the outbox
    # Relay mode: what the chain reported for the sale, the returns of every till counted; None
    # without a relay (or while it could not be asked: then this till's own returns only).
    chain: ChainSale | None = None
    # This till's sale: its landed deductions, read once with the sale (what the engine never
    # applied of them is asked from these).  Empty for a sale of another till.
    deductions: tuple[Deduction, ...] = ()

    @property
    def earn_key(self) -> str | None:
        if self.earn is not None:
            return self.earn.event_key
        return self.chain.earn.eventKey if self.chain is not None else None

    def returned_before(self, own: Sequence[ReturnRecord]) -> list[tuple[int, Sequence[ReturnedLine]]]:
        """The amount and lines of the sale's earlier returns: the chain's, or this till's ``own``.

        In relay mode, this till's own returns the relay never heard of (taken while it was away)
        come first: they were taken before the relay could count them."""
        if self.chain is not None:
            return [*self.unregistered(own), *self.chain.before()]
        return self.returned_before_own(own)

    @staticmethod
    def returned_before_own(own: Sequence[ReturnRecord]) -> list[tuple[int, Sequence[ReturnedLine]]]:
        return [(r.amount, r.lines) for r in own]

    def unregistered(self, own: Sequence[ReturnRecord]) -> list[tuple[int, Sequence[ReturnedLine]]]:
        if self.chain is None:
            return []
        known = self.chain.mine()
        return [(r.amount, r.lines) for r in own if r.return_id not in known]


@dataclass(frozen=True)
class TakeBackPlan:
    state: str
    earned: int | None = None
    due: int = 0
    points: int = 0
    reason: str | None = None


class Returns:
    def __init__(
        self, ctx: FlowContext, shown_applied: Callable[[list[Deduction]], Awaitable[Shown]] | None = None
    ) -> None:
        self.ctx = ctx
        self._shown_applied = shown_applied  # Points.shown_applied: what the engine took of a deduction
        self._answering = KeyedLocks()  # one call per returnId at a time: a retry waits, then replays
        with ctx.store.transaction() as tx:
            tx.executescript_inside(SCHEMA)
        self._any_waiting = bool(self.waiting())

    def outbox_moved(self) -> None:
        """The outbox delivered (or retried) a row: while a take-back waits, the settler looks now."""
        if self._any_waiting:
            self.ctx.wake_settler()

    # -- reads ---------------------------------------------------------------------------

    def record(self, return_id: str) -> ReturnRecord | None:
        rows = self.ctx.outbox.query(_RECORD + " WHERE return_id=?", (return_id,))
        return _record(rows[0]) if rows else None

    def records(self, tx_id: str) -> list[ReturnRecord]:
        return [_record(r) for r in self.ctx.outbox.query(_RECORD + " WHERE tx_id=? ORDER BY rowid", (tx_id,))]

    def waiting(self) -> list[ReturnRecord]:
        return [_record(r) for r in self.ctx.outbox.query(_RECORD + " WHERE take_back_state='waiting' ORDER BY rowid")]

    def _earn_row(self, tx_id: str) -> Row | None:
        """The sale's earning write (an event of the transaction type, or an order) in its stream."""
        earn_type = self.ctx.config.engine.event_types.transaction
        found = self.ctx.outbox.query(
            "SELECT event_key FROM outbox WHERE stream=? AND (kind='order' OR (json_valid(body)"
            " AND json_extract(body, '$.type')=? AND json_extract(body, '$.payload.transactionId')=?))"
            " ORDER BY id LIMIT 1",
            (tx_id, earn_type, tx_id),
        )
        return self.ctx.outbox.by_key(str(found[0][0])) if found else None

    async def _sale_of(self, tx_id: str, lane: int, chain: ChainSale | None) -> Sale:
        """The sale from this till's checkouts, or else (relay mode) from what the chain reported."""
        if await self.ctx.db(self.ctx.store.get, tx_id) is not None or chain is None:
            sale = await self.ctx.db(self._sale, tx_id)
            spent = sale.spent - await self._never_taken(sale.deductions)
            return replace(sale, spent=spent, chain=chain)
        member = Member(id=chain.member, auth_identifier=None, masked=mask(chain.member)) if chain.member else None
        checkout = Checkout(tx_id=tx_id, lane=lane, state="completed", member=member, total=chain.paid)
        return Sale(checkout, chain.paid, chain.spent, chain.gross, chain.basket_sums(), None, chain)

    async def _never_taken(self, deductions: Sequence[Deduction]) -> int:
        """Points of the sale's landed ``deductions`` the engine shows it never applied (a missing or
        conditional redemption reactor took nothing): a return gives nothing back for them, as a void
        refunds nothing for them.  Only a deduction tender did not make final is asked; one the engine cannot
        show now counts as taken (a member who may have paid is never kept from it)."""
        if self._shown_applied is None:
            return 0
        open_ = [d for d in deductions if not d.final]
        if not open_:
            return 0
        return sum(d.points for d in (await self._shown_applied(open_)).held)

    async def _chain(self, tx_id: str, return_id: str, register: ReturnRequest | None = None) -> ChainSale | None:
        """Relay mode: the sale as the chain reported it, with ``register`` first registered there (the
        chain's caps, every till's returns counted).  None without a relay, and for this till's own
        sale when the relay cannot be asked or does not know it yet: then its own returns count."""
        ctx = self.ctx
        if ctx.config.engine.relay_url is None:
            return None
        local = await ctx.db(ctx.store.get, tx_id) is not None
        try:
            if register is not None:
                lines = [{"sku": x.sku, "quantity": x.quantity, "amount": x.amount} for x in register.lines]
                body = {"returnId": return_id, "amount": register.amount, "lines": lines}
                raw = await ctx.client.relay_register_return(tx_id, body)
            else:
                raw = await ctx.client.relay_sale(tx_id, return_id)
            chain = _chain_sale(raw)
        except SaleNotReported as exc:
            if local:
                return None
            raise CheckoutNotFound(NOT_IN_CHAIN.format(tx=tx_id, why=exc.message)) from None
        except (RetryableError, EngineAuthError, EngineProtocolError) as exc:
            if local:
                log.warning("return of %s: the relay could not be asked (%s); this till's returns only", tx_id, exc)
                return None
            raise
        if chain.registered is None and local:
            return None  # taken here while the relay was away: it was counted by this till alone
        return chain

    def _sale(self, tx_id: str) -> Sale:
        ctx = self.ctx
        checkout = ctx.store.get(tx_id)
        if checkout is None:
            raise CheckoutNotFound(NO_RELAY.format(tx=tx_id))
        if checkout.state != "completed":
            raise CheckoutConflict(
                f"Sale {tx_id} is {checkout.state}, not completed: only a completed sale is returned."
            )
        confirmed = tuple(ctx.store.deductions(tx_id, State.LANDED))
        paid = checkout.total or 0
        earn = self._earn_row(tx_id)
        basket: dict[str, tuple[float, int]] = {}
        if earn is not None:
            lines = earn.body.get("lines") if earn.kind == "order" else earn.body.get("payload", {}).get("basket")
            for line in lines if isinstance(lines, list) else []:
                quantity, amount = basket.get(str(line.get("sku")), (0.0, 0))
                basket[str(line.get("sku"))] = (quantity + float(line["quantity"]), amount + int(line["amount"]))
        return Sale(
            checkout,
            paid,
            sum(d.points for d in confirmed),
            paid + sum(d.money for d in confirmed),
            basket,
            earn,
            deductions=confirmed,
        )

    # -- the till's call -------------------------------------------------------------------

    async def create(self, request: ReturnRequest) -> ReturnAnswer:
        """Take a return: check it against the sale, queue its points, answer (and print) once."""
        ctx = self.ctx
        async with self._answering.hold(request.return_id):
            found = await ctx.db(self.record, request.return_id)
            if found is not None and found.fingerprint != request.fingerprint():
                raise ReturnIdReused(
                    f"returnId {request.return_id} was used for another return (of sale {found.tx_id}); "
                    "use a new returnId for a new return."
                )
            if found is not None and found.answer is not None:
                return ReturnAnswer.model_validate_json(found.answer)
            sale = None
            if found is None:
                async with ctx.checkout_locks.hold(request.transaction_id):
                    sale = await self._take(request)
                self._any_waiting = self._any_waiting or bool(await ctx.db(self.waiting))
                ctx.wake_outbox()
            # Also after a crash between the commit and the answer: the first answer is made now.
            return await self._answer_once(request.return_id, sale)

    async def _take(self, request: ReturnRequest) -> Sale:
        ctx = self.ctx
        if ctx.config.engine.relay_url is not None and await ctx.db(ctx.store.get, request.transaction_id) is not None:
            # This till's own sale: refused on what this till knows before the relay counts the return.
            own = await ctx.db(self.records, request.transaction_id)
            self._check_caps(request, await ctx.db(self._sale, request.transaction_id), Sale.returned_before_own(own))
        chain = await self._chain(request.transaction_id, request.return_id, register=request)
        sale = await self._sale_of(request.transaction_id, request.lane, chain)
        earlier = await ctx.db(self.records, request.transaction_id)
        before = sale.returned_before(earlier)
        self._check_caps(request, sale, before)
        member = sale.checkout.member
        returned_before = sum(amount for amount, _ in before)
        returned = returned_before + request.amount
        policies = ctx.config.returns
        give = 0
        if member is not None:
            if sale.chain is not None:  # the chain's earlier returns moved their shares, whichever till took them
                already = moved_before(policies.give_back, sale.spent, returned_before, sale.gross)
            else:
                already = sum(r.give_back for r in earlier)
            give = share(policies.give_back, sale.spent, returned, sale.gross, already)
        if member is None:
            plan = TakeBackPlan("none", earned=0)
        elif sale.chain is None and any(r.take_back_state == "waiting" for r in earlier):
            plan = TakeBackPlan("waiting", reason="an earlier return of this sale is still waiting")
        else:
            plan = await self._plan_take_back(
                sale, member, earlier, returned, give, earlier, returned_before=returned_before
            )
        await ctx.db(self._commit, request, sale, give, plan)
        return sale

    def _check_caps(
        self, request: ReturnRequest, sale: Sale, before: Sequence[tuple[int, Sequence[ReturnedLine]]]
    ) -> None:
        refusal = past_the_sale(request, sale.gross, sale.basket, before, lambda m: self.ctx.money(m).format())
        if refusal is not None:
            raise ReturnExceedsSale(refusal)

    async def _plan_take_back(
        self,
        sale: Sale,
        member: Member,
        earlier: Sequence[ReturnRecord],
        returned: int,
        give: int,
        moving: Sequence[ReturnRecord],
        *,
        returned_before: int = 0,
    ) -> TakeBackPlan:
        """How many earned points this return takes back, read from the engine (or why it waits).

        ``give``: points this return gives back, not yet queued; ``moving``: returns whose queued rows
        are not delivered yet (the balance read now does not show them)."""
        cfg = self.ctx.config.returns
        if cfg.take_back == "none":
            return TakeBackPlan("none", reason="returns.take_back is none")
        earned = await self._earned(sale)
        if earned.state != "known":
            return TakeBackPlan(earned.state, reason=earned.reason)
        if sale.chain is not None:  # the chain's earlier returns were due their shares, whichever till took them
            already = moved_before(cfg.take_back, earned.points, returned_before, sale.paid)
        else:
            already = sum(r.take_back_due for r in earlier)
        due = share(cfg.take_back, earned.points, returned, sale.paid, already)
        if due == 0 or cfg.allow_negative_balance:
            return TakeBackPlan("done", earned.points, due, due, earned.reason)
        try:
            balance = (await self.ctx.client.get_wallet(member.id)).points_balance
        except (RetryableError, EngineAuthError) as exc:
            return TakeBackPlan("waiting", reason=f"the member's balance could not be read ({exc.code})")
        except TillplugError as exc:  # the engine refuses the member's wallet: nothing is taken blindly
            return TakeBackPlan("unverifiable", earned.points, due, 0, f"the member's balance was refused ({exc.code})")
        available = int(balance + self._unsent(moving) + give)
        points = max(0, min(due, available))
        reason = None if points == due else "the take-back would have taken the balance below zero"
        return TakeBackPlan("done", earned.points, due, points, reason)

    def _unsent(self, earlier: Sequence[ReturnRecord]) -> int:
        """Points this sale's earlier returns will still move (their rows not yet delivered): the balance
        read now does not show them."""
        moved = 0
        for r in earlier:
            for key, sign in ((r.give_back_key, 1), (r.take_back_key, -1)):
                row = self.ctx.outbox.by_key(key) if key else None
                if row is not None and row.state in ("pending", "sending"):
                    moved += sign * int(row.body.get("payload", {}).get("points", 0))
        return moved

    async def _earned(self, sale: Sale) -> Earned:
        """The points the engine's reactions show the sale earned."""
        row = sale.earn
        if row is None and sale.chain is not None:  # another till's sale: the relay read its reactions
            earn = sale.chain.earn
            return Earned(earn.state, earn.points, earn.reason, earn.eventKey)
        if row is None:
            return Earned("unverifiable", reason="the sale's earning write is not in this till's outbox")
        if row.state in ("pending", "sending"):
            return Earned("waiting", reason="the sale's own points are still in the outbox", key=row.event_key)
        if row.state in ("dead", "discarded"):
            return Earned("known", 0, f"the sale's earning write never reached the engine ({row.state})", row.event_key)
        if row.kind == "order":
            return Earned(
                "unverifiable",
                reason="the sale earned through Receipts orders: the engine's reactions to it cannot be read",
                key=row.event_key,
            )
        return await self._earned_by_reactions(row)

    async def _earned_by_reactions(self, row: Row) -> Earned:
        client, key = self.ctx.client, row.event_key
        try:
            engine_id = row.engine_id or (await client.look_up_event(key, row.created)).engine_id
            reactions = await client.event_reactions(engine_id) if engine_id else None
        except (RetryableError, EngineAuthError) as exc:
            return Earned("waiting", reason=f"the engine could not be asked ({exc.code})", key=key)
        except TillplugError as exc:
            return Earned("unverifiable", reason=f"the engine refused to show the sale's points ({exc.code})", key=key)
        if reactions is None:
            return Earned("unverifiable", reason="the engine's id for the sale's earn is unknown", key=key)
        if any(r.type == "POINTS" for r in reactions):
            return Earned("known", max(0, int(points_of(reactions))), key=key)
        return self._no_points_shown(row)

    def _no_points_shown(self, row: Row) -> Earned:
        """The earn's reactions list no points: not yet, none earned, or an engine that never lists them."""
        key, listed = row.event_key, self.ctx.client.dialect.reactions
        if self.ctx.outbox.clock() - row.updated < EARN_REACTIONS_WITHIN:
            return Earned("waiting", reason="the engine has not shown the sale's points yet", key=key)
        if listed not in LISTED_REACTIONS:  # no reaction listed proves nothing here
            why = f"this engine is not known to list reactions (engine-check: {listed})"
            return Earned("unverifiable", reason=why, key=key)
        return Earned("known", 0, "the engine's reactions show no points earned on the sale", key)

    # -- the writes (sync: off the loop) -----------------------------------------------------

    def _commit(self, request: ReturnRequest, sale: Sale, give: int, plan: TakeBackPlan) -> None:
        """The return, its give-back and its take-back rows: one transaction."""
        ctx = self.ctx
        member = sale.checkout.member
        lines = json.dumps([[line.sku, line.quantity, line.amount] for line in request.lines])
        try:
            with ctx.store.transaction() as tx:
                give_key = None
                if give and member is not None:
                    ids = (request.transaction_id, request.return_id)
                    give_key = self._enqueue(tx, "given", member, ids, points=give)
                tx.execute(
                    "INSERT INTO returns (return_id, tx_id, lane, fingerprint, amount, lines, give_back, give_back_key,"
                    " take_back_state, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'waiting', ?)",
                    (
                        request.return_id,
                        request.transaction_id,
                        request.lane,
                        request.fingerprint(),
                        request.amount,
                        lines,
                        give,
                        give_key,
                        time.time(),
                    ),
                )
                self._write_take_back(tx, request.return_id, request.transaction_id, member, plan, sale.earn_key)
        except sqlite3.IntegrityError:  # the same returnId, at the same moment, for another sale
            raise ReturnIdReused(f"returnId {request.return_id} was used for another return.") from None

    def _write_take_back(
        self, tx: Any, return_id: str, tx_id: str, member: Member | None, plan: TakeBackPlan, earn_key: str | None
    ) -> None:
        key = None
        if plan.state == "done" and plan.points and member is not None:
            key = self._enqueue(tx, "taken", member, (tx_id, return_id), points=plan.points, reverses=earn_key)
        tx.execute(
            "UPDATE returns SET take_back_state=?, earned=?, take_back_due=?, take_back=?, take_back_key=?, reason=?"
            " WHERE return_id=?",
            (plan.state, plan.earned, plan.due, plan.points if key else 0, key, plan.reason, return_id),
        )

    def _enqueue(
        self,
        tx: Any,
        what: str,
        member: Member,
        ids: tuple[str, str],
        *,
        points: int,
        reverses: str | None = None,
    ) -> str:
        """Queue one points move (``ids``: the sale's and the return's); its eventKey."""
        tx_id, return_id = ids
        types = self.ctx.config.engine.event_types
        payload: dict[str, Any] = {"transactionId": tx_id, "returnId": return_id, "points": points}
        if reverses is not None:
            payload["reverses"] = reverses
        event = self.ctx.event(types.points_given_back if what == "given" else types.points_taken_back, member, payload)
        key = str(event.payload["eventKey"])
        # The sale's stream: behind its earn (and any refund of it), in the order the returns came.
        self.ctx.outbox.enqueue(tx, kind="event", stream=tx_id, body=event.body(), event_key=key)
        return key

    def _commit_take_back(
        self, record: ReturnRecord, member: Member | None, plan: TakeBackPlan, earn_key: str | None
    ) -> None:
        with self.ctx.store.transaction() as tx:
            current = tx.execute(
                "SELECT take_back_state FROM returns WHERE return_id=?", (record.return_id,)
            ).fetchone()
            if current is None or current[0] != "waiting":
                return  # settled meanwhile
            self._write_take_back(tx, record.return_id, record.tx_id, member, plan, earn_key)

    def _keep_answer(self, return_id: str, answer: ReturnAnswer) -> None:
        with self.ctx.store.transaction() as tx:
            tx.execute(
                "UPDATE returns SET answer=? WHERE return_id=? AND answer IS NULL",
                (answer.model_dump_json(), return_id),
            )

    # -- the answer, once ------------------------------------------------------------------

    async def _answer_once(self, return_id: str, sale: Sale | None = None) -> ReturnAnswer:
        ctx = self.ctx
        record = await ctx.db(self.record, return_id)
        assert record is not None
        answer = await self._answer(record, wait=ctx.config.returns.confirm_wait, sale=sale)
        await ctx.db(self._keep_answer, return_id, answer)
        ctx.events.publish("return", answer.event(), lane=record.lane)
        if answer.member is not None and ctx.config.receipts.points_slip:
            await ctx.print(record.lane, self._slip(answer))
        return answer

    def _slip(self, answer: ReturnAnswer) -> Any:
        take, give = answer.takeBack, answer.giveBack
        return templates.return_slip(
            self.ctx.slip,
            answer.transactionId,
            self.ctx.money(answer.amount),
            taken_back=take.points if take.state == "applied" else 0,
            to_take_back=take.points if take.state == "queued" else 0,
            given_back=give.points,
            not_taken_back=take.notTakenBack,
            balance=answer.balanceAfter,
            estimated=answer.balanceEstimated,
            member=answer.member,
        )

    async def _record_sale(self, record: ReturnRecord) -> Sale:
        """The sale a recorded return is of, with the chain's returns in relay mode."""
        chain = await self._chain(record.tx_id, record.return_id)
        return await self._sale_of(record.tx_id, record.lane, chain)

    async def _answer(self, record: ReturnRecord, *, wait: float, sale: Sale | None = None) -> ReturnAnswer:
        """The return as it stands, after waiting up to ``wait`` seconds for its points to show applied."""
        ctx = self.ctx
        sale = sale or await self._record_sale(record)
        every = await ctx.db(self.records, record.tx_id)
        if sale.chain is not None:  # every till's returns of the sale
            extra = sum(amount for amount, _ in sale.unregistered(every))
            returned, returned_all = sale.chain.returned_upto() + extra, sale.chain.returned() + extra
        else:
            upto = every[: [r.return_id for r in every].index(record.return_id) + 1]
            returned, returned_all = sum(r.amount for r in upto), sum(r.amount for r in every)
        member = sale.checkout.member
        keys = [k for k in (record.give_back_key, record.take_back_key) if k]
        applied = await self._applied(keys, wait)
        policies = ctx.config.returns
        take_state: Any = record.take_back_state
        if take_state == "done":
            take_state = "none" if not record.take_back else "applied" if record.take_back_key in applied else "queued"
        give_state: Literal["none", "queued", "applied"] = "none"
        if record.give_back:
            give_state = "applied" if record.give_back_key in applied else "queued"
        balance, estimated = None, False
        if member is not None:
            balance, estimated = await self._balance(member, record, applied)
        return ReturnAnswer(
            returnId=record.return_id,
            transactionId=record.tx_id,
            lane=record.lane,
            amount=record.amount,
            currency=ctx.config.currency,
            returnedSoFar=returned,
            returnable=max(0, sale.gross - returned_all),
            pointsEarned=record.earned,
            pointsSpent=sale.spent if member is not None else 0,
            takeBack=TakeBack(
                state=take_state,
                policy=policies.take_back,
                due=record.take_back_due,
                points=record.take_back,
                notTakenBack=max(0, record.take_back_due - record.take_back) if record.take_back_state == "done" else 0,
                reason=record.reason,
            ),
            giveBack=GiveBack(state=give_state, policy=policies.give_back, points=record.give_back),
            balanceAfter=balance,
            balanceEstimated=estimated,
            member=member.masked if member else None,
        )

    async def _applied(self, keys: list[str], wait: float) -> set[str]:
        """Which of the rows carrying ``keys`` the engine's reactions show applied, within ``wait`` s."""
        ctx = self.ctx
        applied: set[str] = set()
        deadline = time.monotonic() + wait
        gap = FIRST_CONFIRM_READ
        while True:
            for key in (k for k in keys if k not in applied):
                row = await ctx.db(ctx.outbox.by_key, key)
                if row is None or row.state != "delivered" or not row.engine_id:
                    continue
                try:
                    reactions = await ctx.client.event_reactions(row.engine_id)
                except TillplugError as exc:  # a read only confirms: it never fails the return
                    log.info("return: reactions unreadable (%s)", exc.code)
                    continue
                if any(r.type == "POINTS" and r.points for r in reactions):
                    applied.add(key)
            if len(applied) == len(keys) or time.monotonic() + gap > deadline:
                return applied
            await asyncio.sleep(gap)
            gap = min(MAX_CONFIRM_GAP, gap * 2)

    async def _balance(self, member: Member, record: ReturnRecord, applied: set[str]) -> tuple[int | None, bool]:
        """The member's balance; with the moves not yet shown applied counted in (then estimated)."""
        try:
            balance = (await self.ctx.client.get_wallet(member.id)).points_balance
        except TillplugError as exc:
            log.info("return: balance unreadable (%s)", exc.code)
            return None, True
        pending = 0
        if record.give_back_key and record.give_back_key not in applied:
            pending += record.give_back
        if record.take_back_key and record.take_back_key not in applied:
            pending -= record.take_back
        return int(balance + pending), bool(pending) or record.take_back_state == "waiting"

    # -- the settler's part ----------------------------------------------------------------

    async def settle_waiting(self) -> int:
        """Queue the take-backs that waited, in the order their returns came; how many still wait."""
        ctx = self.ctx
        left = 0
        blocked: set[str] = set()  # sales whose earlier return still waits: later ones keep their turn
        for record in await ctx.db(self.waiting):
            if record.tx_id in blocked:
                left += 1
                continue
            async with ctx.checkout_locks.hold(record.tx_id):
                current = await ctx.db(self.record, record.return_id)
                if current is None or current.take_back_state != "waiting":
                    continue
                try:
                    sale = await self._record_sale(record)
                except CheckoutNotFound:  # pruned (KEEP_FINISHED_CHECKOUTS) while its earn never showed
                    gone = TakeBackPlan("unverifiable", reason="the sale is no longer kept on this till")
                    await ctx.db(self._commit_take_back, record, None, gone, None)
                    continue
                except (RetryableError, EngineAuthError, EngineProtocolError) as exc:  # another till's sale
                    log.info("return %s: the relay could not be asked (%s); later", record.return_id, exc.code)
                    blocked.add(record.tx_id)
                    left += 1
                    continue
                every = await ctx.db(self.records, record.tx_id)
                at = [r.return_id for r in every].index(record.return_id)
                earlier = every[:at]
                before = sale.returned_before(earlier)
                returned_before = sum(amount for amount, _ in before)
                member = sale.checkout.member
                plan = TakeBackPlan("none")
                if member is not None:
                    plan = await self._plan_take_back(
                        sale,
                        member,
                        earlier,
                        returned_before + record.amount,
                        0,
                        every[: at + 1],
                        returned_before=returned_before,
                    )
                if plan.state == "waiting":
                    blocked.add(record.tx_id)
                    left += 1
                    continue
                await ctx.db(self._commit_take_back, record, member, plan, sale.earn_key)
            ctx.wake_outbox()
            now: ReturnRecord | None = await ctx.db(self.record, record.return_id)
            settled = await self._answer(now or record, wait=0, sale=sale)
            log.info("return %s of sale %s: take-back settled (%s)", record.return_id, record.tx_id, plan.state)
            ctx.events.publish("return_settled", settled.event(), lane=record.lane)
        self._any_waiting = left > 0
        return left


def _chain_sale(raw: Any) -> ChainSale:
    try:
        return ChainSale.model_validate(raw)
    except ValidationError:
        raise EngineProtocolError("The relay's answer about a sale has an unexpected shape.") from None


__all__ = ["ReturnAnswer", "ReturnRequest", "ReturnedLine", "Returns", "past_the_sale", "share"]
