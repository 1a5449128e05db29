"""A lost burn on a sale without a member has no benefit to read: its look-up checks the code
(``allowFutureValidation``), which must never spend the voucher itself -- a check that burned it
would find it "usable", tell the till "not burned", and leave the engine holding a spent voucher
that no sale got a discount for."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.flow_harness import Harness, is_burn, reset_after, reset_before
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


def is_validation(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.endswith("/commands/validate_voucher")


def test_a_look_up_the_engine_cannot_answer_leaves_the_burn_owed(tmp_path, sim) -> None:
    """The look-up's own read fails (the engine unreachable): no verdict, the burn still owed and
    looked up again later -- never an error out of the settler, never a guess."""

    async def go() -> None:
        h = Harness(tmp_path, sim, engine={"max_attempts": 1})
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            h.tamper.on(is_burn, reset_before)
            assert isinstance(await h.loyalty.apply_voucher("T1", "ALICE-5OFF-0001"), VoucherPending)
            h.tamper.on(is_validation, reset_before)  # the look-up's check cannot reach the engine
            [burn] = h.loyalty.checkouts.burn_intents.owed()
            assert await h.loyalty.settler.settle(burn, window=0) is None
            assert h.of_type("voucher_settled") == [] and len(h.loyalty.checkouts.burn_intents.owed()) == 1
            [burn] = h.loyalty.checkouts.burn_intents.owed()
            await h.loyalty.settler.settle(burn, window=0)  # the engine answers again
            assert [v["outcome"] for v in h.of_type("voucher_settled")] == ["not_burned"]
        finally:
            await h.close()

    asyncio.run(go())


def is_benefit_list(request: httpx.Request) -> bool:
    return request.method == "GET" and request.url.path.rstrip("/").endswith("/benefits")


async def refused(request: httpx.Request, forward) -> httpx.Response:
    return httpx.Response(400, json={"status": "error", "error": {"message": "no such listing"}})


def test_a_lost_burn_with_a_member_is_settled_from_the_members_wallet(tmp_path, sim) -> None:
    """The member is known: the look-up reads the burned voucher in the member's own wallet, which
    says when it was burned.  The code's check would only say "already used" (by whom, when: not
    said), and on an engine that will not list every benefit, nothing more."""

    async def go() -> None:
        h = Harness(tmp_path, sim)
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            await h.loyalty.attach_member("T1", "1000001")
            h.tamper.on(is_burn, reset_after)  # the engine burns it; its answer is lost
            assert isinstance(await h.loyalty.apply_voucher("T1", "ALICE-5OFF-0001"), VoucherPending)
            h.tamper.on(is_benefit_list, refused, times=20)  # this engine lists no one's benefits by code
            [burn] = h.loyalty.checkouts.burn_intents.owed()
            await h.loyalty.settler.settle(burn, window=0)
            assert [v["outcome"] for v in h.of_type("voucher_settled")] == ["burned"]
        finally:
            await h.close()

    asyncio.run(go())


def test_a_lost_burn_whose_check_says_the_code_is_unknown_is_not_burned(tmp_path, sim) -> None:
    """The check refuses the code in words that prove it was never burned (unknown here, not yet
    redeemed, another venue): "not burned", never held as unverifiable for a supervisor."""

    async def go() -> str:
        h = Harness(tmp_path, sim)
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            h.tamper.on(is_burn, reset_before)  # the burn never reaches the engine
            assert isinstance(await h.loyalty.apply_voucher("T1", "NOPE-0000-0001"), VoucherPending)
            [burn] = h.loyalty.checkouts.burn_intents.owed()
            await h.loyalty.settler.settle(burn, window=0)
            [verdict] = h.of_type("voucher_settled")
            return str(verdict["outcome"])
        finally:
            await h.close()

    assert asyncio.run(go()) == "not_burned"
