"""The loyalty flows of the seed document, one checkout per lane.

1 member look-up · 2 earning on completion · 3.1 spending points as money ·
3.2 user-led vouchers · 3.3 cashier-led vouchers · voids.  The rules:
points and vouchers are taken before the sale completes; never more points
than the member has (the engine allows negatives, so a deduction is confirmed
against the balance after it lands and reversed if it overdrew); a void gives
back every deduction through the outbox; no personal data in any payload.
"""

from __future__ import annotations

import logging
from typing import Any

from tillplug.barcodes.classify import Classified, ScanKind
from tillplug.engine.models import (
    EventDefinition,
    Order,
    OrderLine,
    reactor_points,
)
from tillplug.errors import (
    InvalidRequest,
    TillplugError,
    VoucherError,
)
from tillplug.flows.base import benefit_view
from tillplug.flows.checkouts import (
    Checkout,
)
from tillplug.flows.points import PointsFlows
from tillplug.flows.vouchers import VoucherFlows
from tillplug.logs import mask
from tillplug.money import CURRENCY_EXPONENTS
from tillplug.receipts import templates

log = logging.getLogger(__name__)


class Loyalty(PointsFlows, VoucherFlows):
    """The flows of the seed, one object: look-up, checkouts, points, vouchers, completion, voids, scans."""

    # -- 2. completion and voids ---------------------------------------------------

    async def complete(
        self, tx_id: str, total: int, basket: list[dict[str, Any]], payment_confirmed: bool
    ) -> dict[str, Any]:
        if not payment_confirmed:
            raise InvalidRequest("Complete the sale only once payment is confirmed.")
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise InvalidRequest("total must be a whole number of minor units, zero or more.")
        async with self._lock(self._tx_locks, tx_id):
            checkout = self._open(tx_id)
            burn_failures = await self._burn_checked(checkout)
            member = checkout.member
            types = self.config.engine.event_types
            lines = [{"sku": str(i["sku"]), "quantity": i["quantity"], "amount": int(i["amount"])} for i in basket]
            points_redeemed = sum(d.points for d in self.checkouts.deductions(tx_id, "confirmed"))
            payload = {
                "transactionId": tx_id,
                "cashierId": checkout.cashier_id,
                "total": total,
                "currency": self.config.currency,
                "basket": lines,
                "pointsRedeemed": points_redeemed,
            }
            event = self._event(types.transaction, member, {k: v for k, v in payload.items() if v is not None})
            key = event.payload["eventKey"]
            checkout.state, checkout.total = "completed", total
            with self.checkouts.transaction() as tx:
                if self.config.engine.earn_mode == "orders":
                    order = Order(
                        orderId=tx_id,
                        totalSpend=total,
                        currency=self.config.currency,
                        lines=[OrderLine.model_validate(line) for line in lines],
                        submitter={"authIdentifier": member.auth_identifier}
                        if member and member.auth_identifier
                        else None,
                        metadata={
                            "eventKey": key,
                            "tillId": self.config.till_id,
                            "branchId": self.config.branch_id,
                            "cashierId": checkout.cashier_id,
                        },
                    )
                    self.outbox.enqueue(tx, kind="order", stream=tx_id, body=order.body(), event_key=key)
                else:
                    self.outbox.enqueue(tx, kind="event", stream=tx_id, body=event.body(), event_key=key)
                self.checkouts.save(tx, checkout)
        self._closed(checkout)
        self.wake_outbox()
        expected = await self._expected_points(event, total) if member else 0
        result = {
            "transactionId": tx_id,
            "state": "completed",
            "expectedPoints": expected,
            "eventKey": key,
            "voucherBurnFailures": burn_failures,
        }
        self.events.publish(
            "checkout_completed", {k: v for k, v in result.items() if k != "eventKey"}, lane=checkout.lane
        )
        if member and self.config.receipts.sale_summary:
            result["print"] = await self._print(
                checkout.lane,
                templates.sale_summary(
                    self.slip,
                    tx_id,
                    self.money(total),
                    expected,
                    member=member.masked,
                    redeemed=templates.Redeemed(
                        points_redeemed, [v.name or v.code for v in checkout.vouchers if v.burned]
                    ),
                ),
            )
        return result

    async def _burn_checked(self, checkout: Checkout) -> list[dict[str, str]]:
        """check_then_burn: vouchers checked at scan are burned now that payment is confirmed."""
        failures = []
        for v in checkout.vouchers:
            if v.burned:
                continue
            try:
                await self.client.validate_voucher(
                    v.code, user_identifier=checkout.member.id if checkout.member else None
                )
                v.burned = True
            except TillplugError as exc:
                log.warning("could not burn voucher at completion of %s: %s", checkout.tx_id, exc.code)
                failures.append({"code": v.code, "error": exc.code, "message": exc.message})
        return failures

    async def _expected_points(self, event: EventDefinition, total: int) -> int:
        if self.config.engine.confirm_rate_with_test_reaction:
            try:
                return int(reactor_points(await self.client.test_reaction(event)))
            except TillplugError:
                pass
        major = total / 10 ** CURRENCY_EXPONENTS[self.config.currency]
        return int(major * self.config.points.earn_per_major_unit)

    async def void(self, tx_id: str) -> dict[str, Any]:
        async with self._lock(self._tx_locks, tx_id):
            checkout = self._open(tx_id)
            taken = self.checkouts.deductions(tx_id, "confirmed")
            refunded = self._refund(tx_id, taken, checkout.member) if taken and checkout.member else 0
            checkout.state = "voided"
            with self.checkouts.transaction() as tx:
                self.checkouts.save(tx, checkout)
            self._closed(checkout)
        burned = [v.code for v in checkout.vouchers if v.burned]
        result = {
            "transactionId": tx_id,
            "state": "voided",
            "pointsRefunded": refunded,
            "vouchersNotReinstated": burned,
        }
        self.events.publish("checkout_voided", result, lane=checkout.lane)
        if (refunded or burned) and self.config.receipts.points_slip:
            kept = [v.name or v.code for v in checkout.vouchers if v.burned]
            result["print"] = await self._print(
                checkout.lane, templates.refund_slip(self.slip, tx_id, refunded, not_reinstated=kept)
            )
        return result

    # -- scans -------------------------------------------------------------------

    async def handle_scan(self, text: str, symbology: str | None, lane: int, device: str) -> Classified:
        classified = self.classifier.classify(text, symbology)
        kind = classified.kind
        base = {"device": device, "kind": kind.value, "symbology": symbology}
        checkout = self.open_on_lane(lane)
        try:
            if kind is ScanKind.MEMBER:
                self.events.publish("scan", {**base, "member": mask(classified.code)}, lane=lane)
                if checkout is not None:
                    await self.attach_member(checkout.tx_id, classified.code)
                else:
                    await self.lookup(classified.code, lane=lane, print_slip=True)
            elif kind is ScanKind.VOUCHER:
                self.events.publish("scan", {**base, "code": classified.code}, lane=lane)
                if checkout is not None:
                    await self.apply_voucher(checkout.tx_id, classified.code)
                else:  # no sale to apply it to: only check it, never burn it
                    try:
                        b = await self.client.validate_voucher(classified.code, check_only=True)
                    except VoucherError as exc:
                        self.events.publish(
                            "voucher_result",
                            {
                                "code": classified.code,
                                "ok": False,
                                "checkOnly": True,
                                "error": exc.code,
                                "message": exc.message,
                            },
                            lane=lane,
                        )
                        raise
                    self.events.publish(
                        "voucher_result",
                        {"code": classified.code, "ok": True, "checkOnly": True, **benefit_view(b)},
                        lane=lane,
                    )
            elif kind is ScanKind.LOCAL_POOL:
                self.events.publish("scan", {**base, "code": classified.code}, lane=lane)
            else:
                self.events.publish("scan", {**base, "text": text, **classified.details}, lane=lane)
        except TillplugError as exc:
            if not isinstance(exc, VoucherError):  # voucher outcomes were already published
                self.events.publish(
                    "error", {"code": exc.code, "message": exc.message, "scanKind": kind.value}, lane=lane
                )
        return classified


__all__ = ["Loyalty"]
