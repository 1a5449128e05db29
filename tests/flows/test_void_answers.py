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


def test_a_code_whose_burn_was_tried_twice_is_pending_once(tmp_path, sim) -> None:
    """Found by the model check: a voucher scanned twice, both burns' answers lost; the void (and the
    checkout's view) listed the code twice in ``vouchersPending``, as if the sale held two vouchers."""
    from tests.flow_harness import is_burn, reset_after
    from tillplug.flows.answers import VoucherPending

    async def go() -> tuple[list[str], list[str]]:
        h = Harness(tmp_path, sim)
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            await h.loyalty.attach_member("T1", "1000001")
            h.tamper.on(is_burn, reset_after, times=2)
            for _ in range(2):
                assert isinstance(await h.loyalty.apply_voucher("T1", "ALICE-5OFF-0001"), VoucherPending)
            viewed = h.loyalty.get_checkout("T1").vouchersPending
            return viewed, (await h.loyalty.void("T1")).vouchersPending
        finally:
            await h.close()

    assert asyncio.run(go()) == (["ALICE-5OFF-0001"], ["ALICE-5OFF-0001"])
