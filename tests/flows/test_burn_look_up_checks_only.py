"""A lost burn on a sale without a member has no benefit to read: its look-up checks the code
(``allowFutureValidation``), which must never spend the voucher itself -- a check that burned it
would find it "usable", tell the till "not burned", and leave the engine holding a spent voucher
that no sale got a discount for."""

from __future__ import annotations

import asyncio

import pytest

from tests.flow_harness import Harness, is_burn, reset_before
from tillplug.flows.answers import VoucherPending
from tillplug.sim import SimServer


@pytest.fixture
def sim():
    with SimServer() as s:
        yield s


def test_the_look_up_of_a_lost_burn_checks_the_code_without_spending_it(tmp_path, sim) -> None:
    async def go() -> None:
        h = Harness(tmp_path, sim)
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")  # no member: no benefit to read
            h.tamper.on(is_burn, reset_before)  # the burn never reaches the engine
            assert isinstance(await h.loyalty.apply_voucher("T1", "ALICE-5OFF-0001"), VoucherPending)
            for burn in h.loyalty.checkouts.burn_intents.owed():
                await h.loyalty.settler.settle(burn, window=0)  # no in-flight wait: it never left
            [verdict] = h.of_type("voucher_settled")
            assert verdict["outcome"] == "not_burned"
            assert sim.state.ledger.burns == []  # the look-up spent nothing
            checkout = h.loyalty.checkouts.get("T1")
            assert checkout is not None and checkout.vouchers == []
        finally:
            await h.close()

    asyncio.run(go())
