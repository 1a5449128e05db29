"""Settling what the intent machine (``tillplug.flows.intents``) does not know yet: one skeleton for
every kind of intent, and the one settler that runs it.

Here, not in ``intents``, because settling acts on checkouts and the flows' context, which are
themselves built on the intents' tables: the vocabulary sits below, the settling above.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from tillplug.engine.outcome import Outcome
from tillplug.flows.checkouts import Checkout
from tillplug.flows.context import FlowContext
from tillplug.flows.intents import Finding, Intent, IntentT, IntentTable, State

log = logging.getLogger(__name__)
SETTLE_FIRST = 0.5  # seconds before the first look-up of an unknown outcome
SETTLE_MAX = 60.0  # the longest wait between look-ups (backoff doubles up to this)


class Kind(Protocol[IntentT]):
    """What one kind of intent brings to the machine: its table, its look-up, what each verdict does.

    Each action runs under the checkout's lock with the intent still owed; it moves the intent
    (``table.set``/``settle``) and returns what the till is told on ``settled_event`` — or None
    to tell nothing and keep the intent owed (looked up again later).
    """

    table: IntentTable[IntentT]
    settled_event: str

    def key(self, intent: IntentT) -> Any: ...
    def flight_key(self, intent: IntentT) -> str:
        """The write's name for the in-flight rule (``EngineClient.in_flight``)."""
        ...

    async def look_up(self, intent: IntentT, checkout: Checkout) -> Finding | None:
        """What the engine shows of the write; None if it could not answer now (asked again later)."""
        ...

    async def not_landed(self, intent: IntentT, checkout: Checkout) -> dict[str, Any] | None: ...
    async def landed_open(self, intent: IntentT, checkout: Checkout, finding: Finding) -> dict[str, Any] | None: ...
    async def landed_closed(self, intent: IntentT, checkout: Checkout, finding: Finding) -> dict[str, Any] | None: ...
    async def cannot_tell(self, intent: IntentT, checkout: Checkout, finding: Finding) -> dict[str, Any] | None: ...
    def interrupted(self, intent: IntentT) -> None:
        """At start-up, synchronously: an intent a crash left ``sending``."""
        ...


async def settle(
    ctx: FlowContext, kind: Kind[IntentT], intent: IntentT, *, window: float | None = None
) -> State | None:
    """Settle one owed intent: the state it was settled into, or None if it is still owed.

    ``window``: the in-flight window (None: the client's, ``engine.in_flight_window``).
    """
    finding = await kind.look_up(intent, ctx.checkout(intent.tx_id))
    if finding is None:
        return None  # the engine could not answer now
    if finding.absent and ctx.client.in_flight.may_land(kind.flight_key(intent), window):
        return None  # not found, but it may still be on its way: asked again later, never guessed
    key = kind.key(intent)
    async with ctx.checkout_locks.hold(intent.tx_id):
        current = kind.table.get(key)
        if current is None or current.state != State.UNKNOWN or not current.owed:
            return None  # settled meanwhile
        checkout = ctx.checkout(intent.tx_id)
        if finding.outcome is Outcome.NOT_LANDED:
            told = await kind.not_landed(current, checkout)
        elif finding.outcome is Outcome.UNKNOWN:
            told = await kind.cannot_tell(current, checkout, finding)
        elif checkout.state == "open":
            told = await kind.landed_open(current, checkout, finding)
        else:
            told = await kind.landed_closed(current, checkout, finding)
        if told is None:
            return None
        after = kind.table.get(key)
        log.info("owed %s on %s settled: %s", kind.settled_event, intent.tx_id, told.get("outcome"))
        ctx.events.publish(kind.settled_event, told, lane=checkout.lane)
        return State(after.state) if after is not None else None


class Settler:
    """Every kind's owed intents settled by look-up, backing off while the engine cannot tell."""

    def __init__(
        self,
        ctx: FlowContext,
        kinds: Sequence[Kind[Any]],
        *,
        waiting: Sequence[Callable[[], Awaitable[int]]] = (),
    ) -> None:
        """``waiting``: passes over work that waits on settled writes (a return's take-back waits
        for its sale's earn); each returns how many still wait."""
        self.ctx = ctx
        self.kinds = list(kinds)
        self.waiting = list(waiting)
        self.wake = asyncio.Event()
        ctx.wake_settler = self.wake.set

    def recover(self) -> int:
        """At start-up: each intent a crash left ``sending`` goes to its kind; how many there were."""
        count = 0
        for kind in self.kinds:
            for intent in kind.table.interrupted():
                kind.interrupted(intent)
                count += 1
        return count

    def kind_of(self, intent: Intent) -> Kind[Any]:
        for kind in self.kinds:
            if isinstance(intent, kind.table.row_type):
                return kind
        raise TypeError(f"no kind settles {type(intent).__name__}")

    async def settle(self, intent: Intent, *, window: float | None = None) -> State | None:
        return await settle(self.ctx, self.kind_of(intent), intent, window=window)

    async def settle_owed(self) -> int:
        """One pass over every owed intent; how many are still owed."""
        left = 0
        for kind in self.kinds:
            for intent in await asyncio.to_thread(kind.table.owed):
                left += await settle(self.ctx, kind, intent) is None
        for waiting in self.waiting:
            left += await waiting()
        return left

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: settle what is owed, backing off while the engine cannot tell."""
        delay = SETTLE_FIRST
        while not stop.is_set():
            self.wake.clear()
            try:
                left = await self.settle_owed()
            except Exception:  # the settler must outlive any single bug
                log.exception("settling owed outcomes failed; trying again")
                left = 1
            delay = min(SETTLE_MAX, delay * 2) if left else SETTLE_FIRST
            wait = delay if left else SETTLE_MAX
            waiters = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w
            if self.wake.is_set():
                await asyncio.sleep(SETTLE_FIRST)  # a fresh unknown: give the engine a moment first
                delay = SETTLE_FIRST


__all__ = ["SETTLE_FIRST", "SETTLE_MAX", "Kind", "Settler", "settle"]
