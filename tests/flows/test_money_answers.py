"""The till's money answers (issue 22): what the till is told about points is true and final.

Each test plays one observation of issue 22 against the simulator; the engine's
answers are changed in flight by ``Tamper`` where the observation needs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.flow_harness import ALICE, Harness, config, is_spend, reset_after, settled_balance
from tillplug.engine.clock import InFlight
from tillplug.errors import CheckoutConflict
from tillplug.flows.answers import PointsSpent
from tillplug.flows.points import NOT_APPLIED
from tillplug.outbox.deliver import REVERSAL_RECHECK, REVERSAL_WINDOW
from tillplug.sim import SimServer

Forward = Callable[[], Awaitable[httpx.Response]]


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer() as s:
        yield s


def run(coro: Awaitable[object]) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def open_sale(h: Harness, tx: str, member: str = "1000001") -> None:
    await h.loyalty.open_checkout(tx, 1, "c-1")
    await h.loyalty.attach_member(tx, member)


def is_read(request: httpx.Request) -> bool:
    return request.method == "GET" and ("/wallet" in request.url.path or request.url.path.endswith("/reactions"))


async def broken_gzip(request: httpx.Request, forward: Forward) -> httpx.Response:
    """A proxy that mangles the compressed answer: httpx raises while decoding it."""
    raise httpx.DecodingError("Error -3 while decompressing data: incorrect header check", request=request)


# -- observation 3: a spend the engine took is never told to the till as a failure ---------------


def test_a_broken_gzip_on_the_confirming_reads_never_turns_a_taken_spend_into_a_failure(
    tmp_path: object, sim: SimServer
) -> None:
    """Issue 22, observation 3: the engine accepted the deduction; every read that follows it comes
    back as a proxy's broken gzip.  The till is told the spend went through (estimated balance),
    not 500, and the sale's points stay counted."""

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        try:
            await open_sale(h, "T1")

            async def spend_then_break_reads(request: httpx.Request, forward: Forward) -> httpx.Response:
                answer = await forward()
                h.tamper.on(is_read, broken_gzip, times=1000)
                return answer

            h.tamper.on(is_spend, spend_then_break_reads)
            answer = await h.loyalty.spend_points("T1", 500)
            assert answer.pending is False and answer.discount.amount == 500
            assert answer.balanceEstimated is True
            assert h.loyalty.get_checkout("T1").pointsSpent == 500
            assert await settled_balance(sim, ALICE, 750) == 750
        finally:
            await h.close()

    run(go())


def test_a_broken_gzip_on_the_unseen_deductions_check_of_a_next_spend_is_not_a_500(
    tmp_path: object, sim: SimServer
) -> None:
    """Issue 22, observation 3 (``_still_unseen``): a first spend left unseen (late reaction), the
    next one's check of it reads a broken gzip: the next spend still gets its answer."""
    sim.state.reactors["delay_seconds"] = 3600  # the first deduction stays unseen

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        try:
            await open_sale(h, "T1")
            first = await h.loyalty.spend_points("T1", 100)
            assert isinstance(first, PointsSpent) and first.balanceEstimated is True
            h.tamper.on(lambda r: r.url.path.endswith("/reactions"), broken_gzip, times=1000)
            second = await h.loyalty.spend_points("T1", 100)
            assert second.discount.amount == 100
        finally:
            await h.close()

    run(go())


# -- observation 6: an expired, never-redeemed benefit -----------------------------------------

EXPIRED_NEVER_REDEEMED = "be000000-0000-4000-8000-000000000004"


async def codes_only_once_redeemed(request: httpx.Request, forward: Forward) -> httpx.Response:
    """WLL assigns a benefit's code when it is redeemed (engine-api.md): a listing shows none before."""
    answer = await forward()
    body = answer.json()
    items = body["data"] if isinstance(body["data"], list) else body["data"].get("vouchers", [])
    for b in items:
        if not b.get("redeemedAt"):
            b["code"] = None
    return httpx.Response(answer.status_code, json=body)


