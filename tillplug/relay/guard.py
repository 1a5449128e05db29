"""One guard for every spend: one member's spends one at a time across the chain, never overdrawn.

The lock is a PostgreSQL advisory lock on the member, held by a transaction for as long as the
spend takes; a relay process killed mid-spend drops its connection and so the lock, while the
deduction it wrote down stays counted until the settler decides it (``tillplug.relay.deliver``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tillplug.engine import EngineClient
from tillplug.engine.models import points_of
from tillplug.errors import EngineAuthError, SpendInProgress, TillplugError
from tillplug.relay.metrics import RelayMetrics
from tillplug.relay.store import Store

log = logging.getLogger(__name__)


class Guard:
    def __init__(self, store: Store, client: EngineClient, *, wait: float, metrics: RelayMetrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.client = client
        self.wait = wait

    @asynccontextmanager
    async def member(self, member_id: str) -> AsyncIterator[None]:
        """Held while one spend on ``member_id`` is decided and sent; ``SpendInProgress`` after ``wait`` s."""
        import psycopg

        async with self.store.connection() as conn, conn.transaction():
            await conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(self.wait * 1000)}ms",))
            start = time.monotonic()
            try:
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7302))", (member_id,))
            except psycopg.errors.LockNotAvailable:
                if self.metrics is not None:
                    self.metrics.guard_refusals.labels("spend_in_progress").inc()
                raise SpendInProgress() from None
            if self.metrics is not None:
                self.metrics.guard_wait.observe(time.monotonic() - start)
            yield

    async def unapplied(self, member_id: str) -> int:
        """Points of this member's deductions the engine may not show yet (call under the member's lock).

        A landed deduction whose reactions now show it applied leaves the set first; the balance is
        read after this, so a reaction applied in between is counted twice (refusing more, never
        overdrawing), never missed.
        """
        total = 0
        for row in await self.store.unapplied_spends(member_id):
            if row["state"] == "landed" and row["engine_id"] and await self._applied(str(row["engine_id"])):
                await self.store.settle(str(row["event_key"]), "applied")
                continue
            total += int(row["points"] or 0)
        return total

    async def _applied(self, engine_id: str) -> bool:
        try:
            return points_of(await self.client.event_reactions(engine_id)) != 0
        except EngineAuthError:
            raise
        except TillplugError as exc:  # cannot tell: it stays counted
            log.info("reactions of a deduction unreadable (%s)", exc.code)
            return False

    async def available(self, member_id: str) -> float:
        unapplied = await self.unapplied(member_id)
        wallet = await self.client.get_wallet(member_id)
        return wallet.points_balance - unapplied
