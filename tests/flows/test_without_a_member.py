"""What the till is told when a sale has no member: a void refunds no points and queues nothing (the
answer is what the cashier reads out and the slip prints)."""

from __future__ import annotations

import asyncio

import pytest

from tests.flow_harness import Harness
from tillplug.sim import SimServer


@pytest.fixture
def sim():
    with SimServer() as s:
        yield s


def test_a_void_of_a_sale_without_a_member_refunds_no_points(tmp_path, sim) -> None:
    async def go() -> None:
        h = Harness(tmp_path, sim)
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            voided = await h.loyalty.void("T1")
            assert (voided.pointsRefunded, voided.pointsHeld or 0, voided.pointsPending) == (0, 0, 0)
            assert h.store.rows() == []  # no refund queued
        finally:
            await h.close()

    asyncio.run(go())