def is_benefit_listing(request: httpx.Request) -> bool:
    return request.method == "GET" and (request.url.path.rstrip("/").endswith(("/benefits", "/wallet")))


@pytest.mark.parametrize("check_only", [None, True, False])
def test_redeeming_an_expired_never_redeemed_benefit_is_voucher_expired_not_invalid_request(
    tmp_path: object, sim: SimServer, check_only: bool | None
) -> None:
    """Issue 22, observation 6: the benefit expired before it was ever redeemed, so the engine never
    gave it a code; the till was answered 400 ``invalid_request`` ("no code to validate")."""
    from tillplug.errors import VoucherExpired

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        try:
            await open_sale(h, "T1")
            h.tamper.on(is_benefit_listing, codes_only_once_redeemed, times=100)
            with pytest.raises(VoucherExpired):
                await h.loyalty.redeem_benefit("T1", EXPIRED_NEVER_REDEEMED, check_only)
        finally:
            await h.close()

    run(go())


# -- observation 5: offline, a keyed code promises no points -----------------------------------

ADDED_IF_VALID = "Points will be added if the card is valid."


def test_offline_a_keyed_code_never_seen_is_attached_without_a_points_figure(tmp_path: object, sim: SimServer) -> None:
    """Issue 22, observation 5: seven-digit account numbers have no check digit; keyed offline,
    a typo names a stranger.  The till and the slip promised ``expectedPoints`` all the same.
    Now the cashier reads "points will be added if the card is valid" and no figure; the sale
    earns only if the engine, once back, accepts the code as a member's."""
    from tests.flow_harness import BOB

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        try:
            sim.sim.faults.update({"down": True})
            await h.loyalty.open_checkout("K1", 1, None)
            attached = await h.loyalty.attach_member("K1", "1000002", entry="keyed")
            assert attached.offline is True and attached.memberUnverified is True
            assert attached.message == ADDED_IF_VALID
            done = await h.loyalty.complete("K1", 2000, [], True)
            assert done.expectedPoints is None and done.message == ADDED_IF_VALID
            sim.sim.faults.update({"down": False})
            assert await h.drain()
            assert await settled_balance(sim, BOB, 320) == 320  # the engine accepted it as Bob's
        finally:
            await h.close()

    run(go())


@pytest.mark.parametrize("entry, seen_before", [("scanned", False), ("keyed", True)])
def test_offline_a_scanned_card_or_a_keyed_code_seen_lately_earns_with_a_figure(
    tmp_path: object, sim: SimServer, entry: str, seen_before: bool
) -> None:
    """Issue 22, observation 5: a card read by a scanner, or a code looked up in the last 14 days,
    is a known member: attached offline with the figure, as before."""

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        try:
            if seen_before:
                await h.loyalty.lookup("1000002")
            sim.sim.faults.update({"down": True})
            await h.loyalty.open_checkout("K2", 1, None)
            attached = await h.loyalty.attach_member("K2", "1000002", entry=entry)
            assert attached.offline is True and attached.memberUnverified is False
            assert "message" not in attached.model_fields_set
            done = await h.loyalty.complete("K2", 2000, [], True)
            assert done.expectedPoints == 20
        finally:
            await h.close()

    run(go())


def test_the_sale_slip_of_an_unverified_member_prints_no_points_figure() -> None:
    """Issue 22, observation 5: the slip promised the figure too."""
    from tillplug.money import Money
    from tillplug.receipts import templates
    from tillplug.receipts.layout import Columns, Text

    ctx = templates.SlipContext.from_config(config(Path("/nonexistent"), "http://127.0.0.1:1"))
    slip = templates.sale_summary(ctx, "K1", Money(2000, "GBP"), None, member="****0002")
    texts = [b.text for b in slip.blocks if isinstance(b, Text)]
    labels = [b.left for b in slip.blocks if isinstance(b, Columns)]
    assert ADDED_IF_VALID in texts and "Points for this sale" not in labels


