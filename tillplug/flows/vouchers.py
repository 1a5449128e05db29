"""3.2 user-led and 3.3 cashier-led vouchers, the three kinds of code of the seed, and tender.

A burn is irreversible, so it follows the money rules: an intent row before the
call; a refusal is final; an unknown outcome (timeout, reset, unreadable 2xx) is
looked up on the benefit (its ``burnedAt`` / the code's ``validatedAt``) and the
till is told the verdict on the event stream.  Check-only vouchers (``checkOnly``
or ``vouchers.mode = "check_then_burn"``) are burned by ``tender``, a call the till
makes *before* taking payment; a sale with an unburned voucher cannot complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from email.utils import parsedate_to_datetime
from typing import Any

from tillplug.barcodes.classify import Classified, ScanKind
from tillplug.engine.models import Benefit, parse_time
from tillplug.errors import (
    BenefitNotFound,
    CheckoutConflict,
    EngineAuthError,
    EngineRejected,
    InvalidRequest,
    OutcomeUnknown,
    TillplugError,
    VoucherError,
    VoucherExpired,
    VoucherNotRedeemed,
    VoucherUnknown,
    VoucherWrongVenue,
)
from tillplug.flows import answers
from tillplug.flows.book import benefit_view, voucher_view
from tillplug.flows.checkouts import AppliedVoucher, Burn, Checkout, Member
from tillplug.flows.context import FlowContext
from tillplug.flows.intents import Finding, IntentTable, Outcome, State, write_outcome
from tillplug.receipts import templates

log = logging.getLogger(__name__)
# What the engine's Date header (whole seconds) cannot see of a request: its round trip.
DATE_SLACK = 0.5
PENDING_MESSAGE = (
    "The loyalty service did not confirm the voucher. Do not give its discount yet: "
    "tillplug is checking whether it was used and will tell the till (voucher_settled)."
)
UNVERIFIABLE_MESSAGE = (
    "tillplug cannot tell whether voucher {code} was used on this sale or elsewhere just before: "
    "its discount is not given. Ask a supervisor to check the voucher in the loyalty service."
)
# What a look-up of an unknown burn can find (``Finding``s of the intent machine): our burn; not
# burned (absent: believed once our request cannot be in flight); burned by someone else before
# our intent (ours was refused, whatever comes late); burned, but whose cannot be told.
OURS = Finding(Outcome.LANDED)
NOT_BURNED = Finding(Outcome.NOT_LANDED, absent=True)
USED_BEFORE = Finding(Outcome.NOT_LANDED)
UNVERIFIABLE = Finding(Outcome.UNKNOWN)
# A check-only refusal that shows the code is not burned now (so our burn did not land).
_UNBURNED_REFUSALS = (VoucherUnknown, VoucherNotRedeemed, VoucherWrongVenue)


def _applied(benefit: Benefit, *, burned: bool, code: str | None = None) -> AppliedVoucher:
    return AppliedVoucher(
        code=benefit.code.value if benefit.code else (code or ""),
        benefit_id=benefit.id,
        name=benefit.reward.name if benefit.reward else "Voucher",
        discounts=[
            d.model_dump(exclude_none=True, by_alias=True) for d in (benefit.reward.discounts if benefit.reward else [])
        ],
        burned=burned,
    )


def owned_by(benefit: Benefit, member: Member) -> bool:
    """tillplug's own owner check: whatever the engine's filter did, only the member's own benefits."""
    owner = benefit.owner or {}
    return owner.get("id") in (None, member.id) and owner.get("authIdentifier") in (None, member.auth_identifier)


def engine_offset(server_date: str | None, seen: float | None) -> tuple[float, float]:
    """(estimate, lower bound) of the engine's clock minus ours, from its last Date header.

    The clocks are taken to agree unless the Date header proves otherwise; then the
    estimate is its upper bound, the latest our intent can be on the engine's clock,
    so that no burn is taken for ours on a guess.  No Date header: (0, -DATE_SLACK).
    """
    if not server_date or seen is None:
        return 0.0, -DATE_SLACK
    try:
        engine = parsedate_to_datetime(server_date).timestamp()
    except (TypeError, ValueError):
        return 0.0, -DATE_SLACK
    low, high = engine - seen - DATE_SLACK, engine + 1 - seen + DATE_SLACK
    return (0.0 if low <= 0.0 <= high else high), low


