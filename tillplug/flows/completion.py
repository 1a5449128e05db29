"""2. Earning on completion, and voids.

Completion queues the sale's earning write in the outbox in the same
transaction that closes the checkout; a sale with vouchers that were only
checked cannot complete (they are burned by ``tender``, before payment, never
after).  A void gives back every deduction that landed, through the outbox;
deductions still being looked up are given back by the settler if they landed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from tillplug.engine.models import EventDefinition, Order, OrderLine, reactor_points
from tillplug.errors import InvalidRequest, TillplugError, VouchersNotTendered, VouchersPending
from tillplug.flows.answers import Completed, Voided
from tillplug.flows.book import ADDED_IF_VALID, CheckoutBook
from tillplug.flows.checkouts import Checkout
from tillplug.flows.context import FlowContext
from tillplug.flows.intents import State
from tillplug.flows.points import HELD_MESSAGE, Points, Shown
from tillplug.money import CURRENCY_EXPONENTS
from tillplug.receipts import templates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BasketLine:
    """One line of the sale's basket, as the till sent it (the engine's order lines, the sale event)."""

    sku: str
    quantity: float
    amount: int  # minor units


class Completion:
    def __init__(self, ctx: FlowContext, book: CheckoutBook, points: Points) -> None:
        self.ctx = ctx
        self.book = book
        self.points = points

    async def complete(self, tx_id: str, total: int, basket: list[BasketLine], payment_confirmed: bool) -> Completed:
        if not payment_confirmed:
            raise InvalidRequest("Complete the sale only once payment is confirmed.")
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise InvalidRequest("total must be a whole number of minor units, zero or more.")
        ctx = self.ctx
        async with ctx.checkout_locks.hold(tx_id):
            checkout = ctx.open(tx_id)
            unburned = [v.code for v in checkout.vouchers if not v.burned]
            if unburned:
                raise VouchersNotTendered(
                    f"Voucher(s) {', '.join(unburned)} were only checked: tender the sale "
                    f"(POST /v1/checkouts/{tx_id}/tender) before taking payment, or remove them by voiding."
                )
            pending = ctx.store.codes_awaiting_verdict(tx_id)
            if pending:  # a burn may have landed: the sale's discount depends on its verdict
                raise VouchersPending(
                    f"Voucher(s) {', '.join(pending)} may have been used on this sale; tillplug is checking. "
                    "Wait for the verdict (voucher_settled on the event stream) before completing, or void the sale."
                )
            # A POS that never tenders: the points are made final here, but after payment nothing is
            # given back (an overdraw is kept, reported and counted).
            points_final = await self.points.finalize(tx_id, after_payment=True)
            member = checkout.member
            lines = [asdict(line) for line in basket]
            points_redeemed = sum(d.points for d in ctx.store.deductions(tx_id, State.LANDED))
            payload = {
                "transactionId": tx_id,
                "cashierId": checkout.cashier_id,
                "total": total,
                "currency": ctx.config.currency,
                "basket": lines,
                "pointsRedeemed": points_redeemed,
            }
            event = ctx.event(
                ctx.config.engine.event_types.transaction, member, {k: v for k, v in payload.items() if v is not None}
            )
            key = event.payload["eventKey"]
            checkout.state, checkout.total = "completed", total
            await ctx.db(self._close, checkout, event, lines)
        self.book.closed(checkout)
        ctx.wake_outbox()
        # An unverified member (keyed offline, never seen) is promised no figure: it may be a stranger's.
        expected: int | None = None
        if member is None:
            expected = 0
        elif not member.unverified:
            expected = await self._expected_points(event, total)
        result = Completed(
            transactionId=tx_id,
            state="completed",
            expectedPoints=expected,
            eventKey=key,
            offline=bool(member and member.offline),
            voucherBurnFailures=[],  # kept for old tills: vouchers are burned before payment now
            points=points_final,
        )
        if expected is None:
            result.message = ADDED_IF_VALID
        ctx.events.publish("checkout_completed", result.event_data(exclude={"eventKey"}), lane=checkout.lane)
        if member and ctx.config.receipts.sale_summary:
            result.print = await ctx.print(
                checkout.lane,
                templates.sale_summary(
                    ctx.slip,
                    tx_id,
                    ctx.money(total),
                    expected,
                    member=member.masked,
                    redeemed=templates.Redeemed(
                        points_redeemed, [v.name or v.code for v in checkout.vouchers if v.burned]
                    ),
                    balance_after=None
                    if checkout.balance is None or expected is None
                    else checkout.balance - points_redeemed + expected,
                ),
            )
        return result

    def _close(self, checkout: Checkout, event: EventDefinition, lines: list[dict[str, str | float | int]]) -> None:
        """Queue the earning write and close the checkout: one transaction (sync: off the loop)."""
        ctx = self.ctx
        member, key = checkout.member, event.payload["eventKey"]
        with ctx.store.transaction() as tx:
            if ctx.config.engine.earn_mode == "orders":
                order = Order(
                    orderId=checkout.tx_id,
                    totalSpend=checkout.total or 0,
                    currency=ctx.config.currency,
                    lines=[OrderLine.model_validate(line) for line in lines],
                    submitter={"authIdentifier": member.auth_identifier} if member and member.auth_identifier else None,
                    metadata={
                        "eventKey": key,
                        "tillId": ctx.config.till_id,
                        "branchId": ctx.config.branch_id,
                        "cashierId": checkout.cashier_id,
                    },
                )
                ctx.outbox.enqueue(tx, kind="order", stream=checkout.tx_id, body=order.body(), event_key=key)
            else:
                ctx.outbox.enqueue(tx, kind="event", stream=checkout.tx_id, body=event.body(), event_key=key)
            ctx.store.save(tx, checkout)

    async def _expected_points(self, event: EventDefinition, total: int) -> int:
        cfg = self.ctx.config
        if cfg.engine.confirm_rate_with_test_reaction:
            try:
                return int(reactor_points(await self.ctx.client.test_reaction(event)))
            except TillplugError:
                pass
        major = total / 10 ** CURRENCY_EXPONENTS[cfg.currency]
        return int(major * cfg.points.earn_per_major_unit)

    async def void(self, tx_id: str) -> Voided:
        ctx = self.ctx
        async with ctx.checkout_locks.hold(tx_id):
            checkout = ctx.open(tx_id)
            deductions = ctx.store.deductions(tx_id)
            shown = await self.points.shown_applied([d for d in deductions if d.state == State.LANDED])
            pending = sum(d.points for d in deductions if d.state == State.UNKNOWN and d.owed)
            checkout.state = "voided"
            await ctx.db(self._void, checkout, shown)
            self.book.closed(checkout)
        refunded = shown.given if checkout.member else 0
        if refunded or shown.held:
            ctx.wake_outbox()
        result = Voided(
            transactionId=tx_id,
            state="voided",
            pointsRefunded=refunded,
            vouchersNotReinstated=[v.code for v in checkout.vouchers if v.burned],
            # Points whose outcome is still being looked up: refunded if they landed (points_settled).
            pointsPending=pending,
            vouchersPending=ctx.store.codes_awaiting_verdict(tx_id),
        )
        if shown.held:  # the engine shows these points never taken: giving them back would invent points
            result.pointsHeld = sum(d.points for d in shown.held)
            result.message = HELD_MESSAGE.format(points=result.pointsHeld)
        ctx.events.publish("checkout_voided", result.event_data(), lane=checkout.lane)
        kept = [v.name or v.code for v in checkout.vouchers if v.burned]
        if (refunded or kept) and ctx.config.receipts.points_slip:
            result.print = await ctx.print(
                checkout.lane, templates.refund_slip(ctx.slip, tx_id, refunded, not_reinstated=kept)
            )
        return result

    def _void(self, checkout: Checkout, shown: Shown) -> None:
        """Refunds for every landed deduction (``Points.queue_refunds``) and the voided checkout: one transaction."""
        ctx = self.ctx
        with ctx.store.transaction() as tx:
            if checkout.member is not None:
                self.points.queue_refunds(tx, checkout.tx_id, checkout.member, shown)
            ctx.store.save(tx, checkout)
