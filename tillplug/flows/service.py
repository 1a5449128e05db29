"""The loyalty flows of the seed document, one checkout per lane.

1 member look-up · 2 earning on completion · 3.1 spending points as money ·
3.2 user-led vouchers · 3.3 cashier-led vouchers · voids.  The rules:
points and vouchers are taken before the sale completes; never more points
than the member has (the engine allows negatives, so a deduction is confirmed
against the balance after it lands and reversed if it overdrew); a void gives
back every deduction through the outbox; no personal data in any payload.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from tillplug.barcodes.classify import Classified, Classifier, ScanKind
from tillplug.config.model import Config
from tillplug.engine.models import Benefit, EventDefinition, Order, Wallet, new_event_key, points_of
from tillplug.errors import (
    BenefitNotFound,
    CheckoutConflict,
    CheckoutNotFound,
    MemberNotFound,
    InsufficientPoints,
    InvalidRequest,
    OutcomeUnknown,
    PrinterNotReady,
    RetryableError,
    TillplugError,
    VoucherError,
)
from tillplug.flows.checkouts import AppliedVoucher, Checkout, CheckoutStore, Deduction, Member
from tillplug.flows.events import EventBus
from tillplug.logs import mask
from tillplug.money import CURRENCY_EXPONENTS, Money, points_to_money
from tillplug.outbox.store import OutboxStore
from tillplug.receipts import templates
from tillplug.receipts.layout import Receipt

log = logging.getLogger(__name__)
TX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
REACTION_WAIT = 3.0  # seconds to wait for the engine to apply a deduction before checking the balance
MEMBER_TTL = 600.0
MEMBER_CACHE = 1000

Printer = Callable[[int, Receipt], Awaitable[None]]


def benefit_view(b: Benefit) -> dict[str, Any]:
    return {
        "id": b.id, "state": b.state(), "name": b.reward.name if b.reward else "",
        "expiresAt": b.expires_at, "code": b.code.value if b.code and b.state() != "created" else None,
        "discounts": [d.model_dump(exclude_none=True, by_alias=True) for d in (b.reward.discounts if b.reward else [])],
    }


class Loyalty:
    def __init__(self, config: Config, client: Any, outbox: OutboxStore, *, events: EventBus | None = None,
                 wake_outbox: Callable[[], None] = lambda: None, printer: Printer | None = None) -> None:
        self.client = client
        self.outbox = outbox
        self.checkouts = CheckoutStore(outbox)
        self.events = events or EventBus()
        self.wake_outbox = wake_outbox
        self.printer = printer
        self.reconfigure(config)
        self._member_locks: dict[str, asyncio.Lock] = {}
        # ident → (member, expiry): a card's UUID and authIdentifier do not change, so a card scanned
        # at look-up and again at the checkout costs one GET /users (engine-api.md part 1 §3).
        self._members: OrderedDict[str, tuple[Member, float]] = OrderedDict()
        self._open_by_lane: dict[int, str] | None = None  # lane → open checkout, mirrored from the database
        self._tx_locks: dict[str, asyncio.Lock] = {}

    def reconfigure(self, config: Config) -> None:
        """Rules, rates and slip texts from a (re)loaded config; they apply from the next request."""
        self.config = config
        self.classifier = Classifier(config.barcodes)
        self.slip = templates.SlipContext(config.till_id, config.branch_id, config.currency,
                                          tuple(config.receipts.header), tuple(config.receipts.footer))

    # -- helpers -----------------------------------------------------------------

    def money(self, minor: int) -> Money:
        return Money(minor, self.config.currency)

    def _lock(self, table: dict[str, asyncio.Lock], key: str) -> asyncio.Lock:
        return table.setdefault(key, asyncio.Lock())

    def _checkout(self, tx_id: str) -> Checkout:
        checkout = self.checkouts.get(tx_id)
        if checkout is None:
            raise CheckoutNotFound(f"There is no checkout {tx_id!r}.")
        return checkout

    def _open(self, tx_id: str) -> Checkout:
        checkout = self._checkout(tx_id)
        if checkout.state != "open":
            raise CheckoutConflict(f"Checkout {tx_id} is already {checkout.state}.")
        return checkout

    def _member_of(self, checkout: Checkout) -> Member:
        if checkout.member is None:
            raise CheckoutConflict("Scan the member's card first.")
        return checkout.member

    async def _print(self, lane: int, receipt: Receipt) -> bool:
        if self.printer is None:
            return False
        try:
            await self.printer(lane, receipt)
            return True
        except (PrinterNotReady, TillplugError) as exc:
            self.events.publish("error", {"code": exc.code, "message": exc.message}, lane=lane)
            return False

    def _event(self, type_: str, member: Member | None, payload: dict[str, Any]) -> EventDefinition:
        body = {"eventKey": new_event_key(), "tillId": self.config.till_id, "branchId": self.config.branch_id,
                **payload}
        return EventDefinition(type=type_, subject=member.id if member else None,
                               executor=self.config.till_id, payload=body)

    # -- 1. member look-up ---------------------------------------------------------

    async def find_member(self, code: str) -> tuple[Member, Wallet]:
        code = code.strip()
        if not code or len(code) > 512:
            raise InvalidRequest("A member code is 1 to 512 characters.")
        classified = self.classifier.classify(code)
        ident = classified.code if classified.kind is ScanKind.MEMBER else code
        cached = self._members.get(ident)
        if cached is not None and cached[1] > time.monotonic():
            member = cached[0]
        else:
            user = await self.client.get_user(ident)
            member = Member(user.id, user.auth_identifier, mask(user.id))
            self._members[ident] = (member, time.monotonic() + MEMBER_TTL)
            self._members.move_to_end(ident)
            while len(self._members) > MEMBER_CACHE:
                self._members.popitem(last=False)
        try:
            wallet = await self.client.get_wallet(member.id)
        except MemberNotFound:
            self._members.pop(ident, None)  # closed since it was cached
            raise
        return member, wallet

    def wallet_view(self, member: Member, wallet: Wallet) -> dict[str, Any]:
        usable = [benefit_view(v) for v in wallet.vouchers if v.state() in ("created", "redeemed", "validated")]
        return {
            "member": member.masked, "pointsBalance": int(wallet.points_balance),
            "lifetimePoints": int(wallet.lifetime_earn), "tier": wallet.tier.name if wallet.tier else None,
            "pointsValue": self.money(points_to_money(max(0, int(wallet.points_balance)),
                                                      self.config.points.rate_points,
                                                      self.config.points.rate_money)).to_dict(),
            "vouchers": usable,
        }

    async def lookup(self, code: str, *, lane: int | None = None, print_slip: bool = False) -> dict[str, Any]:
        member, wallet = await self.find_member(code)
        view = self.wallet_view(member, wallet)
        self.events.publish("member_found", view, lane=lane)
        if print_slip and lane is not None and self.config.receipts.balance_slip:
            view["printed"] = await self._print(lane, templates.balance_slip(self.slip, member.masked, wallet))
        return view

    # -- checkouts -----------------------------------------------------------------

    async def open_checkout(self, tx_id: str, lane: int, cashier_id: str | None) -> dict[str, Any]:
        if not TX_ID.match(tx_id):
            raise InvalidRequest("transactionId must be 1-64 letters, digits, '.', '_', ':' or '-'.")
        if cashier_id is not None and not TX_ID.match(cashier_id):
            raise InvalidRequest("cashierId must be 1-64 letters, digits, '.', '_', ':' or '-'.")
        if not 1 <= lane <= 999:
            raise InvalidRequest("lane must be 1 to 999.")
        checkout = Checkout(tx_id, lane, cashier_id)
        with self.checkouts.transaction() as tx:
            if self.checkouts.get(tx_id) is not None:
                raise CheckoutConflict(f"Checkout {tx_id} already exists.")
            self.checkouts.insert(tx, checkout)
        self._lanes()[lane] = tx_id
        self.events.publish("checkout_opened", {"transactionId": tx_id}, lane=lane)
        return self.view(checkout)

    def _lanes(self) -> dict[int, str]:
        if self._open_by_lane is None:
            self._open_by_lane = {}
            for row in self.outbox.query("SELECT lane, tx_id FROM checkouts WHERE state='open' ORDER BY created"):
                self._open_by_lane[row[0]] = row[1]
        return self._open_by_lane

    def _closed(self, checkout: Checkout) -> None:
        if self._lanes().get(checkout.lane) == checkout.tx_id:
            del self._lanes()[checkout.lane]

    def open_on_lane(self, lane: int) -> Checkout | None:
        tx_id = self._lanes().get(lane)
        return self.checkouts.get(tx_id) if tx_id else None

    def view(self, checkout: Checkout) -> dict[str, Any]:
        deductions = self.checkouts.deductions(checkout.tx_id)
        taken = [d for d in deductions if d.state == "confirmed"]
        return {
            "transactionId": checkout.tx_id, "lane": checkout.lane, "cashierId": checkout.cashier_id,
            "state": checkout.state, "member": checkout.member.masked if checkout.member else None,
            "pointsSpent": sum(d.points for d in taken),
            "pointsDiscount": self.money(sum(d.money for d in taken)).to_dict(),
            "refunded": sum(d.points for d in deductions if d.state == "refunded"),
            "vouchers": [v.to_api() for v in checkout.vouchers],
        }

    def get_checkout(self, tx_id: str) -> dict[str, Any]:
        return self.view(self._checkout(tx_id))

    async def attach_member(self, tx_id: str, code: str) -> dict[str, Any]:
        self._open(tx_id)
        member, wallet = await self.find_member(code)
        async with self._lock(self._tx_locks, tx_id):
            checkout = self._open(tx_id)
            if checkout.member is not None and checkout.member.id != member.id and (
                    checkout.vouchers or self.checkouts.deductions(tx_id, "confirmed")):
                # Refunds must go back to whoever spent: the member cannot change under them.
                raise CheckoutConflict("Another member already used points or vouchers on this sale; void it first.")
            checkout.member = member
            with self.checkouts.transaction() as tx:
                self.checkouts.save(tx, checkout)
        view = {**self.view(checkout), "wallet": self.wallet_view(member, wallet)}
        self.events.publish("member_attached", {"transactionId": tx_id, **view["wallet"]}, lane=checkout.lane)
        return view

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
            event = self._event(self.config.engine.event_types.redeemed_points, member,
                                {"transactionId": tx_id, "points": points, "value": money,
                                 "currency": self.config.currency})
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
        result = {"transactionId": tx_id, "points": points, "discount": self.money(money).to_dict(),
                  "balanceAfter": int(balance_after), "eventKey": key}
        self.events.publish("redemption", {k: v for k, v in result.items() if k != "eventKey"}, lane=checkout.lane)
        if self.config.receipts.points_slip:
            result["printed"] = await self._print(
                checkout.lane, templates.points_slip(self.slip, points, self.money(money), balance_after))
        return result

    async def _confirm_balance(self, event_id: str, member: Member, expected: float) -> float:
        """The balance once our deduction has landed (reactions are asynchronous)."""
        deadline = time.monotonic() + REACTION_WAIT
        while time.monotonic() < deadline:
            try:
                if points_of(await self.client.event_reactions(event_id)):
                    return (await self.client.get_wallet(member.id)).points_balance
            except RetryableError:
                pass
            await asyncio.sleep(0.05)
        log.warning("deduction for member %s not applied within %.0fs; trusting the pre-check",
                    member.masked, REACTION_WAIT)
        return expected

    async def _check_rate(self, event: EventDefinition, points: int) -> None:
        try:
            results = await self.client.test_reaction(event)
        except TillplugError as exc:
            log.info("test_reaction unavailable: %s", exc.code)
            return
        engine_points = -points_of([r for res in results for r in res.reactions])
        if engine_points and engine_points != points:
            log.warning("the engine deducts %s points for %s reported; the configured rate stays in force",
                        engine_points, points)
            self.events.publish("error", {"code": "rate_mismatch", "message": "The engine's points rule differs "
                                          "from the configured rate; tell a technician."})

    def _unknown_deduction(self, tx_id: str, key: str, points: int, member: Member) -> None:
        """The deduction may or may not have landed: queue a refund that is sent only if it did."""
        refund = self._event(self.config.engine.event_types.points_refund, member,
                             {"transactionId": tx_id, "points": points, "reverses": key})
        with self.checkouts.transaction() as tx:
            self.checkouts.set_deduction(tx, key, "unknown")
            self.outbox.enqueue(tx, kind="event", stream=tx_id, body=refund.body(),
                                event_key=refund.payload["eventKey"], requires_key=key)
        self.wake_outbox()

    def _refund(self, tx_id: str, deductions: list[Deduction], member: Member) -> int:
        total = 0
        with self.checkouts.transaction() as tx:
            for d in deductions:
                refund = self._event(self.config.engine.event_types.points_refund, member,
                                     {"transactionId": tx_id, "points": d.points, "reverses": d.event_key})
                self.outbox.enqueue(tx, kind="event", stream=tx_id, body=refund.body(),
                                    event_key=refund.payload["eventKey"])
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

    # -- 3.2 / 3.3 vouchers -----------------------------------------------------------

    async def apply_voucher(self, tx_id: str, code: str, check_only: bool | None = None) -> dict[str, Any]:
        code = code.strip()
        if not code or len(code) > 128:
            raise InvalidRequest("A voucher code is 1 to 128 characters.")
        checkout = self._open(tx_id)
        classified = self.classifier.classify(code)
        if classified.kind is ScanKind.LOCAL_POOL:
            # Codes the POS manages alone: never sent to the engine.
            result = {"transactionId": tx_id, "kind": "local_pool", "code": classified.code}
            self.events.publish("voucher_result", result, lane=checkout.lane)
            return result
        if classified.kind is ScanKind.VOUCHER:
            code = classified.code
        if any(v.code == code for v in checkout.vouchers):
            raise CheckoutConflict("This voucher is already applied to this sale.")
        if check_only is None:
            check_only = self.config.vouchers.mode == "check_then_burn"
        member_id = checkout.member.id if checkout.member else None
        try:
            benefit = await self.client.validate_voucher(code, check_only=check_only, user_identifier=member_id)
        except VoucherError as exc:
            self.events.publish("voucher_result", {"transactionId": tx_id, "code": code, "ok": False,
                                                   "error": exc.code, "message": exc.message}, lane=checkout.lane)
            raise
        return await self._applied(tx_id, benefit, burned=not check_only)

    async def _applied(self, tx_id: str, benefit: Benefit, *, burned: bool) -> dict[str, Any]:
        voucher = AppliedVoucher(
            code=benefit.code.value if benefit.code else "", benefit_id=benefit.id,
            name=benefit.reward.name if benefit.reward else "Voucher",
            discounts=[d.model_dump(exclude_none=True, by_alias=True) for d in (benefit.reward.discounts if benefit.reward else [])],
            burned=burned,
        )
        async with self._lock(self._tx_locks, tx_id):
            checkout = self._checkout(tx_id)
            checkout.vouchers.append(voucher)
            with self.checkouts.transaction() as tx:
                self.checkouts.save(tx, checkout)
        result = {"transactionId": tx_id, "kind": "engine", "ok": True, **voucher.to_api()}
        self.events.publish("voucher_result", result, lane=checkout.lane)
        if self.config.receipts.voucher_receipt:
            result["printed"] = await self._print(checkout.lane,
                                                  templates.voucher_receipt(self.slip, benefit, burned=burned))
        return result

    async def list_benefits(self, tx_id: str) -> list[dict[str, Any]]:
        member = self._member_of(self._checkout(tx_id))
        benefits = await self.client.list_benefits(member.id)
        return [benefit_view(b) for b in benefits if b.state() in ("created", "redeemed")]

    async def redeem_benefit(self, tx_id: str, benefit_id: str, check_only: bool | None = None) -> dict[str, Any]:
        checkout = self._open(tx_id)
        member = self._member_of(checkout)
        owned = {b.id: b for b in await self.client.list_benefits(member.id)}
        benefit = owned.get(benefit_id)
        if benefit is None:
            raise BenefitNotFound("This voucher is not in the member's wallet.")
        if benefit.state() == "created":
            benefit = await self.client.redeem_benefit(benefit_id)
        if benefit.code is None:
            raise InvalidRequest("This voucher has no code to validate.")
        if check_only is None:
            check_only = self.config.vouchers.mode == "check_then_burn"
        validated = await self.client.validate_voucher(benefit.code.value, check_only=check_only,
                                                       user_identifier=member.id)
        return await self._applied(tx_id, validated, burned=not check_only)

    # -- 2. completion and voids ---------------------------------------------------

    async def complete(self, tx_id: str, total: int, basket: list[dict[str, Any]], payment_confirmed: bool) -> dict[str, Any]:
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
            payload = {"transactionId": tx_id, "cashierId": checkout.cashier_id, "total": total,
                       "currency": self.config.currency, "basket": lines,
                       "pointsRedeemed": sum(d.points for d in self.checkouts.deductions(tx_id, "confirmed"))}
            event = self._event(types.transaction, member, {k: v for k, v in payload.items() if v is not None})
            key = event.payload["eventKey"]
            checkout.state, checkout.total = "completed", total
            with self.checkouts.transaction() as tx:
                if self.config.engine.earn_mode == "orders":
                    order = Order(orderId=tx_id, totalSpend=total, currency=self.config.currency, lines=lines,
                                  submitter={"authIdentifier": member.auth_identifier}
                                  if member and member.auth_identifier else None,
                                  metadata={"eventKey": key, "tillId": self.config.till_id,
                                            "branchId": self.config.branch_id, "cashierId": checkout.cashier_id})
                    self.outbox.enqueue(tx, kind="order", stream=tx_id, body=order.body(), event_key=key)
                else:
                    self.outbox.enqueue(tx, kind="event", stream=tx_id, body=event.body(), event_key=key)
                self.checkouts.save(tx, checkout)
        self._closed(checkout)
        self.wake_outbox()
        expected = await self._expected_points(event, total) if member else 0
        result = {"transactionId": tx_id, "state": "completed", "expectedPoints": expected, "eventKey": key,
                  "voucherBurnFailures": burn_failures}
        self.events.publish("checkout_completed", {k: v for k, v in result.items() if k != "eventKey"},
                            lane=checkout.lane)
        if member and self.config.receipts.sale_summary:
            result["printed"] = await self._print(
                checkout.lane, templates.sale_summary(self.slip, tx_id, self.money(total), expected))
        return result

    async def _burn_checked(self, checkout: Checkout) -> list[dict[str, str]]:
        """check_then_burn: vouchers checked at scan are burned now that payment is confirmed."""
        failures = []
        for v in checkout.vouchers:
            if v.burned:
                continue
            try:
                await self.client.validate_voucher(v.code, user_identifier=checkout.member.id if checkout.member else None)
                v.burned = True
            except TillplugError as exc:
                log.warning("could not burn voucher at completion of %s: %s", checkout.tx_id, exc.code)
                failures.append({"code": v.code, "error": exc.code, "message": exc.message})
        return failures

    async def _expected_points(self, event: EventDefinition, total: int) -> int:
        if self.config.engine.confirm_rate_with_test_reaction:
            try:
                return int(points_of([r for res in await self.client.test_reaction(event) for r in res.reactions]))
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
        result = {"transactionId": tx_id, "state": "voided", "pointsRefunded": refunded,
                  "vouchersNotReinstated": burned}
        self.events.publish("checkout_voided", result, lane=checkout.lane)
        if refunded and self.config.receipts.points_slip:
            result["printed"] = await self._print(checkout.lane, templates.refund_slip(self.slip, tx_id, refunded))
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
                        self.events.publish("voucher_result", {"code": classified.code, "ok": False, "checkOnly": True,
                                                               "error": exc.code, "message": exc.message}, lane=lane)
                        raise
                    self.events.publish("voucher_result", {"code": classified.code, "ok": True, "checkOnly": True,
                                                           **benefit_view(b)}, lane=lane)
            elif kind is ScanKind.LOCAL_POOL:
                self.events.publish("scan", {**base, "code": classified.code}, lane=lane)
            else:
                self.events.publish("scan", {**base, "text": text, **classified.details}, lane=lane)
        except TillplugError as exc:
            if not isinstance(exc, VoucherError):  # voucher outcomes were already published
                self.events.publish("error", {"code": exc.code, "message": exc.message, "scanKind": kind.value},
                                    lane=lane)
        return classified


__all__ = ["Loyalty"]