def test_tillplugs_own_scanners_attach_as_scanned(tmp_path: object, sim: SimServer) -> None:
    """Issue 22, observation 5: a card read by a scanner tillplug drives is a scanned card."""

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        try:
            sim.sim.faults.update({"down": True})
            await h.loyalty.open_checkout("K3", 1, None)
            await h.loyalty.scan(h.loyalty.ctx.classifier.classify("1000002"), 1)  # as the scan path hands it
            view = h.loyalty.get_checkout("K3")
            assert view.offline is True and view.memberUnverified is False
        finally:
            await h.close()

    run(go())


# -- observation 4: a deduction the engine never applies ---------------------------------------


@pytest.mark.parametrize("redemption", ["missing", "conditional"])
def test_a_deduction_the_engine_never_shows_applied_is_not_given_at_tender_without_saying_so(
    tmp_path: object, sim: SimServer, redemption: str
) -> None:
    """Issue 22, observation 4: with the redemption reactor missing (or conditional) the engine
    accepts REDEEMED_POINTS and deducts nothing; the till answered ``balanceEstimated: true`` and the
    discount was given.  Now tender says the points are unconfirmed (not ready), and health says why."""
    import tillplug.flows.points as points_module

    httpx.post(sim.url + "/_sim/reactors", json={"redemption": redemption}, timeout=10).raise_for_status()

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        try:
            await open_sale(h, "R1")
            spent = await h.loyalty.spend_points("R1", 500)
            assert isinstance(spent, PointsSpent) and spent.final is False and spent.balanceEstimated is True
            tendered = await h.loyalty.tender("R1")
            assert tendered.ready is False
            assert tendered.points.state == "unconfirmed" and tendered.points.unconfirmed == 500
            assert "not confirmed" in (tendered.points.message or "")
            assert "deduction_not_applied" in h.loyalty.points.problems
        finally:
            await h.close()

    points_module.FINAL_WAIT, saved = 0.5, points_module.FINAL_WAIT
    try:
        run(go())
    finally:
        points_module.FINAL_WAIT = saved


@pytest.mark.parametrize("redemption", ["missing", "conditional"])
@pytest.mark.parametrize("tender_first", [False, True])
def test_a_void_never_refunds_a_deduction_the_engine_never_applied(
    tmp_path: object, sim: SimServer, redemption: str, tender_first: bool
) -> None:
    """Issue 22, observation 4 (the void): the engine accepted REDEEMED_POINTS and deducted nothing;
    the void's POINTS_REFUND, which the refund reactor does apply, used to invent the points.  Now a
    void refunds only what the engine shows applied, and holds (and says so) what it shows unapplied."""
    import tillplug.flows.points as points_module

    httpx.post(sim.url + "/_sim/reactors", json={"redemption": redemption}, timeout=10).raise_for_status()

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        clock = Steady(h)
        try:
            await open_sale(h, "V1")
            await h.loyalty.spend_points("V1", 500)
            if tender_first:
                tendered = await h.loyalty.tender("V1")
                assert tendered.points is not None and tendered.points.state == "unconfirmed"
            voided = await h.loyalty.void("V1")
            assert voided.pointsRefunded == 0 and voided.pointsHeld == 500
            assert voided.message is not None and "not given back" in voided.message
            assert "deduction_not_applied" in h.loyalty.points.problems
            await deliver_all(h, clock)  # its refund waits for the engine to apply it: it never does
            assert await settled_balance(sim, ALICE, 1250) == 1250  # not 1,750: nothing invented
            assert [e["type"] for e in sim.state.ledger.events] == ["REDEEMED_POINTS"]
        finally:
            await h.close()

    points_module.FINAL_WAIT, saved = 0.5, points_module.FINAL_WAIT
    try:
        run(go())
    finally:
        points_module.FINAL_WAIT = saved


