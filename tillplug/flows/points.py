"""3.1 Spending points as money: taken before the sale completes, never more than the member has,
given back on a void — through crashes, outages and answers tillplug cannot read.

The rules, all here: the deduction's intent row is committed before the engine
hears of it; a refusal marks it failed; an unknown outcome is settled by
look-up (the till is told ``pending`` now and the verdict later, on the event
stream); a deduction the engine accepted is never turned into a failure by the
reads that only confirm it (the balance is then marked estimated); a
deduction that lands on a checkout that is no longer open is refunded through
the outbox.  A spend answers fast; the sale's points become final at tender,
before payment (``finalize``: shown applied, and covered by the member's balance
under the rule of ``tillplug.flows.finality``, or given back).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from tillplug.engine.client import EngineClient
from tillplug.engine.models import EventDefinition, points_of, reactor_points
from tillplug.engine.reactors import LISTED_REACTIONS, PROMPT_REACTIONS, applied_within
from tillplug.errors import (
    CheckoutConflict,
    EngineAuthError,
    InsufficientPoints,
    InvalidRequest,
    TillplugError,
)
from tillplug.flows.answers import Money, PointsFinal, PointsPending, PointsSpent
from tillplug.flows.checkouts import Checkout, Deduction, Member
from tillplug.flows.context import FlowContext
from tillplug.flows.finality import GIVE_BACK, KEEP, Finality, Verdict, wait_applied
from tillplug.flows.intents import Finding, IntentTable, Outcome, State, write_outcome
from tillplug.money import points_to_money
from tillplug.outbox.store import Tx
from tillplug.receipts import templates

log = logging.getLogger(__name__)
FIRST_CONFIRM_DELAY = 0.1  # seconds before the first confirming read; doubled before each next one
# How long tender (or complete) waits for the engine to show a sale's deduction applied: reactions
# take "almost instant to a few seconds".
FINAL_WAIT = 5.0
FINAL_BUDGET = 10.0  # seconds all of tender's reads may take together
NOT_APPLIED = (
    "The loyalty service accepted a points deduction but has not shown it applied; "
    "its redemption reactor may be missing or conditional. Tell a technician."
)
HELD_MESSAGE = (
    "{points} points were not given back: the loyalty service shows them never taken (its redemption "
    "reactor may be missing). Tell a technician; the member's balance is as before the sale (if the "
    "service takes them after all, tillplug gives them back then)."
)
GIVEN_BACK = (
    "The member's points were spent at another till at the same moment; these points were given back. "
    "Remove the points discount; check the balance and try again."
)
# How long a deduction this till made, but the engine's balance did not yet show, is still
# subtracted from that balance here.  Reactions take "almost instant to a few seconds"; past this
# the engine has surely applied it (erring long only refuses a spend, never allows one too many).
UNSEEN_FOR = 60.0


@dataclass(frozen=True)
class UnseenDeduction:
    """A deduction the engine accepted whose effect no read has shown yet."""

    event_id: str
    points: int
    until: float  # time.monotonic() after which it is forgotten


async def event_finding(client: EngineClient, event_key: str, since: float | None = None) -> Finding | None:
    """What the engine shows of the event carrying ``event_key``: landed, or not landed because it is
    absent (believed once it cannot be in flight); None if it cannot tell now — a look-up that
    failed, or one whose "nothing found" proves nothing — so the outcome stays unknown, never
    guessed.  ``since``: the earliest the event can have been sent (epoch seconds), for a look-up
    that reads the engine's list."""
    try:
        lookup = await client.look_up_event(event_key, since)
    except TillplugError as exc:
        log.info("look-up of an unknown outcome failed (%s); tried again later", exc.code)
        return None
    if lookup.outcome is Outcome.UNKNOWN:
        log.warning("look-up of an unknown outcome cannot tell (%s); asked again later", lookup.reason)
        return None
    return Finding(lookup.outcome, absent=lookup.outcome is Outcome.NOT_LANDED)


