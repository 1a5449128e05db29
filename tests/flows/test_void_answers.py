"""What a void does beyond its answer: the refunds it queues are sent at once (the outbox woken, not
left to its next timed pass), and the cashier's slip names every voucher the sale used and the void
does not give back, by the name the shopper knows it by."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.flow_harness import Harness
from tillplug.receipts import templates
from tillplug.sim import SimServer


@pytest.fixture
def sim():
    with SimServer() as s:
        yield s


def test_a_void_that_refunds_points_wakes_the_outbox(tmp_path, sim) -> None:
    async def go() -> None:
        h = Harness(tmp_path, sim)
        woken: list[int] = []
        h.loyalty.ctx.wake_outbox = lambda: woken.append(1)
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            await h.loyalty.attach_member("T1", "1000001")
            assert not (await h.loyalty.spend_points("T1", 100)).pending
            woken.clear()
            voided = await h.loyalty.void("T1")
            assert voided.pointsRefunded == 100
            assert woken, "the refund waits for the outbox's next timed pass"
        finally:
            await h.close()

    asyncio.run(go())


def test_a_voids_slip_names_the_vouchers_it_does_not_give_back(tmp_path, sim, monkeypatch) -> None:
    slips: list[dict[str, Any]] = []
    real = templates.refund_slip

    def refund_slip(*args: Any, **kwargs: Any) -> Any:
        slips.append({"refunded": args[2], "not_reinstated": list(kwargs.get("not_reinstated", ()))})
        return real(*args, **kwargs)

    monkeypatch.setattr(templates, "refund_slip", refund_slip)

    async def go() -> None:
        h = Harness(tmp_path, sim, receipts={"points_slip": True, "voucher_receipt": False, "sale_summary": False})
        printed: list[object] = []

        async def printer(lane: int, receipt: object) -> dict[str, Any]:
            printed.append(receipt)
            return {"job": len(printed), "state": "queued"}

        h.loyalty.ctx.printer = printer
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            await h.loyalty.attach_member("T1", "1000001")
            [benefit] = [b for b in await h.loyalty.list_benefits("T1") if b.state == "created"][:1]
            assert (await h.loyalty.redeem_benefit("T1", benefit.id)).burned
            checkout = h.loyalty.checkouts.get("T1")
            assert checkout is not None
            [voucher] = checkout.vouchers
            assert voucher.name and voucher.name != voucher.code
            await h.loyalty.void("T1")
            assert slips == [{"refunded": 0, "not_reinstated": [voucher.name]}]
            assert printed
        finally:
            await h.close()

    asyncio.run(go())
