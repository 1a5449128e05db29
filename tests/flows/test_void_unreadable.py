"""A void whose read of the engine's event list fails: the points are given back all the same (the
cashier is never left without an answer), their refunds queued to wait until the engine shows the
deductions applied."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.flow_harness import Harness, reset_before
from tillplug.sim import SimServer


@pytest.fixture
def sim():
    with SimServer() as s:
        yield s


def is_event_list(request: httpx.Request) -> bool:
    return request.method == "GET" and request.url.path.rstrip("/").endswith("/events")


def test_a_void_that_cannot_read_the_engines_list_still_gives_the_points_back(tmp_path, sim) -> None:
    async def go() -> None:
        h = Harness(tmp_path, sim, engine={"max_attempts": 1})
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            await h.loyalty.attach_member("T1", "1000001")
            assert not (await h.loyalty.spend_points("T1", 100)).pending
            h.tamper.on(is_event_list, reset_before, times=50)
            voided = await h.loyalty.void("T1")
            assert voided.pointsRefunded == 100
            assert [r.body["type"] for r in h.store.rows()] == ["POINTS_REFUND"]
        finally:
            await h.close()

    asyncio.run(go())


def test_a_void_whose_read_outlasts_its_budget_still_gives_the_points_back(tmp_path, sim, monkeypatch) -> None:
    """The engine answers the list, but slower than all of the void's reads may take together
    (``FINAL_BUDGET``): the same answer as an unreadable list, never an error to the cashier."""
    monkeypatch.setattr("tillplug.flows.points.FINAL_BUDGET", 0.2)

    async def slow(request: httpx.Request, forward):
        await asyncio.sleep(1.0)
        return await forward()

    async def go() -> None:
        h = Harness(tmp_path, sim)
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            await h.loyalty.attach_member("T1", "1000001")
            assert not (await h.loyalty.spend_points("T1", 100)).pending
            h.tamper.on(is_event_list, slow, times=50)
            voided = await h.loyalty.void("T1")
            assert voided.pointsRefunded == 100
            assert [r.body["type"] for r in h.store.rows()] == ["POINTS_REFUND"]
        finally:
            await h.close()

    asyncio.run(go())
