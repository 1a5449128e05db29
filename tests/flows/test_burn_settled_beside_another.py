"""A lost burn's answer settled on a sale that already carries another burned voucher: it is its own
burn, told "burned" with its discount — only the same code applied again meanwhile is "already
applied" (else the voucher's discount is lost while the engine spent the voucher)."""

from __future__ import annotations

import asyncio

import pytest

from tests.flow_harness import Harness, is_burn, reset_after
from tillplug.sim import SimServer


@pytest.fixture
def sim():
    with SimServer() as s:
        yield s


def test_a_landed_burn_is_burned_beside_another_voucher_of_the_sale(tmp_path, sim) -> None:
    async def go():
        h = Harness(tmp_path, sim)
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            await h.loyalty.attach_member("T1", "1000001")
            listed = await h.loyalty.list_benefits("T1")
            [first] = [b for b in listed if b.state == "created"]  # 10 % off, redeemed from the wallet
            assert (await h.loyalty.redeem_benefit("T1", first.id)).burned
            h.tamper.on(is_burn, reset_after)  # the engine burns it; its answer is lost
            assert (await h.loyalty.apply_voucher("T1", "ALICE-5OFF-0001")).pending
            for burn in h.loyalty.checkouts.burn_intents.owed():
                await h.loyalty.settler.settle(burn, window=0)  # found: no in-flight wait applies
            verdicts = [(v["code"], v["outcome"]) for v in h.of_type("voucher_settled")]
            assert verdicts == [("ALICE-5OFF-0001", "burned")]
            checkout = h.loyalty.checkouts.get("T1")
            assert checkout is not None
            assert sorted(v.code for v in checkout.vouchers) == ["ALICE-10PC-0002", "ALICE-5OFF-0001"]
            assert all(v.burned for v in checkout.vouchers)  # a void lists both as not reinstated
        finally:
            await h.close()

    asyncio.run(go())