def test_a_void_refunds_a_deduction_the_engine_applied_late(tmp_path: object, sim: SimServer) -> None:
    """The other side: reactions applied after the spend answered but within the void's wait are refunded."""
    sim.state.reactors["delay_seconds"] = 0.3

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        try:
            await open_sale(h, "V2")
            await h.loyalty.spend_points("V2", 500)
            voided = await h.loyalty.void("V2")
            assert voided.pointsRefunded == 500 and voided.pointsHeld == 0
            assert await h.drain()
            assert await settled_balance(sim, ALICE, 1250) == 1250
        finally:
            await h.close()

    run(go())


@pytest.fixture
def short_final_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine here applies at once, after a second, or never: half a second tells them apart."""
    monkeypatch.setattr("tillplug.flows.points.FINAL_WAIT", 0.5)
    monkeypatch.setattr("tillplug.outbox.deliver.REVERSAL_LAST_LOOK", 0.5)


def ledger_types(sim: SimServer) -> list[str]:
    return [e["type"] for e in sim.state.ledger.events]


class Steady:
    """A till's steady clock for the in-flight rule, moved by the test (``InFlight``)."""

    def __init__(self, h: Harness) -> None:
        self.now = 0.0
        h.client.in_flight = InFlight(h.client.in_flight.window, monotonic=lambda: self.now)


async def deliver_all(h: Harness, clock: Steady) -> None:
    """Deliver what is due; then, past every reversal's wait (``REVERSAL_WINDOW``: the engine's
    reactors had their time), the rows that waited for it."""
    for _ in range(20):
        if not await h.deliverer.step():
            break
    clock.now += h.client.in_flight.window + REVERSAL_WINDOW + 1  # the engine took it late, then reacted
    with h.store.transaction() as t:
        t.execute("UPDATE outbox SET next_attempt=0 WHERE state='pending'")
    assert await h.drain()


async def assert_given_back_only_if_applied(h: Harness, sim: SimServer, redemption: str) -> None:
    """What every give-back must end in: a refund on the engine's ledger only if its redemption
    reactor applied the deduction, else none and health says so; the member's 1,250 points either
    way (not 1,750: no refund of what was never taken)."""
    if redemption == "present":
        assert ledger_types(sim) == ["REDEEMED_POINTS", "POINTS_REFUND"]
    else:
        assert ledger_types(sim) == ["REDEEMED_POINTS"]
        assert "deduction_not_applied" in h.loyalty.points.problems
    assert await settled_balance(sim, ALICE, 1250) == 1250


@pytest.mark.parametrize("redemption", ["present", "missing"])
def test_a_deduction_that_lands_after_the_void_is_refunded_only_if_the_engine_applied_it(
    tmp_path: object, sim: SimServer, redemption: str, short_final_wait: None
) -> None:
    """Issue 21 (what is left): a spend answered unreadably is owed a verdict; the sale is voided
    (``pointsPending``); the look-up then finds the deduction on the closed sale.  The settler used
    to refund it without asking whether the engine applied it: with the redemption reactor missing it
    deducted nothing, and the refund invented 500 points.  Now the settler asks as the void does:
    refunded if applied, held (``points_settled: held``, health ``deduction_not_applied``) if not."""
    httpx.post(sim.url + "/_sim/reactors", json={"redemption": redemption}, timeout=10).raise_for_status()

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        clock = Steady(h)
        try:
            await open_sale(h, "P1")
            h.tamper.on(is_spend, reset_after)
            assert (await h.loyalty.spend_points("P1", 500)).pending is True
            voided = await h.loyalty.void("P1")
            assert voided.pointsRefunded == 0 and voided.pointsPending == 500
            assert await h.loyalty.settle_owed() == 0
            [verdict] = h.of_type("points_settled")
            await deliver_all(h, clock)
            [d] = h.loyalty.checkouts.deductions("P1")
            if redemption == "present":
                assert verdict["outcome"] == "refunded" and d.state == "refunded"
            else:
                assert verdict["outcome"] == "held" and verdict["discount"]["amount"] == 0
                assert "not given back" in verdict["message"]
                assert d.state == "landed" and not d.owed
            await assert_given_back_only_if_applied(h, sim, redemption)
        finally:
            await h.close()

    run(go())


