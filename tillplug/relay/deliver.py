"""The relay's own outbox to WLL, and the settler of spends, with the till's settle rules.

Every row of ``events`` that needs work is leased by one process at a time (``FOR UPDATE SKIP
LOCKED`` and a lease that outlives a killed process by ``LEASE`` seconds):

* an earn, order or refund is ``pending`` until sent; it is marked ``sending`` before the engine
  may hear of it, so a row found ``sending`` (a relay killed mid-delivery, or an answer lost) is
  looked up by its eventKey once its in-flight window has passed, and resent only if the engine
  certainly does not have it: exactly once, whatever the engine's filters do;
* a spend left ``sending`` or ``unknown`` is decided the same way (``landed`` or ``failed``), and a
  ``landed`` one becomes ``applied`` once its reactions show it: until then the guard counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from typing import Any

from tillplug.engine import EngineClient
from tillplug.engine.clock import in_flight_window
from tillplug.engine.models import EventDefinition, Order, points_of
from tillplug.engine.outcome import Outcome
from tillplug.engine.traffic import OUTBOX, use_case
from tillplug.errors import (
    EngineAuthError,
    EngineProtocolError,
    EngineRejected,
    OutcomeUnknown,
    RateLimited,
    RelayUnavailable,
    TillplugError,
)
from tillplug.relay.metrics import RelayMetrics
from tillplug.relay.scope import MEMBER_HOURS
from tillplug.relay.store import Store

log = logging.getLogger(__name__)

UNVERIFIABLE_RETRY = 30.0
LANDED_MAX_AGE = 600.0  # a deduction whose reactions never show (an engine that lists none) stops counting
MAX_BACKOFF = 300.0
PRUNE_EVERY = 600.0  # seconds between prunes of members_seen


class Deliverer:
    def __init__(
        self, store: Store, client: EngineClient, *, lease: float = 30.0, metrics: RelayMetrics | None = None
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.lease = lease  # seconds a claimed row is this process's; a killed process's rows return after it
        self.client = client
        self.window = in_flight_window(
            client.config.connect_timeout, client.config.read_timeout, client.config.in_flight_window
        )
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.wake = asyncio.Event()
        self.delivered = 0

    async def engine_back(self) -> None:
        """The engine answers again after failing: rows waiting out a backoff are due now."""
        count = await self.store.execute(
            "UPDATE events SET due = clock_timestamp() WHERE state = 'pending' AND due > clock_timestamp()"
        )
        if count:
            log.info("the engine answers again: %d waiting deliveries are due now", count)
        self.wake.set()

    async def prune(self) -> int:
        """Forget which till looked which member up once that no longer grants anything."""
        return await self.store.execute(
            "DELETE FROM members_seen WHERE seen_at < clock_timestamp() - make_interval(secs => %s)",
            (MEMBER_HOURS * 3600,),
        )

    async def run(self, stop: asyncio.Event) -> None:
        pruned = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() - pruned > PRUNE_EVERY:
                    pruned = time.monotonic()
                    await self.prune()
                busy = await self.pass_once()
            except RelayUnavailable:
                busy = False
            except Exception:  # a bug must not stop deliveries for good
                log.exception("relay outbox pass failed")
                busy = False
            if not busy:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=0.5)

    async def pass_once(self) -> bool:
        rows = await self.store.claim(self.owner, self.lease)
        if rows:
            await asyncio.gather(*(self._work(row) for row in rows))
        return bool(rows)

    async def _work(self, row: dict[str, Any]) -> None:
        with use_case(OUTBOX):  # background work: paced below the cashiers' reserve
            await self._work_paced(row)

    async def _work_paced(self, row: dict[str, Any]) -> None:
        key = str(row["event_key"])
        try:
            if row["kind"] == "spend":
                await self._settle_spend(row)
            elif row["state"] == "sending":
                await self._settle_sent(row)
            else:
                await self._send(row)
        except RelayUnavailable:
            raise
        except EngineAuthError as exc:
            log.error("relay outbox: the engine refused the relay's credentials (%s)", exc.code)
            await self.store.retry_later(key, 60, exc.code, state=str(row["state"]))
        except TillplugError as exc:
            log.info("relay outbox: %s %s: %s, later", row["kind"], key, exc.code)
            await self.store.retry_later(key, self._backoff(row), exc.code, state=str(row["state"]))

    def _backoff(self, row: dict[str, Any]) -> float:
        return random.uniform(0.5, min(MAX_BACKOFF, 2 ** min(int(row["attempts"] or 0), 8)))

    async def _look_up(self, row: dict[str, Any]) -> str | None:
        """found / not_found / None (cannot tell yet) for a write that may have left."""
        key = str(row["event_key"])
        age = float(row["age"] or 0)
        if age < self.window:  # it may still be in flight: a not-found is not believed yet
            await self.store.retry_later(key, self.window - age + 0.1, "in flight", state=str(row["state"]))
            return None
        if row["kind"] == "order":
            found = await self.client.look_up_order(key)
        else:
            found = await self.client.look_up_event(key)
        if found.unproven and await self._prove_filter(row["kind"]):
            found = await (self.client.look_up_order(key) if row["kind"] == "order" else self.client.look_up_event(key))
        if found.outcome is Outcome.LANDED:
            return "found:" + (found.engine_id or "")
        if found.outcome is Outcome.NOT_LANDED:
            return "not_found"
        await self.store.retry_later(key, UNVERIFIABLE_RETRY, f"unverifiable: {found.reason}", state=str(row["state"]))
        return None

    async def _prove_filter(self, kind: str) -> bool:
        """Look up a key the engine surely has: if found, the filter is shown to work."""
        row = await self.store.fetchone(
            "SELECT event_key FROM events WHERE engine_id IS NOT NULL AND kind = %s ORDER BY created_at DESC LIMIT 1",
            ("order" if kind == "order" else "earn",),
        )
        if row is None:
            return False
        key = str(row["event_key"])
        proof = await (self.client.look_up_order(key) if kind == "order" else self.client.look_up_event(key))
        return proof.found

    async def _settle_spend(self, row: dict[str, Any]) -> None:
        key = str(row["event_key"])
        if row["state"] == "landed":
            applied = False
            with contextlib.suppress(EngineRejected, EngineProtocolError, RateLimited, OutcomeUnknown):
                applied = points_of(await self.client.event_reactions(str(row["engine_id"]))) != 0
            if applied or float(row["age"] or 0) > LANDED_MAX_AGE:
                await self.store.settle(key, "applied")
            else:
                await self.store.retry_later(key, 2.0, "not applied yet", state="landed")
            return
        verdict = await self._look_up(row)
        if verdict is None:
            return
        if verdict.startswith("found:"):
            await self.store.settle(key, "landed", engine_id=verdict[6:] or None)
            log.info("spend %s: landed (settled by look-up)", key)
        else:
            await self.store.settle(key, "failed", last_error="did not land (look-up)")
            log.info("spend %s: did not land (settled by look-up)", key)

    async def _settle_sent(self, row: dict[str, Any]) -> None:
        verdict = await self._look_up(row)
        if verdict is None:
            return
        if verdict.startswith("found:"):
            await self.store.settle(str(row["event_key"]), "delivered", engine_id=verdict[6:] or None)
            return
        await self._send(row)  # certainly not there: sent again

    async def _send(self, row: dict[str, Any]) -> None:
        key = str(row["event_key"])
        await self.store.mark_sending(key)  # the token is taken by the transport (the chain's pacer)
        body = row["body"]
        try:
            if row["kind"] == "order":
                answer: dict[str, Any] = await self.client.submit_order(Order.model_validate(body))
                engine_id = str(answer.get("id") or answer.get("orderId") or "") or None
            else:
                event = await self.client.report_event(EventDefinition.model_validate(body))
                engine_id = event.id
        except (OutcomeUnknown, EngineProtocolError) as exc:
            await self.store.retry_later(key, self.window, exc.code, state="sending")
            return
        except RateLimited as exc:  # the chain's bucket, or WLL's 429 (the transport told every process)
            await self.store.retry_later(key, exc.retry_after or 2.0, exc.code)
            return
        except EngineAuthError:
            await self.store.retry_later(key, 60, "engine_auth_failed")
            raise
        except EngineRejected as exc:  # a permanent refusal: kept for audit, never dropped
            log.error("relay outbox: the engine refused %s %s for good: %s", row["kind"], key, exc.message)
            await self.store.settle(key, "dead", last_error=exc.message[:300])
            return
        except TillplugError as exc:  # unreachable, 503: did not land
            await self.store.retry_later(key, self._backoff(row), exc.code)
            return
        await self.store.settle(key, "delivered", engine_id=engine_id)
        self.delivered += 1
        if self.metrics is not None:
            self.metrics.forwarded.labels(str(row["kind"])).inc()
