"""What every flow shares: the config, the engine, the checkouts, member look-up, printing."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from tillplug.barcodes.classify import Classifier, ScanKind
from tillplug.config.model import Config
from tillplug.engine.models import (
    Benefit,
    EventDefinition,
    Wallet,
    new_event_key,
)
from tillplug.errors import (
    CheckoutConflict,
    CheckoutNotFound,
    InvalidRequest,
    MemberNotFound,
    PrinterNotReady,
    TillplugError,
)
from tillplug.flows.checkouts import (
    Checkout,
    CheckoutStore,
    Member,
)
from tillplug.flows.events import EventBus
from tillplug.logs import mask
from tillplug.money import Money, points_to_money
from tillplug.outbox.store import OutboxStore
from tillplug.receipts import templates
from tillplug.receipts.layout import Receipt

log = logging.getLogger(__name__)
TX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MEMBER_TTL = 600.0
MEMBER_CACHE = 1000

# Queues a slip on the lane's printer and answers {"job": ID, "state": "queued"} at once (tillplug.spool).
Printer = Callable[[int, Receipt], Awaitable[dict[str, Any]]]


def benefit_view(b: Benefit) -> dict[str, Any]:
    return {
        "id": b.id,
        "state": b.state(),
        "name": b.reward.name if b.reward else "",
        "expiresAt": b.expires_at,
        "code": b.code.value if b.code and b.state() != "created" else None,
        "discounts": [d.model_dump(exclude_none=True, by_alias=True) for d in (b.reward.discounts if b.reward else [])],
    }


class FlowBase:
    def __init__(
        self,
        config: Config,
        client: Any,
        outbox: OutboxStore,
        *,
        events: EventBus | None = None,
        wake_outbox: Callable[[], None] = lambda: None,
        printer: Printer | None = None,
    ) -> None:
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
        self.slip = templates.SlipContext.from_config(config)

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

    async def _print(self, lane: int, receipt: Receipt) -> dict[str, Any] | None:
        """The queued print job, or None when there is no printer to queue it on."""
        if self.printer is None:
            return None
        try:
            return await self.printer(lane, receipt)
        except (PrinterNotReady, TillplugError) as exc:
            self.events.publish("error", {"code": exc.code, "message": exc.message}, lane=lane)
            return None

    def _event(self, type_: str, member: Member | None, payload: dict[str, Any]) -> EventDefinition:
        body = {
            "eventKey": new_event_key(),
            "tillId": self.config.till_id,
            "branchId": self.config.branch_id,
            **payload,
        }
        return EventDefinition(
            type=type_, subject=member.id if member else None, executor=self.config.till_id, payload=body
        )

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
            "member": member.masked,
            "pointsBalance": int(wallet.points_balance),
            "lifetimePoints": int(wallet.lifetime_earn),
            "tier": wallet.tier.name if wallet.tier else None,
            "pointsValue": self.money(
                points_to_money(
                    max(0, int(wallet.points_balance)), self.config.points.rate_points, self.config.points.rate_money
                )
            ).to_dict(),
            "vouchers": usable,
        }

    async def lookup(self, code: str, *, lane: int | None = None, print_slip: bool = False) -> dict[str, Any]:
        member, wallet = await self.find_member(code)
        view = self.wallet_view(member, wallet)
        self.events.publish("member_found", view, lane=lane)
        if print_slip and lane is not None and self.config.receipts.balance_slip:
            view["print"] = await self._print(lane, templates.balance_slip(self.slip, member.masked, wallet))
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
            "transactionId": checkout.tx_id,
            "lane": checkout.lane,
            "cashierId": checkout.cashier_id,
            "state": checkout.state,
            "member": checkout.member.masked if checkout.member else None,
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
            if (
                checkout.member is not None
                and checkout.member.id != member.id
                and (checkout.vouchers or self.checkouts.deductions(tx_id, "confirmed"))
            ):
                # Refunds must go back to whoever spent: the member cannot change under them.
                raise CheckoutConflict("Another member already used points or vouchers on this sale; void it first.")
            checkout.member = member
            with self.checkouts.transaction() as tx:
                self.checkouts.save(tx, checkout)
        view = {**self.view(checkout), "wallet": self.wallet_view(member, wallet)}
        self.events.publish("member_attached", {"transactionId": tx_id, **view["wallet"]}, lane=checkout.lane)
        return view
