"""One token bucket for the whole chain, in PostgreSQL, shared by every relay process.

The bucket refills at the tenant's rate up to its burst.  A cashier's call takes a token whenever
one is left; an outbox delivery only while more than the reserve are left, so cashiers go first.
A 429 from WLL (traffic the relay does not see, such as the member app's) empties the bucket for
its Retry-After on every process at once.
"""

from __future__ import annotations

import asyncio
import math

from tillplug.errors import RateLimited
from tillplug.relay.config import PacingConfig
from tillplug.relay.store import Store

BUCKET = "wll"

_REFILLED = "LEAST(%(burst)s, tokens + GREATEST(0, extract(epoch FROM clock_timestamp() - stamp)) * %(rate)s)"


class Pacer:
    def __init__(self, store: Store, config: PacingConfig) -> None:
        self.store = store
        self.config = config

    def _params(self, reserve: float) -> dict[str, float]:
        return {"burst": self.config.burst, "rate": self.config.rate, "need": 1 + reserve}

    async def ensure(self) -> None:
        await self.store.execute(
            "INSERT INTO pacing (name, tokens) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
            (BUCKET, float(self.config.burst)),
        )

    async def try_take(self, reserve: float = 0) -> float:
        """Take a token if more than ``reserve`` are left: 0.0, else the seconds until one would be."""
        params = {**self._params(reserve), "name": BUCKET}
        row = await self.store.fetchone(
            f"UPDATE pacing SET tokens = {_REFILLED} - 1, stamp = clock_timestamp()"
            f" WHERE name = %(name)s AND {_REFILLED} >= %(need)s RETURNING tokens",
            params,
        )
        if row is not None:
            return 0.0
        row = await self.store.fetchone(f"SELECT {_REFILLED} AS tokens FROM pacing WHERE name = %(name)s", params)
        if row is None:  # no bucket yet (a database migrated but never served): make it, try once more
            await self.ensure()
            return 1.0 / self.config.rate
        return max(1.0 / self.config.rate, (1 + reserve - float(row["tokens"])) / self.config.rate)

    async def cashier(self) -> None:
        """A token for a cashier's call, waiting at most ``max_wait``; else ``RateLimited`` (429 to the till)."""
        wait = await self.try_take()
        if wait == 0.0:
            return
        if wait <= self.config.max_wait:
            await asyncio.sleep(wait)
            wait = await self.try_take()
            if wait == 0.0:
                return
        raise RateLimited(retry_after=float(max(1, math.ceil(wait))))

    async def outbox(self) -> float:
        """A token for a delivery, only above the cashiers' reserve: 0.0, or the seconds to wait."""
        return await self.try_take(self.config.reserve)

    async def engine_said_wait(self, seconds: float) -> None:
        """WLL answered 429: nobody in the chain sends for ``seconds``."""
        await self.store.execute(
            "UPDATE pacing SET tokens = LEAST(tokens, %s), stamp = clock_timestamp() WHERE name = %s",
            (-seconds * self.config.rate, BUCKET),
        )
