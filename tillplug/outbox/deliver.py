"""Delivering the outbox to the engine: in order per checkout, paced, never a blind resend.

An outcome-unknown failure (timeout or reset after the request left, or an
answer we cannot read) marks the row for look-up: before it is sent again the
engine is asked for its ``eventKey`` (an ``Outcome``, the vocabulary of every money
write: ``tillplug.flows.intents``); landed → delivered, not landed → resent, but only
once the write can no longer be in flight (``tillplug.engine.clock.InFlight``:
until then the row waits, ``last_error = in_flight``; a reversal's "not needed" waits
the same way for the write it reverses).  Where the filter cannot tell, the client
reads the engine's recent list instead (``tillplug.engine.lookup.scan_recent``).
A look-up that still cannot tell (the list refused, or longer than a look-up reads)
holds the row as *unverifiable*: never resent,
never "not needed", looked up again every ``UNVERIFIABLE_RETRY`` seconds and
reported (one log line per row, ``Stats.unverifiable``).

Rows go in batches: one commit claims up to ``BATCH_MAX`` due rows (as many as the pacer lets
go within ``BATCH_SECONDS``), marking them ``sending`` before the first request; they are sent
one after another, each paced, on the client's one connection; what the engine acknowledged is
committed with the next claim.  A crash in between leaves them ``sending``: looked up at start,
never resent blindly.  A batch stops at the first failure and gives back the rows it did not send.

No failure leaves a row in ``sending``: one whose body can never be sent (not valid for its
request, or not JSON — e.g. an infinite quantity) goes ``dead`` with the reason; any other
unexpected failure puts it back to ``pending``, looked up before it is sent again.
Due times come from the store's clock (a ``SteadyClock`` in the daemon), never straight from
``time.time()``, so a clock step moves nothing; waits and pacing run on ``time.monotonic()``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable

from tillplug.engine.client import EngineClient
from tillplug.engine.clock import REACTION_WINDOW
from tillplug.engine.lookup import Lookup
from tillplug.engine.models import Event, EventDefinition, Order
from tillplug.engine.outcome import Outcome
from tillplug.engine.reactors import LISTED_REACTIONS, applied_within
from tillplug.engine.traffic import OUTBOX, Traffic, use_case
from tillplug.errors import (
    EngineAuthError,
    EngineProtocolError,
    EngineRejected,
    EngineUnavailable,
    OutcomeUnknown,
    RateLimited,
    RetryableError,
)
from tillplug.outbox.drain import DrainPlan
from tillplug.outbox.pacing import Pacer, PacingPolicy
from tillplug.outbox.store import MAX_DELAY, OutboxStore, Row

log = logging.getLogger(__name__)
MAX_BACKOFF = 300.0
AUTH_BACKOFF = 60.0  # wrong credentials need a technician; keep trying, slowly
UNVERIFIABLE_RETRY = 300.0  # a held row is looked up again this often (calibration may have changed)
IN_FLIGHT = "in_flight"  # last_error of a row waiting out the in-flight window of what it looked for
PACE_RECHECK = 30.0  # seconds: the longest pacing sleep before the pacer is asked again
# How long after taking a write the engine may still apply its reaction: reactions take "almost
# instant to a few seconds"; past this it surely has (tillplug.flows.points.UNSEEN_FOR).
REVERSAL_WINDOW = REACTION_WINDOW
REVERSAL_RECHECK = 5.0  # seconds between looks while a reversal waits for that
REVERSAL_LAST_LOOK = 5.0  # seconds the last look waits (tillplug.flows.points.FINAL_WAIT, a void's)
NOT_APPLIED = "not_applied"  # last_error of a reversal waiting for what it reverses to be applied
REACTIONS_UNREAD = "reactions_unreadable"  # ... of a held deduction's refund whose reads of it failed
# Rows are claimed in batches (one commit marks them all 'sending', one records what the engine
# acknowledged): as many as the pacer lets go within BATCH_SECONDS, at most BATCH_MAX.
BATCH_SECONDS = 0.25
BATCH_MAX = 64


def unsendable(row: Row) -> str | None:
    """Why this row's body can never be sent as it is (None: it can), found before any request."""
    if row.body_error is not None:
        return row.body_error
    try:
        model = Order.model_validate(row.body) if row.kind == "order" else EventDefinition.model_validate(row.body)
        json.dumps(model.body(), allow_nan=False)  # as the HTTP client encodes it: no NaN or Infinity
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        return " ".join(str(exc).split())[:300]
    return None


