"""The checkout book: member look-up, opening checkouts, attaching members (online or offline), views."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict

from tillplug.barcodes.classify import Classified, ScanKind
from tillplug.engine.models import Benefit, Wallet
from tillplug.errors import (
    CheckoutConflict,
    EngineUnavailable,
    InvalidRequest,
    MemberNotFound,
    TillplugError,
)
from tillplug.flows import answers
from tillplug.flows.checkouts import AppliedVoucher, Checkout, Member
from tillplug.flows.context import FlowContext
from tillplug.flows.intents import OPEN_STATES, State
from tillplug.logs import mask
from tillplug.money import points_to_money
from tillplug.receipts import templates

log = logging.getLogger(__name__)
TX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MEMBER_TTL = 600.0  # in memory: a card scanned at look-up and again at the checkout costs one GET /users
MEMBER_CACHE = 1000
# On disk, for offline attach: a card seen this recently is attached (by its WLL id) while the engine is down.
OFFLINE_MEMBER_TTL = 14 * 24 * 3600.0
SUBJECT_MAX = 128  # the longest identifier the engine takes as an event subject
# How a member code reached tillplug: read by a scanner, or typed by the cashier (the API's default).
ENTRIES = ("scanned", "keyed")
ADDED_IF_VALID = "Points will be added if the card is valid."


def benefit_view(b: Benefit) -> answers.Benefit:
    return answers.Benefit.model_validate(
        {
            "id": b.id,
            "state": b.state(),
            "name": b.reward.name if b.reward else "",
            "expiresAt": b.expires_at,
            "code": b.code.value if b.code and b.state() != "created" else None,
            "discounts": [
                d.model_dump(exclude_none=True, by_alias=True) for d in (b.reward.discounts if b.reward else [])
            ],
        }
    )


def voucher_view(v: AppliedVoucher) -> answers.AppliedVoucher:
    return answers.AppliedVoucher(
        code=v.code,
        benefitId=v.benefit_id,
        name=v.name,
        discounts=[answers.Discount.model_validate(d) for d in v.discounts],
        burned=v.burned,
    )


class CheckoutBook:
    def __init__(self, ctx: FlowContext) -> None:
        self.ctx = ctx
        # ident → (member, expiry): a card's UUID and authIdentifier do not change (engine-api.md part 1 §3).
        self._members: OrderedDict[str, tuple[Member, float]] = OrderedDict()
        self._open_by_lane: dict[int, str] | None = None  # lane → open checkout, mirrored from the database
        # Cards looked up whose offline-cache commit has not landed yet (ident → member), and its writer.
        self._remembering: dict[str, Member] = {}
        self._remember_task: asyncio.Task[None] | None = None

    # -- member look-up ----------------------------------------------------------------

    def member_ident(self, code: str | Classified) -> str:
        """What the engine is asked for.  A card scanned at a scanner comes classified (once, by routing);
        a till's text is classified here: a member rule's ``code`` group, else the text as given."""
        text = (code.code if isinstance(code, Classified) else code).strip()
        if not text or len(text) > 512:
            raise InvalidRequest("A member code is 1 to 512 characters.")
        if isinstance(code, Classified):
            return text
        classified = self.ctx.classifier.classify(text, read_product=False)
        return classified.code if classified.kind is ScanKind.MEMBER else text

    async def find_member(self, code: str | Classified, *, remember: bool = True) -> tuple[Member, Wallet]:
        """The member and wallet; with ``remember``, the card is kept for offline use before answering
        (``remember_member`` otherwise: a look-up does that once its slip is queued)."""
        ctx = self.ctx
        ident = self.member_ident(code)
        cached = self._members.get(ident)
        if cached is not None and cached[1] > time.monotonic():
            member = cached[0]
        else:
            user = await ctx.client.get_user(ident)
            member = Member(user.id, user.auth_identifier, mask(user.id))
            self._members[ident] = (member, time.monotonic() + MEMBER_TTL)
            self._members.move_to_end(ident)
            while len(self._members) > MEMBER_CACHE:
                self._members.popitem(last=False)
        try:
            wallet = await ctx.client.get_wallet(member.id)
        except MemberNotFound:
            self._members.pop(ident, None)  # closed since it was cached
            raise
        if remember:
            await self.remember_member(ident, member)
        return member, wallet

    async def remember_member(self, ident: str, member: Member) -> None:
        await self.ctx.db(self.ctx.store.remember_member, ident, member.id, OFFLINE_MEMBER_TTL)

    def remember_later(self, ident: str, member: Member) -> None:
        """The offline cache's commit (an fsync) off the look-up's path: neither the shopper's slip nor the
        lane's next scan waits for it.  Until it lands ``offline_member`` finds the card here; cards seen
        meanwhile share one commit.  A crash before it loses only a cache entry (the card is looked up)."""
        self._remembering[ident] = member
        if self._remember_task is None or self._remember_task.done():
            self._remember_task = asyncio.ensure_future(self._remember_pending())

    async def _remember_pending(self) -> None:
        while self._remembering:
            batch = dict(self._remembering)
            try:
                await self.ctx.db(
                    self.ctx.store.remember_members, {i: m.id for i, m in batch.items()}, OFFLINE_MEMBER_TTL
                )
            except TillplugError as exc:  # the cache only: the look-up it came from has answered already
                log.warning("cards seen could not be kept for offline use: %s", exc.message)
            finally:
                for ident, member in batch.items():
                    if self._remembering.get(ident) is member:
                        del self._remembering[ident]

    def offline_member(self, code: str | Classified, entry: str = "keyed") -> Member | None:
        """The member a card names while the engine is down, if tillplug can know it without asking.

        A card seen (looked up) in the last 14 days is known by its cached WLL id.  Otherwise a
        member code the engine accepts as an event subject (WLL id, account number or
        authIdentifier, at most 128 characters) is used as the subject itself: the sale's
        event, queued in the outbox, credits whoever the engine finds.  Keyed by hand, such a
        code may be a typo naming a stranger: it is ``unverified`` and no figure is promised.
        """
        ident = self.member_ident(code)
        pending = self._remembering.get(ident)
        cached = pending.id if pending is not None else self.ctx.store.recall_member(ident)
        if cached is not None:
            return Member(cached, None, mask(cached), offline=True)
        if isinstance(code, Classified):
            classified = code
        else:
            classified = self.ctx.classifier.classify(code.strip(), read_product=False)
        if classified.kind is ScanKind.MEMBER and 1 <= len(ident) <= SUBJECT_MAX:
            return Member(ident, None, mask(ident), offline=True, unverified=entry != "scanned")
        return None

    def wallet_view(self, member: Member, wallet: Wallet) -> answers.Wallet:
        cfg = self.ctx.config
        usable = [benefit_view(v) for v in wallet.vouchers if v.state() in ("created", "redeemed", "validated")]
        value = points_to_money(max(0, int(wallet.points_balance)), cfg.points.rate_points, cfg.points.rate_money)
        return answers.Wallet(
            member=member.masked,
            pointsBalance=int(wallet.points_balance),
            lifetimePoints=int(wallet.lifetime_earn),
            tier=wallet.tier.name if wallet.tier else None,
            pointsValue=answers.Money.of(self.ctx.money(value)),
            vouchers=usable,
        )

    async def lookup(
        self, code: str | Classified, *, lane: int | None = None, print_slip: bool = False
    ) -> answers.Wallet:
        member, wallet = await self.find_member(code, remember=False)
        view = self.wallet_view(member, wallet)
        self.ctx.events.publish("member_found", view.event_data(), lane=lane)
        if print_slip and lane is not None and self.ctx.config.receipts.balance_slip:
            view.print = await self.ctx.print(lane, templates.balance_slip(self.ctx.slip, member.masked, wallet))
        self.remember_later(self.member_ident(code), member)
        return view

    # -- checkouts -----------------------------------------------------------------------

    async def open_checkout(self, tx_id: str, lane: int, cashier_id: str | None) -> answers.CheckoutView:
        if not TX_ID.match(tx_id):
            raise InvalidRequest("transactionId must be 1-64 letters, digits, '.', '_', ':' or '-'.")
        if cashier_id is not None and not TX_ID.match(cashier_id):
            raise InvalidRequest("cashierId must be 1-64 letters, digits, '.', '_', ':' or '-'.")
        if not 1 <= lane <= 999:
            raise InvalidRequest("lane must be 1 to 999.")
        ctx = self.ctx
        checkout = Checkout(tx_id, lane, cashier_id)
        async with ctx.checkout_locks.hold(tx_id):
            if ctx.store.get(tx_id) is not None:
                raise CheckoutConflict(f"Checkout {tx_id} already exists.")
            await ctx.db(self._insert, checkout)
        self.lanes()[lane] = tx_id
        ctx.events.publish("checkout_opened", {"transactionId": tx_id}, lane=lane)
        return self.view(checkout)

    def _insert(self, checkout: Checkout) -> None:
        with self.ctx.store.transaction() as tx:
            self.ctx.store.insert(tx, checkout)

    def lanes(self) -> dict[int, str]:
        if self._open_by_lane is None:
            self._open_by_lane = dict(self.ctx.store.open_checkouts())
        return self._open_by_lane

    def closed(self, checkout: Checkout) -> None:
        if self.lanes().get(checkout.lane) == checkout.tx_id:
            del self.lanes()[checkout.lane]

    def open_on_lane(self, lane: int) -> Checkout | None:
        tx_id = self.lanes().get(lane)
        return self.ctx.store.get(tx_id) if tx_id else None

    def view(self, checkout: Checkout) -> answers.CheckoutView:
        store = self.ctx.store
        deductions = store.deductions(checkout.tx_id)
        taken = [d for d in deductions if d.state == State.LANDED]
        return answers.CheckoutView(
            transactionId=checkout.tx_id,
            lane=checkout.lane,
            cashierId=checkout.cashier_id,
            state=checkout.state,
            member=checkout.member.masked if checkout.member else None,
            offline=bool(checkout.member and checkout.member.offline),
            memberUnverified=bool(checkout.member and checkout.member.unverified),
            pointsSpent=sum(d.points for d in taken),
            pointsDiscount=answers.Money.of(self.ctx.money(sum(d.money for d in taken))),
            pointsPending=sum(d.points for d in deductions if d.state == State.UNKNOWN and d.owed),
            refunded=sum(d.points for d in deductions if d.state == State.REFUNDED),
            vouchers=[voucher_view(v) for v in checkout.vouchers],
            vouchersPending=store.codes_awaiting_verdict(checkout.tx_id),
        )

    def get_checkout(self, tx_id: str) -> answers.CheckoutView:
        return self.view(self.ctx.checkout(tx_id))

    async def attach_member(
        self, tx_id: str, code: str | Classified, entry: str = "keyed"
    ) -> answers.CheckoutWithWallet:
        """Attach the member ``code`` names; ``entry`` says how it came: ``scanned`` or ``keyed``."""
        if entry not in ENTRIES:
            raise InvalidRequest("entry is 'scanned' or 'keyed'.")
        ctx = self.ctx
        async with ctx.checkout_locks.hold(tx_id):
            ctx.open(tx_id)
            wallet: Wallet | None = None
            try:
                member, wallet = await self.find_member(code)
            except EngineUnavailable:
                offline = self.offline_member(code, entry)
                if offline is None:
                    raise
                member = offline
                log.warning("engine unreachable: member %s attached offline (earns through the outbox)", member.masked)
            checkout = ctx.open(tx_id)  # re-read after the engine call
            if checkout.member is not None and checkout.member.id != member.id:
                spent = ctx.store.deductions(tx_id)
                burning = any(b.awaiting_verdict for b in ctx.store.burns(tx_id))
                if checkout.vouchers or burning or any(d.state in (State.LANDED, *OPEN_STATES) for d in spent):
                    # Refunds must go back to whoever spent: the member cannot change under them.
                    raise CheckoutConflict(
                        "Another member already used points or vouchers on this sale; void it first."
                    )
            checkout.member = member
            checkout.balance = wallet.points_balance if wallet is not None else None
            await ctx.db(ctx.store.commit, checkout)
        if wallet is not None:
            seen = self.wallet_view(member, wallet)
            ctx.events.publish("member_attached", {"transactionId": tx_id, **seen.event_data()}, lane=checkout.lane)
            return answers.CheckoutWithWallet.of(self.view(checkout), seen)
        view = answers.CheckoutWithWallet.of(self.view(checkout), None)
        attached: dict[str, object] = {"transactionId": tx_id, "member": member.masked, "offline": True}
        if member.unverified:
            view.message = attached["message"] = ADDED_IF_VALID
            attached["memberUnverified"] = True
        ctx.events.publish("member_attached", attached, lane=checkout.lane)
        return view
