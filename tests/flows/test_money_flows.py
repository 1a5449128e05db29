"""Money safety in the flows (issue 11): whatever the engine answers, no point is lost or invented.

Each test plays one observation of the issue against the simulator, through a
transport that makes the engine answer the way the observation describes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.flow_harness import (
    ALICE,
    BOB,
    Harness,
    answer_2xx,
    held_in_flight,
    is_burn,
    is_spend,
    reset_after,
    reset_before,
    settled_balance,
)
from tillplug.errors import BenefitNotFound, MemberOffline
from tillplug.flows.locks import KeyedLocks
from tillplug.sim import SimServer


@pytest.fixture
def sim():
    with SimServer() as s:
        yield s


def run(coro):
    return asyncio.run(coro)


async def open_sale(h: Harness, tx: str, member: str = "1000001") -> None:
    await h.loyalty.open_checkout(tx, 1, "c-1")
    await h.loyalty.attach_member(tx, member)


def test_a_spend_the_engine_accepted_with_an_unreadable_2xx_is_pending_then_landed_and_the_void_refunds_it(
    tmp_path, sim
):
    """Observation 2: a 2xx tillplug cannot read must not mark the deduction failed."""

    async def go():
        h = Harness(tmp_path, sim)
        try:
            await open_sale(h, "T1")
            h.tamper.on(is_spend, answer_2xx)
            answer = await h.loyalty.spend_points("T1", 500)
            assert answer.pending is True and answer.discount.amount == 0
            assert answer.pendingDiscount.amount == 500
            assert await settled_balance(sim, ALICE, 750) == 750  # it did land
            assert await h.loyalty.settle_owed() == 0
            [verdict] = h.of_type("points_settled")
            assert verdict["outcome"] == "landed" and verdict["discount"]["amount"] == 500
            assert h.loyalty.get_checkout("T1").pointsSpent == 500
            voided = await h.loyalty.void("T1")
            assert voided.pointsRefunded == 500
            assert await h.drain()
            assert await settled_balance(sim, ALICE, 1250) == 1250
        finally:
            await h.close()

    run(go())


def test_a_voucher_burned_with_an_unreadable_2xx_is_reported_to_the_till_once_looked_up(tmp_path, sim):
    """Observation 2 (vouchers): the burn landed; the till learns it, with the discount."""

    async def go():
        h = Harness(tmp_path, sim)
        try:
            await open_sale(h, "T2")
            h.tamper.on(is_burn, answer_2xx)
            answer = await h.loyalty.apply_voucher("T2", "ALICE-5OFF-0001")
            assert answer.pending is True and answer.discounts == []
            assert [b["code"] for b in sim.state.ledger.burns] == ["ALICE-5OFF-0001"]
            assert await h.loyalty.settle_owed() == 0
            [verdict] = h.of_type("voucher_settled")
            assert verdict["outcome"] == "burned" and verdict["applied"] is True
            assert verdict["discounts"] == [{"type": "ABSOLUTE", "value": 500.0}]
            assert [v.code for v in h.loyalty.get_checkout("T2").vouchers] == ["ALICE-5OFF-0001"]
        finally:
            await h.close()

    run(go())


def test_reactions_in_another_shape_never_turn_an_accepted_spend_into_a_failure(tmp_path, sim):
    """Observation 1: reactions nested like test_reaction's answer: the spend succeeds."""

    async def nested(request: httpx.Request, forward: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        flat = (await forward()).json()["data"]
        return httpx.Response(200, json={"status": "success", "data": [{"reactor": {"id": "r"}, "reactions": flat}]})

    async def go():
        h = Harness(tmp_path, sim)
        try:
            await open_sale(h, "T3")
            h.tamper.on(lambda r: r.url.path.endswith("/reactions"), nested, times=100)
            answer = await h.loyalty.spend_points("T3", 500)
            assert answer.pending is False and answer.discount.amount == 500
            assert answer.balanceAfter == 750
            assert h.loyalty.get_checkout("T3").pointsSpent == 500
        finally:
            await h.close()

    run(go())


def test_confirming_a_deduction_costs_at_most_the_read_budget_then_the_balance_is_estimated(tmp_path, sim):
    """Observation 9: an engine that never applies the reaction costs 3 reads, not dozens."""
    sim.state.reactors["delay_seconds"] = 3600  # the reaction never comes while we wait

    async def go():
        h = Harness(tmp_path, sim)
        try:
            await open_sale(h, "T4")
            before = len(h.tamper.seen)
            answer = await h.loyalty.spend_points("T4", 100)
            calls = h.tamper.seen[before:]
            spend_at = calls.index("POST /v1/events/")
            confirming = [c for c in calls[spend_at + 1 :] if c.startswith("GET")]
            assert len(confirming) <= h.config.points.confirm_reads == 2
            assert answer.pending is False and answer.balanceEstimated is True
            assert answer.balanceAfter == 1150 and answer.discount.amount == 100
        finally:
            await h.close()

    run(go())


def test_a_void_while_a_spend_is_in_flight_waits_for_it_and_refunds_it(tmp_path, sim):
    """Observation 3: the void cannot slip between the deduction and its confirmation."""

    async def go():
        h = Harness(tmp_path, sim)
        in_flight = asyncio.Event()
        try:
            await open_sale(h, "T5")
            h.tamper.on(is_spend, held_in_flight(in_flight))
            spend = asyncio.ensure_future(h.loyalty.spend_points("T5", 500))
            await asyncio.wait_for(in_flight.wait(), 5)
            voided = await h.loyalty.void("T5")
            answer = await spend
            assert answer.pending is False and answer.points == 500  # the till was told it was taken
            assert voided.pointsRefunded == 500  # … and the void gave it back
            assert await h.drain()
            assert await settled_balance(sim, ALICE, 1250) == 1250
        finally:
            await h.close()

    run(go())


def test_a_voucher_burn_in_flight_during_a_void_is_reported_by_the_void(tmp_path, sim):
    """Observation 3 (vouchers): a voucher burned on a checkout being voided is reported, not lost."""

    async def go():
        h = Harness(tmp_path, sim)
        in_flight = asyncio.Event()
        try:
            await open_sale(h, "T6")
            h.tamper.on(is_burn, held_in_flight(in_flight))
            burn = asyncio.ensure_future(h.loyalty.apply_voucher("T6", "ALICE-5OFF-0001"))
            await asyncio.wait_for(in_flight.wait(), 5)
            voided = await h.loyalty.void("T6")
            assert (await burn).burned is True
            assert voided.vouchersNotReinstated == ["ALICE-5OFF-0001"]
        finally:
            await h.close()

    run(go())


def test_a_pending_deduction_that_lands_on_a_voided_sale_is_refunded_and_the_till_told(tmp_path, sim):
    """A deduction that lands on a checkout no longer open goes back through the outbox."""

    async def go():
        h = Harness(tmp_path, sim)
        try:
            await open_sale(h, "T7")
            h.tamper.on(is_spend, reset_after)
            assert (await h.loyalty.spend_points("T7", 400)).pending is True
            voided = await h.loyalty.void("T7")
            assert voided.pointsRefunded == 0 and voided.pointsPending == 400
            assert await h.loyalty.settle_owed() == 0
            assert [v["outcome"] for v in h.of_type("points_settled")] == ["refunded"]
            assert await h.drain()
            assert await settled_balance(sim, ALICE, 1250) == 1250
        finally:
            await h.close()

    run(go())


def test_a_lost_spend_is_settled_as_not_landed_only_after_the_look_up_says_so(tmp_path, sim):
    async def go():
        h = Harness(tmp_path, sim)
        try:
            await open_sale(h, "T8")
            h.tamper.on(is_spend, reset_before)
            assert (await h.loyalty.spend_points("T8", 400)).pending is True
            assert await h.loyalty.settle_owed() == 1  # "not found" this soon is not believed yet
            [d] = h.loyalty.checkouts.deduction_intents.owed()
            assert await h.loyalty.settler.settle(d, window=0) == "not_landed"
            assert [v["outcome"] for v in h.of_type("points_settled")] == ["not_landed"]
            assert (await h.loyalty.void("T8")).pointsRefunded == 0
            assert await h.drain()
            assert await settled_balance(sim, ALICE, 1250) == 1250
        finally:
            await h.close()

    run(go())


def test_an_unknown_voucher_burn_is_looked_up_and_the_till_told_either_way(tmp_path, sim):
    """Observation 13: nobody used to check; now the benefit is looked up and the result published."""

    async def go():
        h = Harness(tmp_path, sim)
        try:
            await open_sale(h, "T9")
            h.tamper.on(is_burn, reset_after)
            landed = await h.loyalty.apply_voucher("T9", "ALICE-5OFF-0001")
            assert landed.pending is True and "retried" not in landed.message
            h.tamper.on(is_burn, reset_before)
            lost = await h.loyalty.apply_voucher("T9", "ALICE-RIVER-0005")
            assert lost.pending is True
            assert await h.loyalty.settle_owed() == 1  # the lost one: not believed this soon
            for burn in h.loyalty.checkouts.burn_intents.owed():
                await h.loyalty.settler.settle(burn, window=0)
            verdicts = {v["code"]: (v["outcome"], v["applied"]) for v in h.of_type("voucher_settled")}
            assert verdicts == {"ALICE-5OFF-0001": ("burned", True), "ALICE-RIVER-0005": ("not_burned", False)}
            assert [v.code for v in h.loyalty.get_checkout("T9").vouchers] == ["ALICE-5OFF-0001"]
            assert [b["code"] for b in sim.state.ledger.burns] == ["ALICE-5OFF-0001"]
        finally:
            await h.close()

    run(go())


def test_a_card_seen_recently_or_a_subject_identifier_attaches_offline_and_earns_but_cannot_spend(tmp_path, sim):
    """Observation 12: during an outage members are attached offline; the sale earns through the outbox."""

    async def go():
        h = Harness(tmp_path, sim)
        try:
            await h.loyalty.lookup("MBR:auth-alice")  # seen before the outage (cached by WLL id only)
        finally:
            await h.close()
        assert b"auth-alice" not in (tmp_path / "outbox.sqlite3").read_bytes()  # no identifier kept in clear
        h = Harness(tmp_path, sim)  # a restart: the cache is on disk
        try:
            sim.sim.faults.update({"down": True})
            for tx, card in (("OA", "MBR:auth-alice"), ("OB", "1000002")):
                await h.loyalty.open_checkout(tx, 1, None)
                attached = await h.loyalty.attach_member(tx, card)
                assert attached.offline is True and attached.wallet is None
            with pytest.raises(MemberOffline):
                await h.loyalty.spend_points("OA", 100)
            with pytest.raises(MemberOffline):
                await h.loyalty.apply_voucher("OA", "ALICE-5OFF-0001")
            for tx in ("OA", "OB"):
                done = await h.loyalty.complete(tx, 2000, [], True)
                assert done.offline is True
            sim.sim.faults.update({"down": False})
            assert await h.drain()
            assert await settled_balance(sim, ALICE, 1270) == 1270
            assert await settled_balance(sim, BOB, 320) == 320
        finally:
            await h.close()

    run(go())


def test_a_card_never_seen_that_is_no_member_code_is_not_attached_offline(tmp_path, sim):
    async def go():
        h = Harness(tmp_path, sim)
        try:
            sim.sim.faults.update({"down": True})
            await h.loyalty.open_checkout("OC", 1, None)
            with pytest.raises(Exception) as refused:
                await h.loyalty.attach_member("OC", "not a member code")
            assert refused.value.code in ("engine_error", "engine_unreachable")
        finally:
            await h.close()

    run(go())


def test_lock_maps_keep_no_entry_once_nobody_holds_or_waits():
    async def go():
        locks = KeyedLocks()
        order = []

        async def use(key, n):
            async with locks.hold(key):
                order.append(n)
                await asyncio.sleep(0)

        await asyncio.gather(*(use(f"tx-{i % 3}", i) for i in range(30)))
        return locks, order

    locks, order = run(go())
    assert len(locks) == 0 and sorted(order) == list(range(30))


def test_check_config_warns_what_check_then_burn_risks():
    """Observation 10: the mode is kept only with tender, and check-config says what it risks."""
    from tillplug.config import validate

    base = {"till_id": "t", "branch_id": "b", "engine": {"preset": "simulator"}}
    assert [p for p in validate(base).problems if p.path == "vouchers.mode"] == []
    report = validate({**base, "vouchers": {"mode": "check_then_burn"}})
    [warning] = [p for p in report.problems if p.path == "vouchers.mode"]
    assert report.ok and warning.severity == "warning"
    assert "tender" in warning.message and "before taking payment" in warning.message


def test_with_the_owner_filter_ignored_another_members_voucher_is_neither_listed_nor_redeemed(tmp_path, sim):
    """Observation 6 (in the flows): tillplug checks the owner itself, before anything irreversible."""

    async def every_benefit(request, forward):
        request.url = request.url.copy_remove_param("filter[owner]")
        return await forward()

    async def go():
        h = Harness(tmp_path, sim)
        try:
            await open_sale(h, "TB", member="1000002")  # Bob
            h.tamper.on(lambda r: r.url.path.rstrip("/").endswith("/benefits"), every_benefit, times=10)
            unfiltered = await h.client.list_benefits(BOB)  # the engine answers with every member's benefits
            assert any("/benefits" in c for c in h.tamper.seen)
            assert not any(b.code and b.code.value.startswith("ALICE") for b in unfiltered)  # the client checks owners
            listed = await h.loyalty.list_benefits("TB")
            assert listed and all(b.code in (None, "POOL-COFFEE-0001", "BOB-5OFF-0001") for b in listed)
            alices = "be000000-0000-4000-8000-000000000002"  # created: redeeming it would activate it
            with pytest.raises(BenefitNotFound):
                await h.loyalty.redeem_benefit("TB", alices)
            assert not any("redeem_benefit" in c or "validate_voucher" in c for c in h.tamper.seen)
            assert sim.state.benefits[alices]["redeemedAt"] is None
        finally:
            await h.close()

    run(go())
