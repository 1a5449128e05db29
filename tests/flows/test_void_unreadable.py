"""A void whose read of the engine's event list fails: the points are given back all the same (the
cashier is never left without an answer), their refunds queued to wait until the engine shows the
deductions applied."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

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


def void_with_the_list_answered_by(tmp_path: Path, sim: SimServer, hook: Any, **overrides: Any) -> None:
    """Spend 100 of Alice's points, then void the sale while ``hook`` answers the engine's event list:
    the 100 points are given back and their refund is queued."""

    async def go() -> None:
        h = Harness(tmp_path, sim, **overrides)
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            await h.loyalty.attach_member("T1", "1000001")
            assert not (await h.loyalty.spend_points("T1", 100)).pending
            h.tamper.on(is_event_list, hook, times=50)
            voided = await h.loyalty.void("T1")
            assert voided.pointsRefunded == 100
            assert [r.body["type"] for r in h.store.rows()] == ["POINTS_REFUND"]
        finally:
            await h.close()

    asyncio.run(go())


def test_a_void_that_cannot_read_the_engines_list_still_gives_the_points_back(tmp_path, sim) -> None:
    void_with_the_list_answered_by(tmp_path, sim, reset_before, engine={"max_attempts": 1})


def test_a_void_whose_read_outlasts_its_budget_still_gives_the_points_back(tmp_path, sim, monkeypatch) -> None:
    """The engine answers the list, but slower than all of the void's reads may take together
    (``FINAL_BUDGET``): the same answer as an unreadable list, never an error to the cashier."""
    monkeypatch.setattr("tillplug.flows.points.FINAL_BUDGET", 0.2)

    async def slow(request: httpx.Request, forward):
        await asyncio.sleep(1.0)
        return await forward()

    void_with_the_list_answered_by(tmp_path, sim, slow)