def intent_window(since: float, offset: tuple[float, float]) -> tuple[float, float]:
    """Our intent written at ``since`` (our clock) on the engine's clock, with ``offset`` (estimate,
    lower bound) of the engine's clock minus ours (``engine_offset``): (ours if burned from, another's
    if burned before), as ``verdict_between`` takes them."""
    estimate, low = offset
    return since + estimate, since + low


def burn_verdict(benefit: Benefit, since: float, offset: tuple[float, float]) -> Finding:
    """Whose burn the benefit shows, against our intent written at ``since`` (``intent_window``)."""
    return verdict_between(benefit, *intent_window(since, offset))


def verdict_between(benefit: Benefit, ours_from: float, others_before: float) -> Finding:
    """Whose burn the benefit shows, with our intent placed on the engine's clock.

    Ours only if it was burned at or after ``ours_from`` (our intent at the latest); clearly
    before ``others_before`` (our intent at the earliest), someone else's (a code burns once: ours
    was refused); in between, the clocks cannot tell them apart and the verdict is never "ours".
    """
    burned = parse_time(benefit.burned_at)
    if burned is not None:
        if burned.timestamp() >= ours_from:
            return OURS
        return USED_BEFORE if burned.timestamp() < others_before else UNVERIFIABLE
    # An engine that shows no burnedAt: a validation since our intent is the burn's only trace
    # (an older one is the check that came before it, not a burn).
    validated = parse_time(benefit.code.validated_at if benefit.code else None)
    if validated is not None and validated.timestamp() >= ours_from:
        return OURS
    return NOT_BURNED


def burn_key(burn_id: int) -> str:
    """The burn's name for the in-flight rule (``EngineClient.in_flight``)."""
    return f"burn:{burn_id}"