@pytest.mark.parametrize("redemption", ["present", "missing"])
def test_a_spend_on_a_sale_closed_meanwhile_is_given_back_only_if_the_engine_applied_it(
    tmp_path: object, sim: SimServer, redemption: str, short_final_wait: None
) -> None:
    """Issue 21 (what is left): the engine took the deduction while the sale was closed under the
    spend (the spend re-reads the checkout after the report).  Its give-back used to be queued
    without asking whether the engine applied the deduction: with the redemption reactor missing the
    refund invented the points.  Now it is given back only if applied, else held and said so."""
    httpx.post(sim.url + "/_sim/reactors", json={"redemption": redemption}, timeout=10).raise_for_status()

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        clock = Steady(h)
        try:
            await open_sale(h, "P2")

            async def closed_under_the_spend(request: httpx.Request, forward: Forward) -> httpx.Response:
                answer = await forward()
                checkout = h.loyalty.checkouts.get("P2")
                assert checkout is not None
                checkout.state = "voided"
                with h.loyalty.checkouts.transaction() as t:
                    h.loyalty.checkouts.save(t, checkout)
                return answer

            h.tamper.on(is_spend, closed_under_the_spend)
            with pytest.raises(CheckoutConflict) as refused:
                await h.loyalty.spend_points("P2", 500)
            await deliver_all(h, clock)
            [d] = h.loyalty.checkouts.deductions("P2")
            if redemption == "present":
                assert "given back" in refused.value.message and d.state == "refunded"
            else:
                assert "not given back" in refused.value.message and d.state == "landed"
            await assert_given_back_only_if_applied(h, sim, redemption)
        finally:
            await h.close()

    run(go())


@pytest.mark.parametrize("redemption", ["present", "missing"])
def test_a_spend_cut_off_by_a_crash_is_refunded_after_the_restart_only_if_the_engine_applied_it(
    tmp_path: Path, sim: SimServer, redemption: str, short_final_wait: None
) -> None:
    """The third give-back without the void's check: killed after the engine took the deduction,
    the restart queues a refund-if-it-landed (``requires_key``), which the outbox sent once the
    deduction was found, applied or not: with the redemption reactor missing, 500 points invented.
    Now the outbox sends it only once the engine shows the deduction applied (or cannot show);
    shown unapplied past ``REVERSAL_WINDOW``, it is not needed."""
    from tillplug.engine.models import EventDefinition
    from tillplug.flows.checkouts import Deduction

    httpx.post(sim.url + "/_sim/reactors", json={"redemption": redemption}, timeout=10).raise_for_status()

    async def go() -> None:
        h = Harness(tmp_path, sim)
        try:
            await open_sale(h, "P3")
            with h.loyalty.checkouts.transaction() as t:
                h.loyalty.checkouts.add_deduction(t, Deduction("crash-1", "P3", 500, 500, "sending"))
            payload = {"points": 500, "eventKey": "crash-1"}
            spend = EventDefinition(type="REDEEMED_POINTS", subject=ALICE, payload=payload)
            await h.client.report_event(spend)  # the engine took it; the till died before hearing so
            expected = 750 if redemption == "present" else 1250
            assert await settled_balance(sim, ALICE, expected) == expected  # its reactors had their time
        finally:
            await h.close()
        h = Harness(tmp_path, sim)
        clock = Steady(h)
        try:
            assert h.loyalty.recover() == 1
            [d], [row] = h.loyalty.checkouts.deductions("P3"), h.store.rows("pending")
            assert row.requires_key == "crash-1"
            assert row.requires_since == d.created > 0  # its look-up reads back to the spend's intent, no further
            clock.now += h.client.in_flight.window  # past the deduction's in-flight window
            await deliver_all(h, clock)
            if redemption == "missing":
                [row] = h.store.rows("delivered")
                assert row.note is not None and "moved no points" in row.note
                assert h.loyalty.points.problems.get("deduction_not_applied") == NOT_APPLIED  # health says so
            await assert_given_back_only_if_applied(h, sim, redemption)
        finally:
            await h.close()

    run(go())