@dataclass(frozen=True)
class Shown:
    """A closed sale's landed deductions by what the engine shows (``Points.shown_applied``)."""

    taken: Sequence[Deduction] = ()  # shown applied (or the engine cannot show at all): refunded at once
    held: Sequence[Deduction] = ()  # shown never applied: not given back (refunded if applied after all)
    unsure: Sequence[Deduction] = ()  # not shown now: given back, refunded once shown applied

    @property
    def given(self) -> int:
        """Points the till is told were given back."""
        return sum(d.points for d in (*self.taken, *self.unsure))


def _what(exc: BaseException) -> str:
    return exc.code if isinstance(exc, TillplugError) else type(exc).__name__


class Points:
    def __init__(self, ctx: FlowContext) -> None:
        self.ctx = ctx
        # member id -> event key -> our deduction the engine's balance may not show yet.  The
        # engine applies deductions late and allows a negative balance, so a spend right after
        # another on this till is checked against the balance less these.
        self._unseen: dict[str, dict[str, UnseenDeduction]] = {}
        # What a technician must hear of (health): code -> message.  Overdraws kept after payment
        # are counted in ``overdraws_kept``.
        self.problems: dict[str, str] = {}
        self.overdraws_kept = 0

    def finality(self) -> Finality:
        types = self.ctx.config.engine.event_types
        return Finality(self.ctx.client, spend_type=types.redeemed_points, refund_type=types.points_refund)

    # -- final before payment -------------------------------------------------------------

    async def finalize(self, tx_id: str, *, after_payment: bool = False) -> PointsFinal:
        """Make the sale's points final: each deduction shown applied and covered by the member's
        balance under the rule of ``tillplug.flows.finality``, or given back.

        Called under the checkout's lock, by tender (before payment: a deduction another till's
        earlier spend leaves uncovered is given back and ``InsufficientPoints`` raised) and by
        complete (after payment: never given back; the overdraw is kept, reported and counted).
        A deduction the engine does not show applied within ``FINAL_WAIT`` stays unconfirmed:
        the answer says so, and a later tender tries again.
        """
        ctx = self.ctx
        checkout = ctx.checkout(tx_id)
        member = checkout.member
        waiting = [d for d in ctx.store.deductions(tx_id, State.LANDED) if not d.final]
        given_back: list[Deduction] = []
        overdrawn = 0
        unconfirmed: list[tuple[Deduction, str]] = []
        balance: float | None = None
        if waiting and member is not None:
            async with ctx.member_locks.hold(member.id):
                try:
                    # Reads only: an engine that black-holes them holds the cashier this long at most.
                    async with asyncio.timeout(FINAL_BUDGET):
                        verdicts = await self._final_verdicts(waiting, member)
                except TimeoutError:
                    verdicts = [Verdict("unknown", "the loyalty service did not answer in time")] * len(waiting)
                for d, verdict in zip(waiting, verdicts, strict=True):
                    if verdict.outcome == KEEP or (verdict.outcome == GIVE_BACK and after_payment):
                        if not verdict.keep:
                            overdrawn += d.points
                        await ctx.db(ctx.store.finalize_deduction, d.event_key)
                        balance = verdict.balance
                    elif verdict.outcome == GIVE_BACK:
                        given_back.append(d)
                    else:
                        unconfirmed.append((d, verdict.reason))
                if given_back:
                    await ctx.db(self._refund, tx_id, given_back, member)
        if overdrawn:
            self._overdraw_kept(tx_id, overdrawn, checkout.lane)
        if given_back:
            ctx.events.publish(
                "points_given_back",
                {"transactionId": tx_id, "points": sum(d.points for d in given_back)},
                lane=checkout.lane,
            )
            raise InsufficientPoints(GIVEN_BACK)
        return self._final_answer(tx_id, balance, unconfirmed, overdrawn)

    async def _final_verdicts(self, deductions: list[Deduction], member: Member) -> list[Verdict]:
        """One verdict per deduction of a sale: each first shown applied (within ``FINAL_WAIT``), then
        all decided from one set of reads."""
        client = self.ctx.client
        finality = self.finality()
        if client.dialect.reactions == "never":
            return [Verdict("unknown", "this loyalty service does not list what it applied")] * len(deductions)
        try:
            listed = await finality.find([d.event_key for d in deductions])
        except EngineAuthError:
            raise
        except TillplugError as exc:
            return [Verdict("unknown", f"the loyalty service's events could not be read ({exc.code})")] * len(
                deductions
            )
        applied = await asyncio.gather(
            *(wait_applied(client, listed[d.event_key].id, FINAL_WAIT) for d in deductions if d.event_key in listed)
        )
        shown = dict(zip([d.event_key for d in deductions if d.event_key in listed], applied, strict=True))
        verdicts: dict[str, Verdict] = {}
        for d in deductions:
            if d.event_key not in listed:
                verdicts[d.event_key] = Verdict("unknown", "the loyalty service does not list this deduction yet")
            elif shown[d.event_key] is None:
                verdicts[d.event_key] = Verdict("unknown", "the loyalty service has not shown these points taken yet")
                if client.dialect.reactions in LISTED_REACTIONS:
                    # This engine lists reactions (engine-check saw it): one that never shows a deduction
                    # points to a missing or conditional redemption reactor.
                    self.problems["deduction_not_applied"] = NOT_APPLIED
            else:
                self.problems.pop("deduction_not_applied", None)
                points = -float(shown[d.event_key] or 0)
                if points != d.points:
                    self._rate_mismatch(points, d.points)
        deciding = [d for d in deductions if d.event_key not in verdicts]
        decided = await finality.decide_many(member.id, [listed[d.event_key] for d in deciding])
        verdicts.update(zip([d.event_key for d in deciding], decided, strict=True))
        return [verdicts[d.event_key] for d in deductions]

    def _overdraw_kept(self, tx_id: str, points: int, lane: int) -> None:
        self.overdraws_kept += 1
        log.warning("sale %s: %d points kept after payment though the member is overdrawn", tx_id, points)
        self.problems["overdraw_kept"] = (
            f"{self.overdraws_kept} sale(s) completed without tender kept points another till spent first "
            "(members overdrawn). Tender before payment: POST /v1/checkouts/{tx}/tender."
        )
        self.ctx.events.publish(
            "error",
            {
                "code": "overdraw_kept",
                "message": "These points were also spent at another till; the member is "
                "overdrawn. Tender before taking payment.",
                "transactionId": tx_id,
            },
            lane=lane,
        )

    def _final_answer(
        self, tx_id: str, balance: float | None, unconfirmed: list[tuple[Deduction, str]], overdrawn: int
    ) -> PointsFinal:
        ctx = self.ctx
        kept = [d for d in ctx.store.deductions(tx_id, State.LANDED) if d.final]
        waiting = [d for d, _ in unconfirmed]
        answer = PointsFinal(
            state="unconfirmed" if waiting else ("final" if kept else "none"),
            final=sum(d.points for d in kept),
            unconfirmed=sum(d.points for d in waiting),
            discount=Money.of(ctx.money(sum(d.money for d in kept) + sum(d.money for d in waiting))),
            balanceAfter=None if balance is None else int(balance),
            overdrawn=overdrawn,
        )
        if waiting:
            answer.message = (
                f"The loyalty service has not confirmed {answer.unconfirmed} points in time "
                f"({unconfirmed[0][1]}). Tender again in a few seconds; if it stays unconfirmed the points "
                "stay spent and the discount holds, but tillplug could not rule out their being spent "
                "at another till at the same moment."
            )
        return answer

    async def spend(self, tx_id: str, points: int) -> PointsSpent | PointsPending:
        if not isinstance(points, int) or isinstance(points, bool) or points <= 0:
            raise InvalidRequest("points must be a whole number above zero.")
        ctx = self.ctx
        cfg = ctx.config
        if points > cfg.points.max_points_per_redemption:
            raise InvalidRequest(f"At most {cfg.points.max_points_per_redemption} points per redemption.")
        async with ctx.checkout_locks.hold(tx_id):
            member = ctx.online_member_of(ctx.open(tx_id), "points")
            money = points_to_money(points, cfg.points.rate_points, cfg.points.rate_money)
            if money <= 0:
                raise InvalidRequest(f"{points} points are worth less than the smallest coin; spend more.")
            async with ctx.member_locks.hold(member.id):
                event = ctx.event(
                    cfg.engine.event_types.redeemed_points,
                    member,
                    {"transactionId": tx_id, "points": points, "value": money, "currency": cfg.currency},
                )
                key = event.payload["eventKey"]
                available = await self._available_with_intent(
                    member, Deduction(key, tx_id, points, money, State.SENDING)
                )
                sent_at = time.monotonic()
                try:
                    reported = await ctx.client.report_event(event)
                except Exception as exc:
                    if write_outcome(exc) is Outcome.NOT_LANDED:
                        await ctx.db(ctx.store.deduction_intents.settle, key, State.NOT_LANDED)
                        raise
                    log.warning("spend on %s: outcome unknown (%s); looking it up", tx_id, type(exc).__name__)
                    await ctx.db(ctx.store.deduction_intents.settle, key, State.UNKNOWN, owed=True)
                    ctx.wake_settler()
                    return self._pending_answer(tx_id, key, points, money, lane=ctx.checkout(tx_id).lane)
                # Landed.  Re-check the checkout: a deduction on a sale no longer open goes straight back.
                checkout = ctx.checkout(tx_id)
                if checkout.state != "open":
                    await self._closed_meanwhile(tx_id, self._landed(key, tx_id, points, money), member)
                # The outcome is committed while the confirming reads are out, and before the till is
                # told or the deduction's state is written again.
                landed = asyncio.ensure_future(ctx.db(ctx.store.deduction_intents.settle, key, State.LANDED))
                try:
                    balance_after, estimated = await self._confirm_balance(
                        reported.id, member, available, points, key, sent_at
                    )
                finally:
                    await landed
                if balance_after < 0 and not estimated:
                    # Another till spent from the same balance at the same moment: the rule both
                    # tills apply (tillplug.flows.finality) says at once which one keeps.
                    verdict = await self.finality().decide(member.id, reported)
                    if verdict.outcome == GIVE_BACK:
                        await ctx.db(self._refund, tx_id, [self._landed(key, tx_id, points, money)], member)
                        raise InsufficientPoints(GIVEN_BACK)
                    if verdict.balance is not None:
                        balance_after = verdict.balance
        if cfg.engine.confirm_rate_with_test_reaction:
            await self._check_rate(event, points)
        result = PointsSpent(
            transactionId=tx_id,
            points=points,
            pending=False,
            discount=Money.of(ctx.money(money)),
            balanceAfter=int(balance_after),
            balanceEstimated=estimated,
            # The points become final at tender, before payment (POST /v1/checkouts/{tx}/tender).
            final=False,
            eventKey=key,
        )
        ctx.events.publish("redemption", result.event_data(exclude={"eventKey"}), lane=checkout.lane)
        if cfg.receipts.points_slip:
            result.print = await ctx.print(
                checkout.lane,
                templates.points_slip(
                    ctx.slip,
                    points,
                    ctx.money(money),
                    balance_after,
                    member=checkout.member.masked if checkout.member else None,
                    sale=tx_id,
                ),
            )
        return result

    async def _closed_meanwhile(self, tx_id: str, landed: Deduction, member: Member) -> NoReturn:
        """The deduction landed on a sale closed under the spend: given back by the void's rule."""
        if await self.give_back(tx_id, [landed], member):
            held = HELD_MESSAGE.format(points=landed.points)
            raise CheckoutConflict(f"Checkout {tx_id} was closed meanwhile. {held}")
        raise CheckoutConflict(f"Checkout {tx_id} was closed meanwhile; the points were given back.")

    async def _available_with_intent(self, member: Member, intent_row: Deduction) -> float:
        """The member's points less this till's unseen deductions, re-read right before reporting,
        once they cover the deduction and its intent row is durable (refused: the row is failed).

        The intent row is committed (fsync) while the balance is re-read, not before it: both must
        be done before the report, and neither needs the other.
        """
        ctx = self.ctx
        intent = asyncio.ensure_future(ctx.db(ctx.store.begin_deduction, intent_row))
        try:
            unseen = await self._still_unseen(member)  # before the wallet: it may only over-count
            wallet = await ctx.client.get_wallet(member.id)
            available: float = wallet.points_balance - unseen
            if intent_row.points > available:
                raise InsufficientPoints(f"The member has {int(available)} points.")
        except BaseException:
            await self._abandon_intent(intent, intent_row.event_key)
            raise
        await intent
        return available

    async def _abandon_intent(self, intent: asyncio.Future[None], key: str) -> None:
        """The spend stopped before its report: once its intent row is in, mark it failed (never sent).

        A row that cannot be marked stays 'sending': a restart then treats it as any interrupted
        spend (a refund sent only if the deduction landed, which it did not).
        """
        try:
            await asyncio.shield(intent)
            await self.ctx.db(self.ctx.store.deduction_intents.settle, key, State.NOT_LANDED)
        except Exception as exc:  # the spend's own error is the one the till hears of
            log.warning("spend stopped before its report; its intent row may stay 'sending' (%s)", type(exc).__name__)

    @staticmethod
    def _landed(key: str, tx_id: str, points: int, money: int) -> Deduction:
        return Deduction(key, tx_id, points, money, State.LANDED)

    def _pending_answer(self, tx_id: str, key: str, points: int, money: int, *, lane: int) -> PointsPending:
        result = PointsPending(
            transactionId=tx_id,
            points=points,
            pending=True,
            # Nothing to give yet: a till that reads only ``discount`` gives nothing.
            discount=Money.of(self.ctx.money(0)),
            pendingDiscount=Money.of(self.ctx.money(money)),
            eventKey=key,
            message="The loyalty service did not confirm the points. Do not give the discount yet: "
            "tillplug is checking and will tell the till (points_settled).",
        )
        self.ctx.events.publish("redemption_pending", result.event_data(exclude={"message"}), lane=lane)
        return result

    async def _still_unseen(self, member: Member) -> int:
        """Points of this till's recent deductions for ``member`` that the engine has not shown applied.

        A deduction is forgotten once its reactions show it applied, or after ``UNSEEN_FOR``; any
        member's expired ones are dropped here too, so the memory stays bounded.
        """
        now = time.monotonic()
        for member_id in list(self._unseen):
            kept = {k: d for k, d in self._unseen[member_id].items() if d.until > now}
            if kept:
                self._unseen[member_id] = kept
            else:
                del self._unseen[member_id]
        mine = self._unseen.get(member.id, {})
        for key, d in list(mine.items()):
            try:
                applied = points_of(await self.ctx.client.event_reactions(d.event_id)) != 0
            except Exception as exc:  # cannot tell: keep counting it until it expires
                log.info("reactions of an unseen deduction unreadable (%s)", _what(exc))
                applied = False
            if applied:
                del mine[key]
        if not mine:
            self._unseen.pop(member.id, None)
        return sum(d.points for d in mine.values())

    async def _confirm_balance(
        self, event_id: str, member: Member, before: float, points: int, event_key: str, sent_at: float
    ) -> tuple[float, bool]:
        """The balance once our deduction has landed, within the read budget; else an estimate
        (and the deduction is remembered as unseen, for this till's next spend by the member).

        Reactions are applied asynchronously.  A balance is taken once it is at or below the
        estimate.  Where engine-check saw the event's reactions listed promptly (dialect
        ``reactions``: flat or nested), it is taken only if they also show our deduction applied:
        another till's spend applied before ours brings the balance as low, and taking that
        balance would hide an overdraw.  Reactions and balance are then read in pairs (one round
        trip), and a read left over is made only if it can still confirm.  Elsewhere the balance
        alone decides, and each read is a balance read.  A read here only confirms a write the
        engine accepted, so no answer it gives (slow, missing, in a shape tillplug does not know)
        can turn the spend into a failure.
        """
        ctx = self.ctx
        budget = ctx.config.points.confirm_reads
        estimate = before - points
        reads, delay = 0, FIRST_CONFIRM_DELAY
        # False: not (yet) shown applied; None: the reactions are not read, the balance alone decides.
        applied: bool | None = False if ctx.client.dialect.reactions in PROMPT_REACTIONS else None
        # The engine began applying the deduction when the report arrived, not when its answer came
        # back: over a distant link most of the first wait has passed already.
        wait = max(0.0, FIRST_CONFIRM_DELAY - (time.monotonic() - sent_at))
        while reads < budget:
            pair = applied is False and reads + 2 <= budget
            if not pair and applied is False:
                break  # one read left, and a balance alone could not confirm: answer now
            await asyncio.sleep(wait)
            delay *= 2
            wait = delay
            if pair:
                # One round trip, not two.  The wallet may have been read a moment before the
                # reaction was applied: then the balance alone is read again.
                reads += 2
                applied, balance = await self._reactions_and_balance(event_id, member)
            else:
                reads += 1
                balance = await self._balance_or_none(member)
            if balance is not None and balance <= estimate and applied is not False:
                return balance, False
        log.info("deduction for member %s not confirmed within %d read(s); balance estimated", member.masked, reads)
        if applied is not True:  # shown applied, the engine's balances hold it from now on
            self._unseen.setdefault(member.id, {})[event_key] = UnseenDeduction(
                event_id, points, time.monotonic() + UNSEEN_FOR
            )
        return estimate, True

    async def _balance_or_none(self, member: Member) -> float | None:
        try:
            balance: float = (await self.ctx.client.get_wallet(member.id)).points_balance
        except Exception as exc:  # a confirming read never fails the spend it confirms
            log.info("balance unreadable while confirming (%s)", _what(exc))
            return None
        return balance

    async def _reactions_and_balance(self, event_id: str, member: Member) -> tuple[bool | None, float | None]:
        """Both reads at once: (do the reactions show the deduction applied, None if they cannot be
        read; the balance, None if unread)."""
        client = self.ctx.client
        reactions = asyncio.ensure_future(client.event_reactions(event_id))
        balance = asyncio.ensure_future(self._balance_or_none(member))
        await asyncio.wait([reactions, balance])
        applied: bool | None
        if (trouble := reactions.exception()) is not None:
            applied = None
            log.info("reactions unreadable (%s); confirming by the balance", _what(trouble))
        else:
            applied = points_of(reactions.result()) != 0
        return applied, balance.result()

    async def _check_rate(self, event: EventDefinition, points: int) -> None:
        try:
            results = await self.ctx.client.test_reaction(event)
        except TillplugError as exc:
            log.info("test_reaction unavailable: %s", exc.code)
            return
        engine_points = -reactor_points(results)
        if engine_points and engine_points != points:
            self._rate_mismatch(engine_points, points)

    def _rate_mismatch(self, engine_points: float, points: int) -> None:
        """The engine deducts another number of points than the till reported: a health problem."""
        log.warning(
            "the engine deducts %s points for %s reported; the configured rate stays in force", engine_points, points
        )
        message = (
            f"The loyalty service deducted {engine_points:g} points for {points} spent: its points rule differs "
            "from this till's configured rate. Tell a technician."
        )
        if self.problems.get("rate_mismatch") is None:
            self.ctx.events.publish("error", {"code": "rate_mismatch", "message": message})
        self.problems["rate_mismatch"] = message

    # -- refunds -------------------------------------------------------------------------

    def saw_not_applied(self) -> None:
        """The outbox found a deduction the engine never applied (its refund not needed): health says
        what a void or tender would have said."""
        self.problems["deduction_not_applied"] = NOT_APPLIED

    async def shown_applied(self, deductions: list[Deduction]) -> Shown:
        """A sale's landed deductions by what the engine shows of them (``Shown``): what a void, or any
        give-back of a sale closed without them, refunds, holds, or refunds once the engine shows.

        Held: the engine lists reactions (engine-check saw them), lists the deduction, and answers
        within ``FINAL_WAIT`` that it is not applied — a missing or conditional redemption reactor
        took nothing, and refunding it would invent points.  A deduction tender found applied, or
        shown applied now, is given back at once.  Where the engine lists reactions but cannot show
        now (a read fails, the deduction is not among its latest events) it is given back too, but
        its refund waits in the outbox for the engine to show it applied: a deduction the member may
        have paid for is never kept on a failed read, and one never taken is never refunded.
        """
        client = self.ctx.client
        asked = [d for d in deductions if not d.final]
        if not asked or client.dialect.reactions not in LISTED_REACTIONS:
            return Shown(taken=deductions)
        try:
            async with asyncio.timeout(FINAL_BUDGET):
                listed = await self.finality().find([d.event_key for d in asked])
                shown = [d for d in asked if d.event_key in listed]
                applied = await asyncio.gather(
                    *(applied_within(client, listed[d.event_key].id, FINAL_WAIT, FIRST_CONFIRM_DELAY) for d in shown)
                )
        except (TillplugError, TimeoutError) as exc:
            log.info("void: whether the engine applied its deductions is unreadable (%s); refunded", _what(exc))
            return Shown(taken=[d for d in deductions if d.final], unsure=asked)
        seen = {d.event_key: was for d, was in zip(shown, applied, strict=True)}
        if False in seen.values():
            self.problems["deduction_not_applied"] = NOT_APPLIED
        return Shown(
            taken=[d for d in deductions if d.final or seen.get(d.event_key) is True],
            held=[d for d in deductions if not d.final and seen.get(d.event_key) is False],
            unsure=[d for d in deductions if not d.final and seen.get(d.event_key) is None],
        )

    def _refund(self, tx_id: str, deductions: list[Deduction], member: Member) -> int:
        """Queue a refund for each deduction (``queue_refunds``): one transaction (sync: off-loop)."""
        return self._give(tx_id, Shown(taken=deductions), member)

    def _give(self, tx_id: str, shown: Shown, member: Member) -> int:
        with self.ctx.store.transaction() as tx:
            total = self.queue_refunds(tx, tx_id, member, shown)
        self.ctx.wake_outbox()
        return total

    def queue_refunds(self, tx: Tx, tx_id: str, member: Member, shown: Shown) -> int:
        """In the caller's transaction, a refund for each landed deduction of ``shown``: sent at once
        for those taken (marked refunded); for those unsure (marked refunded) and those held (left
        landed), sent only once the engine shows the deduction applied, or cannot show
        (``requires_key``: the outbox waits for that; shown never applied, it is not needed).
        The points given back now (taken and unsure)."""
        ctx = self.ctx
        waits = {d.event_key for d in (*shown.held, *shown.unsure)}
        held = {d.event_key for d in shown.held}
        for d in (*shown.taken, *shown.unsure, *shown.held):
            refund = ctx.event(
                ctx.config.engine.event_types.points_refund,
                member,
                {"transactionId": tx_id, "points": d.points, "reverses": d.event_key},
            )
            ctx.outbox.enqueue(
                tx,
                kind="event",
                stream=tx_id,
                body=refund.body(),
                event_key=refund.payload["eventKey"],
                requires_key=d.event_key if d.event_key in waits else None,
                requires_since=(d.created or None) if d.event_key in waits else None,
                requires_applied=d.event_key in held,  # shown never applied: a failed read proves nothing
            )
            ctx.store.deduction_intents.set(tx, d.event_key, State.LANDED if d.event_key in held else State.REFUNDED)
        return shown.given

    async def refund(self, tx_id: str, deductions: list[Deduction], member: Member) -> int:
        return await self.ctx.db(self._refund, tx_id, deductions, member)

    async def give_back(self, tx_id: str, deductions: list[Deduction], member: Member) -> list[Deduction]:
        """Give back landed deductions of a sale closed without them, by the void's rule
        (``shown_applied``); those held (shown never applied: left landed, health says why, refunded
        only if the engine applies them after all) are returned."""
        shown = await self.shown_applied(deductions)
        await self.ctx.db(self._give, tx_id, shown, member)
        return list(shown.held)