class Vouchers:
    def __init__(self, ctx: FlowContext) -> None:
        self.ctx = ctx
        # burn intent id -> time.monotonic() of the intent, while its outcome is unknown: puts the
        # intent on the engine's clock whatever our wall clock does meanwhile (``_intent_on_engine_clock``).
        self._intents: dict[int, float] = {}

    # -- the burn, with its intent row ---------------------------------------------------

    async def _burn(self, checkout: Checkout, code: str, benefit_id: str | None) -> tuple[int, Benefit | None]:
        """Burn ``code``: (intent id, benefit) if it landed, (intent id, None) if unknown (pending).

        A refusal marks the intent failed and is raised.
        """
        ctx = self.ctx
        member = checkout.member
        # The intent's wall stamp and its steady moment are taken together: a slow commit between
        # them once made our own burn look stamped by a stepped clock ("unverifiable").
        created, intent = time.time(), time.monotonic()
        burn_id = await ctx.db(ctx.store.begin_burn, checkout.tx_id, code, benefit_id, created)
        try:
            benefit = await ctx.client.validate_voucher(code, user_identifier=member.id if member else None)
        except Exception as exc:
            if write_outcome(exc) is Outcome.NOT_LANDED:
                await ctx.db(ctx.store.settle_burn, burn_id, State.NOT_LANDED)
                raise
            log.warning("voucher burn on %s: outcome unknown (%s); looking it up", checkout.tx_id, type(exc).__name__)
            self._intents[burn_id] = intent
            await ctx.db(ctx.store.settle_burn, burn_id, State.UNKNOWN, owed=True)
            ctx.wake_settler()
            return burn_id, None
        finally:
            ctx.client.in_flight.sent(burn_key(burn_id))  # answered or not, the attempt is over
        return burn_id, benefit

    def _pending_answer(self, checkout: Checkout, code: str) -> answers.VoucherPending:
        result = answers.VoucherPending(
            transactionId=checkout.tx_id,
            kind="engine",
            ok=False,
            pending=True,
            code=code,
            discounts=[],
            burned=False,
            message=PENDING_MESSAGE,
        )
        self.ctx.events.publish("voucher_pending", result.event_data(exclude={"message"}), lane=checkout.lane)
        return result

    async def _keep(self, tx_id: str, burn_id: int | None, voucher: AppliedVoucher) -> Checkout:
        """Add the voucher to the checkout, re-read after the engine call; a closed sale is reported."""
        ctx = self.ctx
        checkout = ctx.checkout(tx_id)
        if checkout.state != "open":
            if burn_id is not None:
                await ctx.db(ctx.store.settle_burn, burn_id, State.LANDED)
                self._burned_on_closed(checkout, voucher.code)
            raise CheckoutConflict(f"Checkout {tx_id} was closed meanwhile.")
        checkout.vouchers.append(voucher)
        if burn_id is not None:
            await ctx.db(ctx.store.settle_burn, burn_id, State.LANDED, checkout=checkout)
        else:
            await ctx.db(ctx.store.commit, checkout)
        return checkout

    def _burned_on_closed(self, checkout: Checkout, code: str) -> None:
        log.error("voucher %s was burned on checkout %s after it was %s", code, checkout.tx_id, checkout.state)
        self.ctx.events.publish(
            "error",
            {
                "code": "voucher_burned_on_closed_checkout",
                "transactionId": checkout.tx_id,
                "voucher": code,
                "message": f"Voucher {code} was used up on sale {checkout.tx_id}, which is already "
                f"{checkout.state}. It cannot be given back by tillplug; tell a supervisor.",
            },
            lane=checkout.lane,
        )

    async def _validate_on(
        self, checkout: Checkout, code: str, benefit_id: str | None, member_id: str | None, *, check_only: bool
    ) -> tuple[Checkout, AppliedVoucher, Benefit] | answers.VoucherPending:
        """Check ``code`` only, or burn it behind its intent row; then keep it on the sale.

        The checkout re-read with the voucher on it, or the 202 answer when the burn's outcome is unknown.
        """
        burn_id: int | None = None
        try:
            if check_only:
                benefit = await self.ctx.client.validate_voucher(code, check_only=True, user_identifier=member_id)
            else:
                burn_id, found = await self._burn(checkout, code, benefit_id)
                if found is None:
                    return self._pending_answer(checkout, code)
                benefit = found
        except VoucherError as exc:
            self._refused(checkout, code, exc)
            raise
        voucher = _applied(benefit, burned=not check_only, code=code)
        return await self._keep(checkout.tx_id, burn_id, voucher), voucher, benefit

    async def _result(self, checkout: Checkout, voucher: AppliedVoucher, benefit: Benefit) -> answers.EngineVoucher:
        ctx = self.ctx
        result = answers.EngineVoucher(
            transactionId=checkout.tx_id, kind="engine", ok=True, pending=False, **dict(voucher_view(voucher))
        )
        ctx.events.publish("voucher_result", result.event_data(), lane=checkout.lane)
        if ctx.config.receipts.voucher_receipt:
            result.print = await ctx.print(
                checkout.lane, templates.voucher_receipt(ctx.slip, benefit, burned=voucher.burned)
            )
        return result

    def _refused(self, checkout: Checkout, code: str, exc: TillplugError) -> None:
        self.ctx.events.publish(
            "voucher_result",
            {"transactionId": checkout.tx_id, "code": code, "ok": False, "error": exc.code, "message": exc.message},
            lane=checkout.lane,
        )

    # -- 3.2 user-led ----------------------------------------------------------------------

    async def apply(
        self, tx_id: str, given: str | Classified, check_only: bool | None = None
    ) -> answers.LocalPoolVoucher | answers.EngineVoucher | answers.VoucherPending:
        """``given``: the till's text, or a voucher scanned at a scanner as routing classified it (not again)."""
        scanned = given if isinstance(given, Classified) else None
        code = (given.code if isinstance(given, Classified) else given).strip()
        if not code or len(code) > 128:
            raise InvalidRequest("A voucher code is 1 to 128 characters.")
        ctx = self.ctx
        async with ctx.checkout_locks.hold(tx_id):
            checkout = ctx.open(tx_id)
            classified = scanned or ctx.classifier.classify(code, read_product=False)
            if classified.kind is ScanKind.LOCAL_POOL:
                # Codes the POS manages alone: never sent to the engine.
                local = answers.LocalPoolVoucher(transactionId=tx_id, kind="local_pool", code=classified.code)
                ctx.events.publish("voucher_result", local.event_data(), lane=checkout.lane)
                return local
            if classified.kind is ScanKind.VOUCHER:
                code = classified.code
            if any(v.code == code for v in checkout.vouchers):
                raise CheckoutConflict("This voucher is already applied to this sale.")
            if checkout.member is not None:
                ctx.online_member_of(checkout, "vouchers")
            if check_only is None:
                check_only = ctx.config.vouchers.mode == "check_then_burn"
            member_id = checkout.member.id if checkout.member else None
            kept = await self._validate_on(checkout, code, None, member_id, check_only=check_only)
            if isinstance(kept, answers.VoucherPending):  # the burn's outcome is being looked up
                return kept
        return await self._result(*kept)

    async def check_scan(self, code: str, lane: int) -> Benefit:
        """A voucher scanned with no sale open: only checked, never burned; the till is told."""
        try:
            benefit: Benefit = await self.ctx.client.validate_voucher(code, check_only=True)
        except VoucherError as exc:
            self.ctx.events.publish(
                "voucher_result",
                {"code": code, "ok": False, "checkOnly": True, "error": exc.code, "message": exc.message},
                lane=lane,
            )
            raise
        self.ctx.events.publish(
            "voucher_result",
            {"code": code, "ok": True, "checkOnly": True, **benefit_view(benefit).event_data()},
            lane=lane,
        )
        return benefit

    # -- 3.3 cashier-led ---------------------------------------------------------------------

    async def list_benefits(self, tx_id: str) -> list[answers.Benefit]:
        ctx = self.ctx
        async with ctx.checkout_locks.hold(tx_id):
            member = ctx.online_member_of(ctx.checkout(tx_id), "vouchers")
            benefits = await ctx.client.list_benefits(member.id)
        return [benefit_view(b) for b in benefits if owned_by(b, member) and b.state() in ("created", "redeemed")]

    async def redeem(
        self, tx_id: str, benefit_id: str, check_only: bool | None = None
    ) -> answers.EngineVoucher | answers.VoucherPending:
        ctx = self.ctx
        async with ctx.checkout_locks.hold(tx_id):
            checkout = ctx.open(tx_id)
            member = ctx.online_member_of(checkout, "vouchers")
            owned = {b.id: b for b in await ctx.client.list_benefits(member.id) if owned_by(b, member)}
            benefit = owned.get(benefit_id)
            if benefit is None:
                raise BenefitNotFound("This voucher is not in the member's wallet.")
            if benefit.state() == "expired":
                # Never redeemed before it expired: it has no code (the engine assigns one on redeem).
                raise VoucherExpired("This voucher expired before it was used.")
            if benefit.state() == "created":
                benefit = await self._activate(benefit_id)
            if benefit.code is None:
                raise InvalidRequest("This voucher has no code to validate.")
            code = benefit.code.value
            checkout = ctx.open(tx_id)
            if any(v.code == code for v in checkout.vouchers):
                raise CheckoutConflict("This voucher is already applied to this sale.")
            if check_only is None:
                check_only = ctx.config.vouchers.mode == "check_then_burn"
            kept = await self._validate_on(checkout, code, benefit_id, member.id, check_only=check_only)
            if isinstance(kept, answers.VoucherPending):  # the burn's outcome is being looked up
                return kept
        return await self._result(*kept)

    async def _activate(self, benefit_id: str) -> Benefit:
        """redeem_benefit (activation, not a burn); an unknown outcome is looked up on the benefit at once."""
        client = self.ctx.client
        try:
            activated: Benefit = await client.redeem_benefit(benefit_id)
            return activated
        except TillplugError as exc:
            if write_outcome(exc) is Outcome.NOT_LANDED:
                raise
            unknown = exc
        try:
            again: Benefit = await client.get_benefit(benefit_id)
        except TillplugError:
            again = None  # type: ignore[assignment]
        if again is not None and again.redeemed_at:
            return again
        raise OutcomeUnknown(
            "The loyalty service did not confirm activating this voucher and tillplug could not check it; "
            "nothing was used. Try again."
        ) from unknown

    # -- tender: burn what was only checked, before payment ----------------------------------

    async def tender(
        self, tx_id: str, finalize_points: Callable[[str], Awaitable[answers.PointsFinal]]
    ) -> answers.Tendered:
        """Before payment: the sale's points made final (``finalize_points``; it raises if they were
        given back, before any voucher is burned), then every voucher only checked is burned."""
        ctx = self.ctx
        burned: list[str] = []
        failed: list[answers.BurnFailure] = []
        pending: list[str] = []
        async with ctx.checkout_locks.hold(tx_id):
            ctx.open(tx_id)
            points = await finalize_points(tx_id)
            checkout = ctx.open(tx_id)
            for voucher in [v for v in checkout.vouchers if not v.burned]:
                try:
                    burn_id, benefit = await self._burn(checkout, voucher.code, voucher.benefit_id)
                except TillplugError as exc:
                    refused = isinstance(exc, VoucherError)
                    failed.append(
                        answers.BurnFailure(code=voucher.code, error=exc.code, message=exc.message, retry=not refused)
                    )
                    if refused:  # it cannot be used: it leaves the sale, and its discount with it
                        checkout.vouchers.remove(voucher)
                    continue
                if benefit is None:  # unknown: the settler adds it back if the burn landed
                    checkout.vouchers.remove(voucher)
                    pending.append(voucher.code)
                    continue
                voucher.burned = True
                burned.append(voucher.code)
                await ctx.db(ctx.store.settle_burn, burn_id, State.LANDED, checkout=checkout)
            checkout = await self._save_open(checkout)
            # Burns of earlier calls still unknown: until settled, the sale's discount is not known.
            pending = list(dict.fromkeys(pending + ctx.store.codes_awaiting_verdict(tx_id)))
        result = answers.Tendered(
            transactionId=tx_id,
            burned=burned,
            failed=failed,
            pending=pending,
            vouchers=[voucher_view(v) for v in checkout.vouchers],
            ready=not failed and not pending and points.state != "unconfirmed",
            points=points,
        )
        ctx.events.publish("tendered", result.event_data(), lane=checkout.lane)
        return result

    async def _save_open(self, checkout: Checkout) -> Checkout:
        current = self.ctx.checkout(checkout.tx_id)
        if current.state != "open":
            raise CheckoutConflict(f"Checkout {checkout.tx_id} was closed meanwhile.")
        await self.ctx.db(self.ctx.store.commit, checkout)
        return checkout

    # -- settling unknown burns ---------------------------------------------------------------

    async def look_up(self, burn: Burn, member: Member | None) -> Finding | None:
        """What the engine shows of an unknown burn (the benefit read is its evidence); None if it could not say."""
        client = self.ctx.client
        try:
            benefit: Benefit | None = None
            if burn.benefit_id:
                benefit = await client.get_benefit(burn.benefit_id)
            elif member is not None and not member.offline:
                benefits: list[Benefit] = await client.list_benefits(member.id)
                owned = (
                    b for b in benefits if b.code is not None and b.code.value == burn.code and owned_by(b, member)
                )
                benefit = next(owned, None)
            if benefit is None:
                checked = await self._check_code(burn.code)
                if checked is not UNVERIFIABLE:
                    return checked
                # Used, by whom is not said: only the benefit's burn time can tell.
                benefit = await self._find_by_code(burn.code)
                if benefit is None:
                    return UNVERIFIABLE
            ours_from, others_before = self._intent_on_engine_clock(burn)
            return replace(verdict_between(benefit, ours_from, others_before), evidence=benefit)
        except TillplugError as exc:
            log.info("look-up of an unknown voucher burn failed (%s); tried again later", exc.code)
        return None

    def _intent_on_engine_clock(self, burn: Burn) -> tuple[float, float]:
        """Our burn's intent on the engine's clock: (ours if burned from, another's if burned before).

        In this process, from the steady moment of the intent and the engine's Date headers
        (``EngineClient.engine_clock``): a step of our wall clock while the burn is pending changes
        nothing.  The stored wall time of the intent is taken where the engine's clock agrees with
        it, else the latest the intent can be.  After a restart only that wall time is left, compared
        through the last Date header (a step while tillplug was stopped cannot be seen).
        """
        client = self.ctx.client
        moment = self._intents.get(burn.id)
        at = client.engine_clock.at(moment) if moment is not None else None
        if at is None:
            return intent_window(burn.created, engine_offset(client.server_date, client.server_date_seen))
        return (burn.created if at.contains(burn.created) else at.high), at.low

    async def _find_by_code(self, code: str) -> Benefit | None:
        """The benefit carrying ``code``, whoever owns it; None if not found or the engine will not list them."""
        try:
            found: Benefit | None = await self.ctx.client.find_benefit_by_code(code)
        except EngineRejected as exc:
            if isinstance(exc, EngineAuthError):
                raise
            log.info("unknown voucher burn: the engine refused to list benefits (%s)", exc.code)
            return None
        return found

    async def _check_code(self, code: str) -> Finding:
        """No benefit to read (no member, or not in the member's wallet): check the code without burning it.

        Usable now means our burn did not land.  "Already used" says nothing of when or by
        whom: unverifiable until the benefit itself is read.
        """
        try:
            await self.ctx.client.validate_voucher(code, check_only=True)
        except _UNBURNED_REFUSALS:
            return NOT_BURNED
        except VoucherError as exc:  # already used, expired, refused in other words: burned or not is not said
            log.info("unknown voucher burn: the code's check was refused (%s)", exc.code)
            return UNVERIFIABLE
        return NOT_BURNED