def test_a_deduction_held_by_a_void_is_given_back_once_the_engine_applies_it_late(
    tmp_path: object, sim: SimServer, short_final_wait: None
) -> None:
    """The engine's reactors fall behind: the deduction is applied a second after the spend, later
    than the void's wait (``FINAL_WAIT``).  The void held it (the engine showed it not applied) and
    nothing ever gave it back: 500 points lost.  Now the held deduction's refund waits in the outbox
    for the engine to apply it, and is sent then."""
    sim.state.reactors["delay_seconds"] = 1.0

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        clock = Steady(h)
        try:
            await open_sale(h, "P4")
            await h.loyalty.spend_points("P4", 500)
            voided = await h.loyalty.void("P4")
            assert voided.pointsRefunded == 0 and voided.pointsHeld == 500
            assert await h.deliverer.step()  # the held refund looks: not applied yet, so it waits
            assert ledger_types(sim) == ["REDEEMED_POINTS"]
            assert [r.last_error for r in h.store.rows("pending")] == ["not_applied"]  # what it waits for
            assert await settled_balance(sim, ALICE, 750) == 750  # the engine applies it late
            await deliver_all(h, clock)
            await assert_given_back_only_if_applied(h, sim, "present")
        finally:
            await h.close()

    run(go())


def test_a_held_deductions_refund_is_never_sent_on_a_failed_read_of_its_reactions(
    tmp_path: object, sim: SimServer, short_final_wait: None
) -> None:
    """Found by the model check (hostile dialect): the redemption reactor missing, a void held the
    deduction (the engine showed it never applied), then the outbox's reads of its reactions failed:
    the refund was sent ("cannot show: sent", the rule for a deduction the void could not read),
    inventing the points.  A held deduction's refund is sent only once the engine shows it applied;
    a failed read changes nothing: it looks again, and past the window with the engine answering
    "never applied", it is not needed."""
    httpx.post(sim.url + "/_sim/reactors", json={"redemption": "missing"}, timeout=10).raise_for_status()

    async def unreadable(request: httpx.Request, forward: Forward) -> httpx.Response:
        return httpx.Response(503, json={"status": "error"})

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        clock = Steady(h)
        try:
            await open_sale(h, "P6")
            await h.loyalty.spend_points("P6", 500)
            voided = await h.loyalty.void("P6")
            assert voided.pointsRefunded == 0 and voided.pointsHeld == 500
            [d], [row] = h.loyalty.checkouts.deductions("P6"), h.store.rows("pending")
            assert row.requires_applied and row.requires_key == d.event_key
            assert row.requires_since == d.created > 0  # its look-up reads back to the spend, no further
            h.tamper.on(lambda r: r.url.path.endswith("/reactions"), unreadable, times=1000)
            for moment in (0.0, h.client.in_flight.window + REVERSAL_WINDOW + 1):  # within the window, past it
                clock.now = moment
                with h.store.transaction() as t:
                    t.execute("UPDATE outbox SET next_attempt=0 WHERE state='pending'")
                assert await h.deliverer.step()
                assert ledger_types(sim) == ["REDEEMED_POINTS"]  # not sent on a failed read
                [row] = h.store.rows("pending")
                assert row.last_error is not None and "reactions" in row.last_error
                assert row.next_attempt >= h.store.clock() + REVERSAL_RECHECK - 1  # not looked at again at once
            h.tamper.hooks.clear()
            await deliver_all(h, clock)  # the engine answers: never applied, past the window
            await assert_given_back_only_if_applied(h, sim, "missing")
        finally:
            await h.close()

    run(go())