class DeductionIntents:
    """Points deductions in the intent machine (``tillplug.flows.intents.Kind``): their look-up by
    eventKey, and what each verdict does to the sale and the member's points."""

    settled_event = "points_settled"

    def __init__(self, ctx: FlowContext, points: Points) -> None:
        self.ctx = ctx
        self.points = points
        self.table: IntentTable[Deduction] = ctx.store.deduction_intents

    @staticmethod
    def key(d: Deduction) -> str:
        return d.event_key

    @staticmethod
    def flight_key(d: Deduction) -> str:
        return d.event_key

    async def look_up(self, d: Deduction, checkout: Checkout) -> Finding | None:
        return await event_finding(self.ctx.client, d.event_key, d.created or None)

    def _told(self, d: Deduction, outcome: str, discount: int) -> dict[str, Any]:
        return {
            "transactionId": d.tx_id,
            "eventKey": d.event_key,
            "points": d.points,
            "outcome": outcome,
            "discount": self.ctx.money(discount).to_dict(),
        }

    async def not_landed(self, d: Deduction, checkout: Checkout) -> dict[str, Any]:
        await self.ctx.db(self.table.settle, d.event_key, State.NOT_LANDED)
        return self._told(d, Outcome.NOT_LANDED, 0)

    async def landed_open(self, d: Deduction, checkout: Checkout, finding: Finding) -> dict[str, Any]:
        await self.ctx.db(self.table.settle, d.event_key, State.LANDED)
        return self._told(d, Outcome.LANDED, d.money)

    async def landed_closed(self, d: Deduction, checkout: Checkout, finding: Finding) -> dict[str, Any]:
        """Landed on a sale that closed without it: the member gets the points back, as a void gives
        them back (held if the engine shows them never taken: a refund would invent them)."""
        assert checkout.member is not None
        if await self.points.give_back(d.tx_id, [d], checkout.member):
            return self._told(d, "held", 0) | {"message": HELD_MESSAGE.format(points=d.points)}
        return self._told(d, State.REFUNDED, 0)

    async def cannot_tell(self, d: Deduction, checkout: Checkout, finding: Finding) -> None:
        return None  # a deduction stays owed and is looked up again (its look-up returns None first)

    def interrupted(self, d: Deduction) -> None:
        """A crash cut the spend off (the till got no answer): a refund is queued, sent only if it landed.

        The deduction stays unknown and is not owed: the outbox's refund-if-landed settles it, once
        the deduction can no longer be in flight (counted from the restart, never from before).
        """
        ctx = self.ctx
        checkout = ctx.store.get(d.tx_id)
        if checkout is None or checkout.member is None:
            return  # no spend is made without a member: nothing to give back to
        with ctx.store.transaction() as tx:
            ctx.store.deduction_intents.set(tx, d.event_key, State.UNKNOWN)
            refund = ctx.event(
                ctx.config.engine.event_types.points_refund,
                checkout.member,
                {"transactionId": d.tx_id, "points": d.points, "reverses": d.event_key},
            )
            ctx.outbox.enqueue(
                tx,
                kind="event",
                stream=d.tx_id,
                body=refund.body(),
                event_key=refund.payload["eventKey"],
                requires_key=d.event_key,
                requires_since=d.created or None,  # the deduction's intent: it was not sent before
            )
        ctx.wake_outbox()
