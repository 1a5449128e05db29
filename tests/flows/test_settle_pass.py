"""One settling pass over the owed outcomes (``Settler.settle_owed``): a look-up that fails leaves its
intent owed and the pass goes on to the next, and the count it returns (the settler's backoff) is
what is still owed."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.flow_harness import Harness, answer_2xx, is_spend, reset_before
from tillplug.sim import SimServer


@pytest.fixture
def sim():
    with SimServer() as s:
        yield s


def is_look_up(request: httpx.Request) -> bool:
    return request.method == "GET" and request.url.path.rstrip("/").endswith("/events")


def test_a_failed_look_up_leaves_its_spend_owed_and_the_pass_settles_the_next(tmp_path, sim) -> None:
    async def go() -> None:
        h = Harness(tmp_path, sim, engine={"max_attempts": 1})
        try:
            for tx in ("T1", "T2"):
                await h.loyalty.open_checkout(tx, 1, "c-1")
                await h.loyalty.attach_member(tx, "1000001")
                h.tamper.on(is_spend, answer_2xx)  # landed, the answer unreadable: owed a verdict
                assert (await h.loyalty.spend_points(tx, 100)).pending
            h.tamper.on(is_look_up, reset_before)  # the first look-up of the pass never gets an answer
            assert await h.loyalty.settle_owed() == 1
            assert [d["transactionId"] for d in h.of_type("points_settled")] == ["T2"]
            assert await h.loyalty.settle_owed() == 0
            assert sorted(d["transactionId"] for d in h.of_type("points_settled")) == ["T1", "T2"]
        finally:
            await h.close()

    asyncio.run(go())
