"""The loyalty flows of the seed document, one checkout per lane, composed of four parts.

1 member look-up · 2 earning on completion · 3.1 spending points as money ·
3.2 user-led and 3.3 cashier-led vouchers · voids.  ``Loyalty`` holds a
checkout book, points, vouchers and completion, which share one
``FlowContext`` (config, engine, store, locks, stream) and nothing else; every
call on one checkout runs under that checkout's lock.  The settler settles
unknown outcomes by look-up and tells the till on the event stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tillplug.barcodes.classify import Classified, ScanKind
from tillplug.config.model import Config
from tillplug.engine.client import EngineClient
from tillplug.errors import MemberNotFound, TillplugError, VoucherError
from tillplug.flows import answers
from tillplug.flows.book import CheckoutBook
from tillplug.flows.checkouts import Checkout, CheckoutStore
from tillplug.flows.completion import BasketLine, Completion
from tillplug.flows.context import FlowContext, Printer
from tillplug.flows.events import EventBus, ScanOutcome, ScanResult
from tillplug.flows.points import DeductionIntents, Points
from tillplug.flows.returns import ReturnAnswer, ReturnRequest, Returns
from tillplug.flows.settle import Settler
from tillplug.flows.vouchers import BurnIntents, Vouchers
from tillplug.outbox.store import OutboxStore
from tillplug.receipts.templates import SlipContext

log = logging.getLogger(__name__)


class Loyalty:
    """The flows of the seed, one façade: what the API, the scanners and the daemon call."""

    def __init__(
        self,
        config: Config,
        client: EngineClient,
        outbox: OutboxStore,
        *,
        events: EventBus | None = None,
        wake_outbox: Callable[[], None] = lambda: None,
        printer: Printer | None = None,
    ) -> None:
        self.ctx = FlowContext(config, client, outbox, events=events, wake_outbox=wake_outbox, printer=printer)
        self.book = CheckoutBook(self.ctx)
        self.points = Points(self.ctx)
        self.vouchers = Vouchers(self.ctx)
        self.completion = Completion(self.ctx, self.book, self.points)
        self.returns = Returns(self.ctx, self.points.shown_applied)
        # The one settler of unknown outcomes, for every kind of intent (tillplug.flows.intents), and of
        # the take-backs that wait for their sale's earn.
        self.settler = Settler(
            self.ctx,
            [DeductionIntents(self.ctx, self.points), BurnIntents(self.ctx, self.vouchers)],
            waiting=[self.returns.settle_waiting],
        )

    # -- what the daemon and tests read ---------------------------------------------------

    @property
    def config(self) -> Config:
        return self.ctx.config

    @property
    def client(self) -> EngineClient:
        return self.ctx.client

    @property
    def checkouts(self) -> CheckoutStore:
        return self.ctx.store

    @property
    def events(self) -> EventBus:
        return self.ctx.events

    @property
    def slip(self) -> SlipContext:
        return self.ctx.slip

    def reconfigure(self, config: Config) -> None:
        self.ctx.reconfigure(config)

    # -- the till's calls ---------------------------------------------------------------------

    async def lookup(self, code: str, *, lane: int | None = None, print_slip: bool = False) -> answers.Wallet:
        return await self.book.lookup(code, lane=lane, print_slip=print_slip)

    async def open_checkout(self, tx_id: str, lane: int, cashier_id: str | None) -> answers.CheckoutView:
        return await self.book.open_checkout(tx_id, lane, cashier_id)

    def get_checkout(self, tx_id: str) -> answers.CheckoutView:
        return self.book.get_checkout(tx_id)

    def open_on_lane(self, lane: int) -> Checkout | None:
        return self.book.open_on_lane(lane)

    async def attach_member(self, tx_id: str, code: str, entry: str = "keyed") -> answers.CheckoutWithWallet:
        return await self.book.attach_member(tx_id, code, entry)

    async def spend_points(self, tx_id: str, points: int) -> answers.PointsSpent | answers.PointsPending:
        return await self.points.spend(tx_id, points)

    async def apply_voucher(
        self, tx_id: str, code: str, check_only: bool | None = None
    ) -> answers.LocalPoolVoucher | answers.EngineVoucher | answers.VoucherPending:
        return await self.vouchers.apply(tx_id, code, check_only)

    async def list_benefits(self, tx_id: str) -> list[answers.Benefit]:
        return await self.vouchers.list_benefits(tx_id)

    async def redeem_benefit(
        self, tx_id: str, benefit_id: str, check_only: bool | None = None
    ) -> answers.EngineVoucher | answers.VoucherPending:
        return await self.vouchers.redeem(tx_id, benefit_id, check_only)

    async def tender(self, tx_id: str) -> answers.Tendered:
        return await self.vouchers.tender(tx_id, self.points.finalize)

    async def complete(
        self, tx_id: str, total: int, basket: list[BasketLine], payment_confirmed: bool
    ) -> answers.Completed:
        return await self.completion.complete(tx_id, total, basket, payment_confirmed)

    async def void(self, tx_id: str) -> answers.Voided:
        return await self.completion.void(tx_id)

    async def return_sale(self, request: ReturnRequest) -> ReturnAnswer:
        return await self.returns.create(request)

    # -- scans --------------------------------------------------------------------------------

    async def scan(self, classified: Classified, lane: int) -> ScanOutcome:
        """A member card or voucher read by one of tillplug's scanners, acted on as routing classified it.

        A card joins the lane's open sale, else is looked up (with a balance slip); a voucher goes on
        the open sale, else is only checked.  The till hears the news on the event stream; the same
        news comes back as the outcome, from which the scan path chooses the scanner's feedback.
        """
        checkout = self.open_on_lane(lane)
        try:
            if classified.kind is ScanKind.MEMBER:
                return await self._member_scanned(classified, lane, checkout)
            if classified.kind is ScanKind.VOUCHER:
                return await self._voucher_scanned(classified, lane, checkout)
        except VoucherError as exc:  # its voucher_result has told the till already
            return ScanOutcome(ScanResult.VOUCHER_REFUSED, error=exc.code)
        except TillplugError as exc:
            self.events.publish(
                "error", {"code": exc.code, "message": exc.message, "scanKind": classified.kind.value}, lane=lane
            )
            failed = ScanResult.MEMBER_NOT_FOUND if isinstance(exc, MemberNotFound) else ScanResult.FAILED
            return ScanOutcome(failed, error=exc.code)
        raise ValueError(f"a {classified.kind.value} scan is the till's, not loyalty's")

    async def _member_scanned(self, card: Classified, lane: int, checkout: Checkout | None) -> ScanOutcome:
        if checkout is not None:
            await self.book.attach_member(checkout.tx_id, card, "scanned")
            return ScanOutcome(ScanResult.MEMBER_ATTACHED)
        view = await self.book.lookup(card, lane=lane, print_slip=True)
        return ScanOutcome(ScanResult.MEMBER_FOUND, slip_failed=self._slip_failed(view))

    async def _voucher_scanned(self, voucher: Classified, lane: int, checkout: Checkout | None) -> ScanOutcome:
        if checkout is None:  # no sale to apply it to: only check it, never burn it
            await self.vouchers.check_scan(voucher.code, lane)
            return ScanOutcome(ScanResult.VOUCHER_CHECKED)
        answer = await self.vouchers.apply(checkout.tx_id, voucher)
        if isinstance(answer, answers.Pending):
            return ScanOutcome(ScanResult.VOUCHER_PENDING)
        return ScanOutcome(ScanResult.VOUCHER_ACCEPTED, slip_failed=self._slip_failed(answer))

    def _slip_failed(self, answer: answers.Wallet | answers.EngineVoucher | answers.LocalPoolVoucher) -> bool:
        """A slip was due and not queued (``ctx.print`` told the till why, as an ``error``)."""
        if isinstance(answer, answers.LocalPoolVoucher):
            return False  # the shop's own code: no slip is ever due
        return self.ctx.printer is not None and "print" in answer.model_fields_set and answer.print is None

    # -- recovery and settling ----------------------------------------------------------------

    def recover(self) -> int:
        """At start-up: intents a crash left ``sending`` go to their kind (a deduction gets a
        refund-if-it-landed; a burn is looked up); how many there were."""
        return self.settler.recover()

    async def settle_owed(self) -> int:
        """One pass over every outcome the till is owed; returns how many are still unknown."""
        return await self.settler.settle_owed()

    async def run_settler(self, stop: asyncio.Event) -> None:
        await self.settler.run(stop)


__all__ = ["Loyalty"]