def test_past_the_window_a_held_refund_looks_once_more_for_as_long_as_a_void(
    tmp_path: object, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its window, a held deduction's refund is "not needed" only after a last look as long as
    a void's (``REVERSAL_LAST_LOOK``): a reaction being applied right then is seen and refunded.
    Read once instead, the refund was dropped and the reaction then took the member's points."""
    monkeypatch.setattr("tillplug.flows.points.FINAL_WAIT", 0.3)
    monkeypatch.setattr("tillplug.outbox.deliver.REVERSAL_LAST_LOOK", 6.0)
    sim.state.reactors["delay_seconds"] = 2.0  # after the void's wait, within the last look

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        clock = Steady(h)
        try:
            await open_sale(h, "P7")
            await h.loyalty.spend_points("P7", 500)
            voided = await h.loyalty.void("P7")
            assert voided.pointsHeld == 500  # the engine had not applied it yet
            clock.now = h.client.in_flight.window + REVERSAL_WINDOW + 1  # past the window
            assert await h.deliverer.step()
            await deliver_all(h, clock)
            await assert_given_back_only_if_applied(h, sim, "present")
        finally:
            await h.close()

    run(go())


@pytest.mark.parametrize("reactions", ["never", "unknown"])
def test_where_the_engine_is_not_known_to_list_reactions_a_void_gives_back_without_reading_them(
    tmp_path: object, sim: SimServer, reactions: str
) -> None:
    """engine-check found the engine lists no reactions (or never ran): nothing it could show proves a
    deduction untaken, so a void gives every landed deduction back at once and reads no reactions;
    read anyway, an engine that lists none would look as if it never took them, and they were held."""
    import dataclasses

    httpx.post(sim.url + "/_sim/reactors", json={"redemption": "missing"}, timeout=10).raise_for_status()

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        h.client.dialect = dataclasses.replace(h.client.dialect, reactions=reactions)
        read: list[str] = []

        async def counted(request: httpx.Request, forward: Forward) -> httpx.Response:
            read.append(request.url.path)
            return await forward()

        try:
            await open_sale(h, "P8")
            await h.loyalty.spend_points("P8", 500)
            h.tamper.on(lambda r: r.url.path.endswith("/reactions"), counted, times=1000)
            voided = await h.loyalty.void("P8")
            assert (voided.pointsRefunded, voided.pointsHeld, read) == (500, 0, [])
        finally:
            await h.close()

    run(go())


def test_a_void_that_cannot_read_the_reactions_gives_back_and_refunds_once_the_engine_shows_them(
    tmp_path: object, sim: SimServer, short_final_wait: None
) -> None:
    """The engine lists the deduction but every read of its reactions fails during the void: the
    points are given back (never kept on a failed read), and the refund waits in the outbox for
    the engine to show the deduction applied (never sent for one it never took)."""

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        clock = Steady(h)
        try:
            await open_sale(h, "P5")
            spent = await h.loyalty.spend_points("P5", 500)
            assert isinstance(spent, PointsSpent)

            async def unreadable(request: httpx.Request, forward: Forward) -> httpx.Response:
                return httpx.Response(503, json={"status": "error"})

            h.tamper.on(lambda r: r.url.path.endswith("/reactions"), unreadable, times=1000)
            voided = await h.loyalty.void("P5")
            assert voided.pointsRefunded == 500 and not voided.pointsHeld
            [row] = h.store.rows("pending")
            assert row.requires_key == spent.eventKey  # sent once the engine shows it applied
            h.tamper.hooks.clear()
            await deliver_all(h, clock)
            await assert_given_back_only_if_applied(h, sim, "present")
        finally:
            await h.close()

    run(go())


def test_a_rate_the_engine_applies_otherwise_than_configured_is_a_health_problem(
    tmp_path: object, sim: SimServer
) -> None:
    """Issue 22, observation 4: a deduction applied at another rate than the configured one was a log
    line; it is a health problem once a sale's reactions show it."""

    async def doubled(request: httpx.Request, forward: Forward) -> httpx.Response:
        answer = await forward()
        body = answer.json()
        for r in body["data"]:
            r["points"] = r["points"] * 2
        return httpx.Response(200, json=body)

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        try:
            await open_sale(h, "R2")
            await h.loyalty.spend_points("R2", 100)
            h.tamper.on(lambda r: r.url.path.endswith("/reactions"), doubled, times=1000)
            tendered = await h.loyalty.tender("R2")
            assert tendered.points.state == "final"
            assert "rate_mismatch" in h.loyalty.points.problems
        finally:
            await h.close()

    run(go())


# -- observation 1, the rule: complete after payment never takes a discount back ----------------


def test_complete_without_tender_keeps_an_overdraw_reports_it_and_counts_it(tmp_path: object, sim: SimServer) -> None:
    """Issue 22, observation 1 (decided): a POS that never tenders.  Bob's 300 points are spent twice
    (200 at another till first, then 200 here, both shown applied); complete, after payment, keeps
    this sale's points, says the member is overdrawn, and health counts it."""
    from tests.flow_harness import BOB

    async def go() -> None:
        other = Harness(tmp_path / "other", sim, till_id="till-02")  # type: ignore[operator]
        h = Harness(tmp_path / "here", sim)  # type: ignore[operator]
        try:
            await open_sale(other, "O1", "1000002")
            await open_sale(h, "H1", "1000002")
            assert (await other.loyalty.spend_points("O1", 200)).discount.amount == 200
            h.loyalty.points._unseen.clear()
            # The other till's deduction not yet shown when this till checks the balance: both taken.
            sim.state.members[BOB]["pointsBalance"] += 200
            await h.loyalty.spend_points("H1", 200)
            sim.state.members[BOB]["pointsBalance"] -= 200
            done = await h.loyalty.complete("H1", 1000, [], True)
            assert done.points.overdrawn == 200 and done.points.final == 200
            assert h.loyalty.points.overdraws_kept == 1 and "overdraw_kept" in h.loyalty.points.problems
            assert [e for e in h.of_type("error") if e["code"] == "overdraw_kept"]
        finally:
            await h.close()
            await other.close()

    run(go())


def test_tender_makes_every_deduction_of_a_sale_final_and_a_second_tender_reads_nothing_again(
    tmp_path: object, sim: SimServer
) -> None:
    """Issue 22, observation 1: two spends on one sale, one member who has the points: tender makes
    both final (one set of reads for the sale); tendering again finds nothing left to decide."""

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        try:
            await open_sale(h, "M1")
            await h.loyalty.spend_points("M1", 300)
            await h.loyalty.spend_points("M1", 200)
            tendered = await h.loyalty.tender("M1")
            assert tendered.ready is True
            assert tendered.points.state == "final" and tendered.points.final == 500
            assert tendered.points.balanceAfter == 750
            before = len(h.tamper.seen)
            again = await h.loyalty.tender("M1")
            assert again.points.final == 500 and h.tamper.seen[before:] == []
        finally:
            await h.close()

    run(go())


def test_the_api_takes_entry_scanned_or_keyed_and_keyed_is_the_default(tmp_path: Path) -> None:
    """Issue 22, observation 5, through the till API: ``entry`` on PUT member; anything else is refused."""
    from tillplug.commands.virtual.till import VirtualTill

    with VirtualTill(tmp_path) as till:
        httpx.post(till.sim.url + "/_sim/faults", json={"down": True}, timeout=10).raise_for_status()
        for tx, body, unverified in (
            ("E1", {"code": "1000002"}, True),
            ("E2", {"code": "1000002", "entry": "keyed"}, True),
            ("E3", {"code": "1000002", "entry": "scanned"}, False),
        ):
            assert till.api.post("/v1/checkouts", json={"transactionId": tx, "lane": 1}).status_code == 201
            attached = till.api.put(f"/v1/checkouts/{tx}/member", json=body)
            assert attached.status_code == 200, attached.text
            assert attached.json()["memberUnverified"] is unverified
            till.api.post(f"/v1/checkouts/{tx}/void")
        assert till.api.post("/v1/checkouts", json={"transactionId": "E4", "lane": 1}).status_code == 201
        refused = till.api.put("/v1/checkouts/E4/member", json={"code": "1000002", "entry": "typed"})
        assert refused.status_code in (400, 422) and refused.json()["error"]["code"] == "invalid_request"