class BurnIntents:
    """Voucher burns in the intent machine (``tillplug.flows.intents.Kind``): their look-up on the
    benefit, and what each verdict does to the sale."""

    settled_event = "voucher_settled"

    def __init__(self, ctx: FlowContext, vouchers: Vouchers) -> None:
        self.ctx = ctx
        self.vouchers = vouchers
        self.table: IntentTable[Burn] = ctx.store.burn_intents

    @staticmethod
    def key(burn: Burn) -> int:
        return burn.id

    @staticmethod
    def flight_key(burn: Burn) -> str:
        return burn_key(burn.id)

    async def look_up(self, burn: Burn, checkout: Checkout) -> Finding | None:
        return await self.vouchers.look_up(burn, checkout.member)

    def _told(self, burn: Burn, outcome: str, discounts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        self.vouchers._intents.pop(burn.id, None)
        applied = discounts is not None
        return {
            "transactionId": burn.tx_id,
            "code": burn.code,
            "outcome": outcome,
            "applied": applied,
            "discounts": discounts or [],
        }

    async def not_landed(self, burn: Burn, checkout: Checkout) -> dict[str, Any]:
        await self.ctx.db(self.ctx.store.settle_burn, burn.id, State.NOT_LANDED)
        return self._told(burn, "not_burned")

    async def landed_open(self, burn: Burn, checkout: Checkout, finding: Finding) -> dict[str, Any]:
        if any(v.code == burn.code and v.burned for v in checkout.vouchers):
            # The voucher was applied to this sale again meanwhile (the cashier redeemed it while this
            # burn's answer was lost) and the till was told then: one burn, one discount, never two.
            await self.ctx.db(self.ctx.store.settle_burn, burn.id, State.LANDED)
            return self._told(burn, "already_applied")
        voucher = _applied(finding.evidence, burned=True, code=burn.code)
        checkout.vouchers.append(voucher)
        await self.ctx.db(self.ctx.store.settle_burn, burn.id, State.LANDED, checkout=checkout)
        return self._told(burn, "burned", voucher.discounts)

    async def landed_closed(self, burn: Burn, checkout: Checkout, finding: Finding) -> dict[str, Any]:
        await self.ctx.db(self.ctx.store.settle_burn, burn.id, State.LANDED)
        self.vouchers._burned_on_closed(checkout, burn.code)
        return self._told(burn, "burned")

    async def cannot_tell(self, burn: Burn, checkout: Checkout, finding: Finding) -> dict[str, Any]:
        """Burned, by us or just before by someone else: no look-up will tell.  Held for a supervisor."""
        await self.ctx.db(self.ctx.store.settle_burn, burn.id, State.UNVERIFIABLE)
        return self._told(burn, "unverifiable") | {"message": UNVERIFIABLE_MESSAGE.format(code=burn.code)}

    def interrupted(self, burn: Burn) -> None:
        """A crash cut the burn off: looked up like any unknown burn, its verdict owed to the till."""
        self.ctx.store.settle_burn(burn.id, State.UNKNOWN, owed=True)
