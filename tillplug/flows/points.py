"""3.1 Spending points as money: taken before the sale completes, never more than the member has,
given back on a void — through crashes and outages (deductions are written before the engine
hears of them; refunds go through the outbox)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tillplug.engine.models import (
    EventDefinition,
    Wallet,
    points_of,
    reactor_points,
)
from tillplug.errors import (
    InsufficientPoints,
    InvalidRequest,
    OutcomeUnknown,
    RetryableError,
    TillplugError,
)
from tillplug.flows.base import FlowBase
from tillplug.flows.checkouts import (
    Deduction,
    Member,
)
from tillplug.money import points_to_money
from tillplug.receipts import templates

log = logging.getLogger(__name__)
REACTION_WAIT = 3.0  # seconds to wait for the engine to apply a deduction before checking the balance


class PointsFlows(FlowBase):
    # -- 3.1 spending points ---------------------------------------------------------

    async def spend_points(self, tx_id: str, points: int) -> dict[str, Any]:
        if not isinstance(points, int) or isinstance(points, bool) or points <= 0:
            raise InvalidRequest("points must be a whole number above zero.")
        if points > self.config.points.max_points_per_redemption:
            raise InvalidRequest(f"At most {self.config.points.max_points_per_redemption} points per redemption.")
        member = self._member_of(self._open(tx_id))
        async with self._lock(self._member_locks, member.id):  # one spend per member at a time on this till
            self._open(tx_id)
            wallet = await self.client.get_wallet(member.id)  # re-read right before reporting
            if points > wallet.points_balance:
                raise InsufficientPoints(f"The member has {int(wallet.points_balance)} points.")
            money = points_to_money(points, self.config.points.rate_points, self.config.points.rate_money)
            if money <= 0:
                raise InvalidRequest(f"{points} points are worth less than the smallest coin; spend more.")
            event = self._event(
                self.config.engine.event_types.redeemed_points,
                member,
                {"transactionId": tx_id, "points": points, "value": money, "currency": self.config.currency},
            )
            key = event.payload["eventKey"]
            with self.checkouts.transaction() as tx:  # durable before the engine hears of it
                self.checkouts.add_deduction(tx, Deduction(key, tx_id, points, money, "sending"))
            try:
                reported = await self.client.report_event(event)
            except OutcomeUnknown:
                self._unknown_deduction(tx_id, key, points, member)
                raise
            except TillplugError:
                with self.checkouts.transaction() as tx:
                    self.checkouts.set_deduction(tx, key, "failed")
                raise
            with self.checkouts.transaction() as tx:
                self.checkouts.set_deduction(tx, key, "confirmed")
            balance_after = await self._confirm_balance(reported.id, member, wallet.points_balance - points)
            if balance_after < 0:
                # Another till spent the same points a moment ago: give these back.
                self._refund(tx_id, [Deduction(key, tx_id, points, money, "confirmed")], member)
                raise InsufficientPoints("Those points were just spent elsewhere; the member's balance is too low.")
        if self.config.engine.confirm_rate_with_test_reaction:
            await self._check_rate(event, points)
        checkout = self._checkout(tx_id)
        result = {
            "transactionId": tx_id,
            "points": points,
            "discount": self.money(money).to_dict(),
            "balanceAfter": int(balance_after),
            "eventKey": key,
        }
        self.events.publish("redemption", {k: v for k, v in result.items() if k != "eventKey"}, lane=checkout.lane)
        if self.config.receipts.points_slip:
            result["print"] = await self._print(
                checkout.lane,
                templates.points_slip(
                    self.slip,
                    points,
                    self.money(money),
                    balance_after,
                    member=checkout.member.masked if checkout.member else None,
                    sale=tx_id,
                ),
            )
        return result

    async def _confirm_balance(self, event_id: str, member: Member, expected: float) -> float:
        """The balance once our deduction has landed (reactions are asynchronous)."""
        deadline = time.monotonic() + REACTION_WAIT
        while time.monotonic() < deadline:
            try:
                if points_of(await self.client.event_reactions(event_id)):
                    wallet: Wallet = await self.client.get_wallet(member.id)
                    return wallet.points_balance
            except RetryableError:
                pass
            await asyncio.sleep(0.05)
        log.warning(
            "deduction for member %s not applied within %.0fs; trusting the pre-check", member.masked, REACTION_WAIT
        )
        return expected

    async def _check_rate(self, event: EventDefinition, points: int) -> None:
        try:
            results = await self.client.test_reaction(event)
        except TillplugError as exc:
            log.info("test_reaction unavailable: %s", exc.code)
            return
        engine_points = -reactor_points(results)
        if engine_points and engine_points != points:
            log.warning(
                "the engine deducts %s points for %s reported; the configured rate stays in force",
                engine_points,
                points,
            )
            self.events.publish(
                "error",
                {
                    "code": "rate_mismatch",
                    "message": "The engine's points rule differs from the configured rate; tell a technician.",
                },
            )

    def _unknown_deduction(self, tx_id: str, key: str, points: int, member: Member) -> None:
        """The deduction may or may not have landed: queue a refund that is sent only if it did."""
        refund = self._event(
            self.config.engine.event_types.points_refund,
            member,
            {"transactionId": tx_id, "points": points, "reverses": key},
        )
        with self.checkouts.transaction() as tx:
            self.checkouts.set_deduction(tx, key, "unknown")
            self.outbox.enqueue(
                tx,
                kind="event",
                stream=tx_id,
                body=refund.body(),
                event_key=refund.payload["eventKey"],
                requires_key=key,
            )
        self.wake_outbox()

    def _refund(self, tx_id: str, deductions: list[Deduction], member: Member) -> int:
        total = 0
        with self.checkouts.transaction() as tx:
            for d in deductions:
                refund = self._event(
                    self.config.engine.event_types.points_refund,
                    member,
                    {"transactionId": tx_id, "points": d.points, "reverses": d.event_key},
                )
                self.outbox.enqueue(
                    tx, kind="event", stream=tx_id, body=refund.body(), event_key=refund.payload["eventKey"]
                )
                self.checkouts.set_deduction(tx, d.event_key, "refunded")
                total += d.points
        self.wake_outbox()
        return total

    def recover(self) -> int:
        """At start-up: deductions a crash interrupted get a refund-if-it-landed."""
        count = 0
        for d in self.checkouts.interrupted_deductions():
            checkout = self.checkouts.get(d.tx_id)
            if checkout and checkout.member:
                self._unknown_deduction(d.tx_id, d.event_key, d.points, checkout.member)
                count += 1
        return count
