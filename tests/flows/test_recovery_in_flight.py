"""#21 observation 2, through the flows: killed mid-spend while the engine held the deduction.

The deduction is taken by the engine a moment after the till died; on the restart the refund
sent only if it landed must wait until it can no longer be in flight, then find it and give the
points back.  Seen: balance 750 instead of 1,250, and the till never gave the discount.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flow_harness import Harness, settled_balance
from tillplug.engine.clock import InFlight
from tillplug.sim import SimServer

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer() as s:
        yield s


class FakeMonotonic:
    now = 500.0

    def __call__(self) -> float:
        return self.now


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the simulator did not get there"
        await asyncio.sleep(0.02)


def test_a_deduction_the_engine_takes_after_the_crash_is_refunded_after_the_restart(
    tmp_path: Path, sim: SimServer
) -> None:
    async def go() -> float:
        h = Harness(tmp_path, sim)
        await h.loyalty.open_checkout("T1", 1, "c-1")
        await h.loyalty.attach_member("T1", "1000001")
        sim.sim.faults.update({"late_write_seconds": 1.0})  # the engine holds the deduction a moment
        spend = asyncio.ensure_future(h.loyalty.spend_points("T1", 500))
        await until(lambda: sim.sim.requests_for("POST /v1/events") >= 1)
        spend.cancel()  # kill -9 mid-spend: the intent row stays 'sending'
        await asyncio.gather(spend, return_exceptions=True)
        await h.close()
        sim.sim.faults.update({"late_write_seconds": 0.0})

        h = Harness(tmp_path, sim)  # the restart, on the same state
        clock = FakeMonotonic()
        h.client.in_flight = InFlight(h.client.in_flight.window, monotonic=clock)
        try:
            assert h.loyalty.recover() == 1  # a refund sent only if the deduction landed
            await h.deliverer.step()  # looked up at once: the engine is still holding the deduction
            dropped = [r for r in h.store.rows("delivered") if "not needed" in (r.note or "")]
            assert dropped == [], "the refund was dropped while its deduction was in flight"
            assert len(h.store.rows("pending")) == 1
            await until(lambda: len(sim.state.ledger.events) == 1)  # the deduction lands
            clock.now += h.client.in_flight.window
            with h.store.transaction() as tx:
                tx.execute("UPDATE outbox SET next_attempt=0 WHERE state='pending'")
            assert await h.drain(10)
            return await settled_balance(sim, ALICE, 1250)
        finally:
            await h.close()

    assert asyncio.run(go()) == 1250
    assert [e["type"] for e in sim.state.ledger.events] == ["REDEEMED_POINTS", "POINTS_REFUND"]