def retry_delay(attempts: int) -> float:
    """Exponential backoff with jitter, from about a second up to five minutes."""
    return random.uniform(0.5, 1.0) * min(MAX_BACKOFF, 2.0 ** min(attempts, 16))


class Deliverer:
    def __init__(
        self,
        store: OutboxStore,
        client: EngineClient,
        *,
        rate: float = 10,
        burst: int = 20,
        on_change: Callable[[], None] | None = None,
        pacer: Pacer | None = None,
        traffic: Traffic | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        self.client = client
        # ``rate`` is this till's share of the tenant's limit; the pacer adapts around it.
        self.pacer = pacer or Pacer(PacingPolicy(share=rate, burst=burst), traffic=traffic)
        self.on_change = on_change or (lambda: None)
        # Wall-clock seconds, as the store's next_attempt: the store's own clock (steady in the daemon)
        # unless given (a virtual one in the fleet benchmark).
        self.clock = clock or store.clock
        self._wake = asyncio.Event()
        self._plan_seen: DrainPlan | None = None
        self._back = 0.0  # when the engine answered again after the last outage, on the store's clock
        if self.pacer.traffic is not None:
            self.pacer.traffic.on_interactive_ok = self._cashier_answered
        # The current batch's outcomes not yet committed (the next claim commits them):
        self._acknowledged: list[tuple[int, str | None]] = []  # (row id, the engine's id) of rows delivered
        self._unsent: list[int] = []  # rows claimed but never sent
        self.on_not_applied: Callable[[], None] | None = None  # told of each: health names the reactor

    def wake(self) -> None:
        """A row was added: look now instead of at the next timer."""
        self._wake.set()

    def _cashier_answered(self) -> None:
        """The engine answered a cashier: if the outbox was waiting out an outage, it is over."""
        if self.pacer.failing_since is not None:
            self._wake.set()

    async def _paced(self) -> None:
        while (delay := self.pacer.delay(await self._backlog())) > 0:
            await asyncio.sleep(min(delay, PACE_RECHECK))  # a cashier's answer may end a wait early

    async def _backlog(self) -> tuple[int, int] | None:
        """While the pacer follows the chain's drain plan: the rows waiting, and how many of them
        were queued before the engine answered again (the plan's time, on the store's clock)."""
        plan = self.pacer.plan
        if plan is None:
            return None
        if self._plan_seen is not plan:
            self._plan_seen, self._back = plan, self.clock() - (self.pacer.clock() - plan.answered)
        return await asyncio.to_thread(self.store.backlog, self._back)

    async def _look_up(self, row: Row, key: str) -> Lookup:
        """Does the engine have the write carrying ``key``?  landed, not_landed or unknown.

        If the filter was merely never seen to work, look up a key the engine surely has (a
        write it acknowledged): results carrying only that key show the filter works, and
        the client then trusts "not found" (once per process, in practice).
        """
        # The earliest the write can have been sent: this row's own write not before it was queued.
        since = row.created if key == row.event_key else row.requires_since
        result = await self._ask(row.kind, key, since)
        if result.outcome is Outcome.UNKNOWN and result.unproven:
            known = await asyncio.to_thread(self.store.delivered_key, row.kind)
            if known is not None and known != key:
                await self._ask(row.kind, known, None)
                result = await self._ask(row.kind, key, since)
        return result

    async def _ask(self, kind: str, key: str, since: float | None) -> Lookup:
        await self._paced()
        if kind == "order":
            result: Lookup = await self.client.look_up_order(key, since)
        else:
            result = await self.client.look_up_event(key, since)
        return result

    async def _hold(self, row: Row, key: str, result: Lookup) -> None:
        log.error(
            "outbox: row %d (%s) held as unverifiable: cannot tell whether the engine has eventKey %s (%s); "
            "it is neither resent nor dropped — run tillplug engine-check",
            row.id,
            row.body.get("type"),
            key,
            result.reason,
        )
        at = self.clock() + UNVERIFIABLE_RETRY
        await asyncio.to_thread(self.store.hold_unverifiable, row.id, at=at, reason=result.reason)

    async def _send(self, row: Row) -> str | None:
        await self._paced()
        if row.kind == "order":
            answer = await self.client.submit_order(Order.model_validate(row.body))
            return str(answer.get("id")) if answer.get("id") else None
        event: Event = await self.client.report_event(EventDefinition.model_validate(row.body))
        return event.id

    async def _settled_by_look_up(self, row: Row) -> bool:
        """Look before sending; True if the row needs no send now (delivered, not needed, held, or
        waiting out the in-flight window of the write it looked for)."""
        if row.needs_lookup and await self._landed_or_waits(row):  # first: did this very write land already?
            return True
        if row.requires_key is not None:  # a reversal: needed only if what it reverses landed
            return await self._reversal_settled(row, row.requires_key)
        return False

    async def _landed_or_waits(self, row: Row) -> bool:
        found = await self._look_up(row, row.event_key)
        if found.outcome is Outcome.LANDED:
            await asyncio.to_thread(self.store.delivered, row.id, engine_id=found.engine_id, note="found by look-up")
            return True
        if found.outcome is Outcome.UNKNOWN:
            await self._hold(row, row.event_key, found)
            return True
        return await self._still_in_flight(row, row.event_key)

    async def _reversal_settled(self, row: Row, reversed_key: str) -> bool:
        reversed_write = await self._look_up(row, reversed_key)
        if reversed_write.outcome is Outcome.UNKNOWN:
            await self._hold(row, reversed_key, reversed_write)
            return True
        if reversed_write.outcome is Outcome.LANDED:
            return await self._waits_for_applied(row, reversed_key, reversed_write)
        if await self._still_in_flight(row, reversed_key):
            return True
        note = "not needed: the write it reverses never reached the engine"
        await asyncio.to_thread(self.store.delivered, row.id, note=note)
        return True

    async def _waits_for_applied(self, row: Row, key: str, reversed_write: Lookup) -> bool:
        """What a reversal reverses landed: it is sent once the engine may have applied it.

        Where the engine lists reactions and shows the reversed write moved no points (a deduction a
        missing or conditional redemption reactor never applied, or one applied late), the reversal
        waits, looked up again, until ``REVERSAL_WINDOW`` after the engine may last have taken that
        write (the in-flight window after its send); then it is not needed: refunding what was
        never taken would invent points.  The void's rule: anything the
        engine cannot show (no reactions listed, no id, a read failing) sends the reversal; but not
        a held deduction's refund (``Row.requires_applied``): the engine showed that one never
        applied, so a read that fails proves nothing, and it waits for a read that answers.
        """
        engine_id = reversed_write.engine_id
        if row.kind != "event" or self.client.dialect.reactions not in LISTED_REACTIONS:
            return False
        if not engine_id or engine_id == "found":  # an engine that names no id: its reactions cannot be read
            return False
        # The engine may take the write as late as the in-flight window after our send, and applies
        # its reaction within REVERSAL_WINDOW of taking it: both, counted from the send.
        wait = self.client.in_flight.remaining(key, self.client.in_flight.window + REVERSAL_WINDOW)
        # Within the window one read decides only "applied"; past it, "never applied" is believed only
        # after a last look as long as a void's (a reaction may be being applied right now).
        applied = await applied_within(self.client, engine_id, 0 if wait > 0 else REVERSAL_LAST_LOOK)
        if applied or (applied is None and not row.requires_applied):
            return False  # applied, or it cannot tell: sent
        if wait > 0 or applied is None:  # a held deduction's refund: sent only once shown applied
            at = self.clock() + (min(wait, REVERSAL_RECHECK) if wait > 0 else REVERSAL_RECHECK)
            error = NOT_APPLIED if applied is False else REACTIONS_UNREAD
            await asyncio.to_thread(self.store.retry_later, row.id, at=at, error=error, needs_lookup=False)
            return True
        log.error(
            "outbox: row %d (%s) not sent: the engine shows the write it reverses (eventKey %s) never applied; "
            "its redemption reactor may be missing (tillplug engine-check)",
            row.id,
            row.body.get("type"),
            key,
        )
        if self.on_not_applied is not None:
            self.on_not_applied()
        note = "not needed: the engine shows the write it reverses moved no points"
        await asyncio.to_thread(self.store.delivered, row.id, note=note)
        return True

    async def _still_in_flight(self, row: Row, key: str) -> bool:
        """The look-up did not find ``key``, but the write may still be on its way (``InFlight``):
        the row is looked up again once it cannot be, and is neither resent nor dropped before."""
        wait = self.client.in_flight.remaining(key)
        if wait <= 0:
            return False
        log.info("outbox: row %d: eventKey %s not found yet, but may still be in flight; looked up again", row.id, key)
        at = self.clock() + wait
        await asyncio.to_thread(self.store.retry_later, row.id, at=at, error=IN_FLIGHT, needs_lookup=row.needs_lookup)
        return True

    async def deliver(self, row: Row) -> None:
        """Deliver one claimed row (a batch of one), its outcome committed before returning."""
        await self._deliver_batch([row], None)
        await self._claim(0)

    async def _deliver_batch(self, rows: list[Row], stop: asyncio.Event | None) -> None:
        """Deliver claimed rows in order until one fails (the engine away, busy, unsure: the rows
        after it are given back, due as they were), the pacer holds, or ``stop`` is set.

        What the engine acknowledged, and the rows given back, are committed with the next claim
        (``_claim``), in one commit: a crash before it leaves them in 'sending', looked up at start.
        """
        done = 0
        try:
            for row in rows:
                if done and ((stop is not None and stop.is_set()) or self.pacer.held()):
                    break  # what is left would wait in 'sending': given back instead
                done += 1
                ack, go_on = await self._deliver_one(row)
                if ack is not None:
                    self._acknowledged.append(ack)
                if not go_on:
                    break
        finally:
            self._unsent.extend(row.id for row in rows[done:])
            self.on_change()

    async def _claim(self, limit: int) -> list[Row]:
        """Settle the last batch (acknowledged, given back) and claim up to ``limit`` rows: one commit."""
        # Taken before the commit, never put back: were it cut short, the rows stay in 'sending'
        # (looked up at start), while a second attempt could give back a row claimed again since.
        acknowledged, self._acknowledged = self._acknowledged, []
        unsent, self._unsent = self._unsent, []
        rows = await asyncio.to_thread(self.store.claim_batch, limit, delivered=acknowledged, unsent=unsent)
        if acknowledged:
            self.on_change()
        return rows

    async def _deliver_one(self, row: Row) -> tuple[tuple[int, str | None] | None, bool]:
        """Send one row (looked up first where needed) and settle any outcome but the engine's
        acknowledgement, which is returned for the batch's commit (row id, the engine's id; None:
        not acknowledged), with whether the batch goes on (False: it failed and waits)."""
        store = self.store
        now = self.clock()
        try:
            if await self._settled_by_look_up(row):
                return None, True
            if (why := unsendable(row)) is not None:
                log.error("outbox: row %d (%s) cannot be sent and is dead: %s", row.id, row.body.get("type"), why)
                await asyncio.to_thread(store.dead, row.id, error=f"cannot be sent: {why}")
                return None, True
            engine_id = await self._send(row)
        except (OutcomeUnknown, EngineProtocolError) as exc:
            # The write may have landed: never resend without looking first.
            await self._later(row, now + retry_delay(row.attempts), exc, needs_lookup=True)
        except RateLimited as exc:  # Retry-After honoured, up to an hour
            await self._later(row, now + min(MAX_DELAY, exc.retry_after or retry_delay(row.attempts)), exc)
        except EngineAuthError as exc:
            log.error("outbox: the engine refuses tillplug's credentials (%s); row %d waits", exc.message, row.id)
            await self._later(row, now + AUTH_BACKOFF, exc)
        except EngineRejected as exc:
            why = f"HTTP {exc.status}: {exc.engine_message or exc.message}"
            log.error("outbox: row %d (%s) rejected by the engine for good: %s", row.id, row.body.get("type"), why)
            await asyncio.to_thread(store.dead, row.id, error=why)
            return None, True
        except RetryableError as exc:
            wait = retry_delay(row.attempts)
            if isinstance(exc, EngineUnavailable) and self.pacer.in_outage():
                # The engine is away, not this row: the pacer spaces the probes, so the till hears
                # of the engine's return within one probe interval, not a row's five-minute backoff.
                wait = min(wait, self.pacer.probe_interval())
            await self._later(row, now + wait, exc)
        except Exception as exc:  # a bug must not leave the row in 'sending': it may have left, so look first
            log.exception("outbox: row %d failed unexpectedly; it waits and is looked up before any resend", row.id)
            await self._later(row, now + retry_delay(row.attempts), exc, needs_lookup=True)
        else:
            self.pacer.record(None)
            if self.pacer.take_recovered():  # the engine is back: the pacer, not each row's backoff, spreads them
                await asyncio.to_thread(store.release_waiting, now)
            return (row.id, engine_id), True
        return None, False

    async def _later(self, row: Row, at: float, exc: Exception, *, needs_lookup: bool = False) -> None:
        self.pacer.record(exc)
        code = getattr(exc, "code", type(exc).__name__)
        await asyncio.to_thread(self.store.retry_later, row.id, at=at, error=code, needs_lookup=needs_lookup)

    async def step(self, limit: int = 1, stop: asyncio.Event | None = None) -> bool:
        """Deliver up to ``limit`` due rows, claimed in one commit, their outcomes committed before
        it returns; False when none is due."""
        found = await self._step(limit, stop)
        await self._claim(0)
        return found

    async def _step(self, limit: int, stop: asyncio.Event | None) -> bool:
        """``step``, its outcomes left for the next claim to commit (the loops claim again at once)."""
        if self.pacer.recovered_by_cashiers():  # rows waiting on their backoff are due again
            await asyncio.to_thread(self.store.release_waiting, self.clock())
        rows = await self._claim(limit)
        if not rows:
            return False
        with use_case(OUTBOX):  # counted as background traffic; never retried inside the client
            await self._deliver_batch(rows, stop)
        return True

    def batch_size(self) -> int:
        """How many rows to claim at once: what the pacer lets go within ``BATCH_SECONDS``, at
        most ``BATCH_MAX`` (so a crash leaves few acknowledgements to find by look-up), at least one."""
        return max(1, min(BATCH_MAX, self.pacer.sends_within(BATCH_SECONDS)))

    async def run(self, stop: asyncio.Event) -> None:
        """Forever, until ``stop``: deliver what is due, then sleep until the next due row or a wake."""
        await asyncio.to_thread(self.store.recover)
        try:
            await self._loop(stop)
        finally:  # stopped or cancelled: the last batch's outcomes are committed (else looked up at start)
            await self._claim(0)

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Cleared before looking, never after: a row queued while we look keeps the flag set,
            # so the wait below returns at once instead of sleeping until the timer.
            self._wake.clear()
            try:
                if await self._step(self.batch_size(), stop):
                    continue
            except Exception:  # the outbox must outlive any single bug
                log.exception("outbox: delivery step failed; continuing")
                await asyncio.sleep(1)
                continue
            next_due = await asyncio.to_thread(self.store.next_due)
            wait = 30.0 if next_due is None else max(0.01, min(30.0, next_due - self.clock()))
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:  # cancelled too: no waiter outlives the loop
                for w in waiters:
                    w.cancel()

    async def drain(self, timeout: float) -> bool:
        """Deliver until nothing is pending (or ``timeout``); True if empty.  For the CLI and tests."""
        await asyncio.to_thread(self.store.recover)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self._step(self.batch_size(), None):  # its outcomes: committed by the next claim
                continue
            stats = await asyncio.to_thread(self.store.stats)
            if stats.depth == 0:
                return True
            now = self.clock()
            next_due = await asyncio.to_thread(self.store.next_due) or now
            await asyncio.sleep(max(0.01, min(0.5, next_due - now, deadline - time.monotonic())))
        await self._claim(0)
        return (await asyncio.to_thread(self.store.stats)).depth == 0
