"""What every flow shares: the config, the engine, the checkout store, the locks, the stream, printing.

The flows (checkout book, members, points, vouchers, completion) are separate
objects that each hold one ``FlowContext``; none inherits from another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from tillplug.barcodes.classify import Classifier
from tillplug.config.model import Config
from tillplug.engine.client import EngineClient
from tillplug.engine.models import EventDefinition, new_event_key
from tillplug.errors import (
    CheckoutConflict,
    CheckoutNotFound,
    MemberOffline,
    PrinterNotReady,
    TillplugError,
)
from tillplug.flows.answers import QueuedJob
from tillplug.flows.checkouts import Checkout, CheckoutStore, Member
from tillplug.flows.events import EventBus
from tillplug.flows.locks import KeyedLocks
from tillplug.money import Money
from tillplug.outbox.store import OutboxStore
from tillplug.receipts import templates
from tillplug.receipts.layout import Receipt

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")
# Queues a slip on the lane's printer and answers {"job": ID, "state": "queued"} at once (tillplug.spool).
Printer = Callable[[int, Receipt], Awaitable[Mapping[str, object]]]


class FlowContext:
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
        self.client = client
        self.outbox = outbox
        self.store = CheckoutStore(outbox)
        self.events = events or EventBus()
        self.wake_outbox = wake_outbox
        self.printer = printer
        self.checkout_locks = KeyedLocks()  # every call on one checkout, one at a time
        self.member_locks = KeyedLocks()  # one spend per member at a time on this till
        self.wake_settler: Callable[[], None] = lambda: None
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Rules, rates and slip texts from a (re)loaded config; they apply from the next request."""
        self.config = config
        self.classifier = Classifier(config.barcodes)
        self.slip = templates.SlipContext.from_config(config)

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A database write (a commit with fsync) off the event loop, as the outbox's delivery does."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def money(self, minor: int) -> Money:
        return Money(minor, self.config.currency)

    def checkout(self, tx_id: str) -> Checkout:
        checkout = self.store.get(tx_id)
        if checkout is None:
            raise CheckoutNotFound(f"There is no checkout {tx_id!r}.")
        return checkout

    def open(self, tx_id: str) -> Checkout:
        checkout = self.checkout(tx_id)
        if checkout.state != "open":
            raise CheckoutConflict(f"Checkout {tx_id} is already {checkout.state}.")
        return checkout

    @staticmethod
    def member_of(checkout: Checkout) -> Member:
        if checkout.member is None:
            raise CheckoutConflict("Scan the member's card first.")
        return checkout.member

    @staticmethod
    def online_member_of(checkout: Checkout, what: str) -> Member:
        member = FlowContext.member_of(checkout)
        if member.offline:
            raise MemberOffline(
                f"The loyalty service was offline when this card was scanned: {what} cannot be used. "
                "The sale still earns points; scan the card again once the service is back."
            )
        return member

    async def print(self, lane: int, receipt: Receipt) -> QueuedJob | None:
        """The queued print job, or None when there is no printer to queue it on."""
        if self.printer is None:
            return None
        try:
            queued = await self.printer(lane, receipt)
            # Queued is what this call did; the job's next states (it may be printing already) are print_job events.
            return QueuedJob.model_validate({"job": queued["job"], "state": "queued"})
        except (PrinterNotReady, TillplugError) as exc:
            self.events.publish("error", {"code": exc.code, "message": exc.message}, lane=lane)
            return None

    def event(self, type_: str, member: Member | None, payload: dict[str, Any]) -> EventDefinition:
        body = {
            "eventKey": new_event_key(),
            "tillId": self.config.till_id,
            "branchId": self.config.branch_id,
            **payload,
        }
        return EventDefinition(
            type=type_, subject=member.id if member else None, executor=self.config.till_id, payload=body
        )
