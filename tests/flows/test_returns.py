"""Issue 25, part 1: returns after the sale, through the flows against the simulator.

A sale's earned points are taken back and its spent points given back, in proportion, exactly
once, never past what was sold, never below a zero balance unless the config says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.flow_harness import ALICE, Harness, settled_balance
from tests.receipts.test_slips import text_of
from tillplug.errors import CheckoutConflict, CheckoutNotFound, ReturnExceedsSale, ReturnIdReused
from tillplug.flows.completion import BasketLine
from tillplug.flows.returns import ReturnedLine, ReturnRequest
from tillplug.sim import SimServer

BASKET = [BasketLine("SHIRT", 2, 1500), BasketLine("SOCKS", 2, 1500)]


@pytest.fixture
def sim():
    with SimServer() as s:
        yield s


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class Till:
    """A harness whose outbox delivers in the background (as the daemon's does) and whose slips are kept."""

    def __init__(self, tmp_path: Any, sim: SimServer, **overrides: Any) -> None:
        overrides.setdefault("receipts", {"points_slip": True, "voucher_receipt": False, "sale_summary": False})
        self.h = Harness(tmp_path, sim, **overrides)
        self.slips: list[Any] = []
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

        async def printer(lane: int, receipt: Any) -> dict[str, Any]:
            self.slips.append(receipt)
            return {"job": len(self.slips), "state": "queued"}

        self.h.loyalty.ctx.printer = printer

    def returns(self) -> list[Any]:
        return [slip for slip in self.slips if slip.kind == "return"]

    def deliver(self) -> None:
        self.task = asyncio.ensure_future(self.h.deliverer.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        await self.h.close()


async def sale(h: Harness, tx: str, *, spend: int = 500, total: int = 2500, member: str | None = "1000001") -> None:
    """A completed sale: 30.00 of goods, ``spend`` points (5.00) off, ``total`` paid."""
    await h.loyalty.open_checkout(tx, 1, "c-1")
    if member:
        await h.loyalty.attach_member(tx, member)
    if spend:
        await h.loyalty.spend_points(tx, spend)
    await h.loyalty.tender(tx)
    await h.loyalty.complete(tx, total, BASKET, True)


def moves(sim: SimServer, tx: str, event_type: str) -> list[dict[str, Any]]:
    return [
        e["payload"]
        for e in sim.state.ledger.events
        if e["type"] == event_type and e["payload"].get("transactionId") == tx and "returnId" in e["payload"]
    ]


def returning(return_id: str, tx: str, amount: int, *lines: tuple[str, float, int]) -> ReturnRequest:
    return ReturnRequest(return_id, tx, 1, amount, tuple(ReturnedLine(*line) for line in lines))


def test_half_a_sale_returned_the_next_day_takes_back_and_gives_back_once_each_and_the_slip_says_the_balance(
    tmp_path, sim
):
    """The issue's done-when: 500 points spent and 25 earned, half returned; past what was sold is refused."""

    async def go() -> None:
        till = Till(tmp_path, sim)
        h = till.h
        try:
            await sale(h, "T1")
            assert await h.drain()
            assert await settled_balance(sim, ALICE, 1250 - 500 + 25) == 775
            till.deliver()
            answer = await h.loyalty.return_sale(returning("R1", "T1", 1500, ("SHIRT", 2, 1500)))
            assert answer.pointsEarned == 25 and answer.pointsSpent == 500
            # Given back: 1500 of 3000 before the points discount; taken back: 1500 of 2500 paid, floored.
            assert (answer.giveBack.state, answer.giveBack.points) == ("applied", 250)
            assert (answer.takeBack.state, answer.takeBack.points, answer.takeBack.notTakenBack) == ("applied", 15, 0)
            assert answer.balanceAfter == 775 + 250 - 15 and not answer.balanceEstimated
            assert answer.returnedSoFar == 1500 and answer.returnable == 1500
            assert len(moves(sim, "T1", "POINTS_TAKEN_BACK")) == 1 and len(moves(sim, "T1", "POINTS_REFUND")) == 1
            [slip] = till.returns()
            text = text_of(slip)
            assert "Points taken back" in text and "15 pts" in text and "250 pts" in text
            assert "New balance" in text and "1,010 pts" in text and "****0001" in text

            # The same returnId: the first answer, nothing sent again, no second slip.
            assert await h.loyalty.return_sale(returning("R1", "T1", 1500, ("SHIRT", 2, 1500))) == answer
            assert len(till.returns()) == 1

            # Past what was sold: refused, nothing queued.
            rows = len(h.store.rows())
            with pytest.raises(ReturnExceedsSale, match="at most"):
                await h.loyalty.return_sale(returning("R2", "T1", 1501))
            with pytest.raises(ReturnExceedsSale, match="SHIRT"):
                await h.loyalty.return_sale(returning("R3", "T1", 100, ("SHIRT", 1, 100)))
            assert len(h.store.rows()) == rows and h.loyalty.returns.record("R2") is None

            # The rest: exactly what is left of both.
            rest = await h.loyalty.return_sale(returning("R4", "T1", 1500, ("SOCKS", 2, 1500)))
            assert (rest.giveBack.points, rest.takeBack.points) == (250, 10)
            assert rest.balanceAfter == 775 + 500 - 25 and rest.returnable == 0
            assert sum(m["points"] for m in moves(sim, "T1", "POINTS_TAKEN_BACK")) == 25
            assert sum(m["points"] for m in moves(sim, "T1", "POINTS_REFUND")) == 500
            assert sim.state.ledger.duplicates() == {}
            with pytest.raises(ReturnExceedsSale):
                await h.loyalty.return_sale(returning("R5", "T1", 1))
            events = h.of_type("return")
            assert [e["returnId"] for e in events] == ["R1", "R4"]
            assert all("member" not in e and ALICE not in str(e) for e in events)
        finally:
            await till.close()

    run(go())


def test_a_return_whose_sale_earn_is_still_in_the_outbox_gives_back_now_and_takes_back_after_it(tmp_path, sim):
    async def go() -> None:
        till = Till(tmp_path, sim)
        h = till.h
        try:
            await sale(h, "T2")  # its earn is queued, not delivered: the engine is "away" for the outbox
            answer = await h.loyalty.return_sale(returning("R1", "T2", 3000))
            assert answer.takeBack.state == "waiting" and answer.pointsEarned is None
            assert answer.giveBack.points == 500 and answer.balanceEstimated
            text = text_of(till.returns()[0])
            assert "Points taken back" not in text and "Estimated balance" in text
            # A second return of the same sale waits behind the first.
            assert await h.loyalty.returns.settle_waiting() == 1
            assert await h.drain()
            await settled_balance(sim, ALICE, 1250 + 25)  # the earn and the give-back applied
            assert await h.loyalty.settle_owed() == 0  # the settler's own pass, as the daemon runs it
            [settled] = h.of_type("return_settled")
            assert settled["takeBack"]["points"] == 25 and settled["takeBack"]["state"] == "queued"
            assert await h.drain()
            types = [e["type"] for e in sim.state.ledger.events if e["payload"].get("transactionId") == "T2"]
            assert types.index("TRANSACTION") < types.index("POINTS_TAKEN_BACK")
            assert await settled_balance(sim, ALICE, 1250) == 1250
            # The first answer still answers the returnId.
            assert (await h.loyalty.return_sale(returning("R1", "T2", 3000))).takeBack.state == "waiting"
        finally:
            await till.close()

    run(go())


@pytest.mark.parametrize(("allow", "taken", "short"), [(False, 5, 20), (True, 25, 0)])
def test_a_take_back_never_takes_the_balance_below_zero_unless_the_config_says_so(tmp_path, sim, allow, taken, short):
    async def go() -> None:
        till = Till(tmp_path, sim, returns={"allow_negative_balance": allow, "confirm_wait": 0})
        h = till.h
        try:
            await sale(h, "T3", spend=0, total=2500)
            assert await h.drain()
            await settled_balance(sim, ALICE, 1275)
            sim.state.members[ALICE]["pointsBalance"] = 5  # spent elsewhere since
            answer = await h.loyalty.return_sale(returning("R1", "T3", 2500))
            assert (answer.takeBack.due, answer.takeBack.points, answer.takeBack.notTakenBack) == (25, taken, short)
            assert (answer.takeBack.reason is not None) == (not allow)
            assert await h.drain()
            assert await settled_balance(sim, ALICE, 5 - taken) == 5 - taken
            # What could not be taken back is not asked for again by a later return.
            assert sum(m["points"] for m in moves(sim, "T3", "POINTS_TAKEN_BACK")) == taken
        finally:
            await till.close()

    run(go())


def test_policies_none_and_all_and_the_earned_points_are_the_engines_not_the_tills_rate(tmp_path, sim):
    """The till's own earn rate says 3 points a pound (75 on this sale); the engine's reactor gave 25:
    25 are taken back."""

    async def go() -> None:
        till = Till(
            tmp_path,
            sim,
            returns={"take_back": "all", "give_back": "none", "confirm_wait": 0},
            points={"earn_per_major_unit": 3.0},
        )
        h = till.h
        try:
            await sale(h, "T4")
            assert await h.drain()
            await settled_balance(sim, ALICE, 775)
            first = await h.loyalty.return_sale(returning("R1", "T4", 100))
            assert first.pointsEarned == 25
            assert (first.takeBack.points, first.giveBack.points, first.giveBack.state) == (25, 0, "none")
            second = await h.loyalty.return_sale(returning("R2", "T4", 100))
            assert (second.takeBack.points, second.takeBack.state) == (0, "none")
        finally:
            await till.close()

    run(go())


def test_what_cannot_be_returned_is_refused_clearly_and_changes_nothing(tmp_path, sim):
    async def go() -> None:
        till = Till(tmp_path, sim, returns={"confirm_wait": 0})
        h = till.h
        try:
            with pytest.raises(CheckoutNotFound, match="Without the relay"):
                await h.loyalty.return_sale(returning("R1", "ELSEWHERE", 100))
            await h.loyalty.open_checkout("OPEN", 1, None)
            with pytest.raises(CheckoutConflict, match="only a completed sale"):
                await h.loyalty.return_sale(returning("R1", "OPEN", 100))
            await sale(h, "T5", spend=0)
            with pytest.raises(ReturnExceedsSale, match="HAT was not sold"):
                await h.loyalty.return_sale(returning("R1", "T5", 100, ("HAT", 1, 100)))
            with pytest.raises(ReturnExceedsSale, match="SOCKS: 2 sold"):
                await h.loyalty.return_sale(returning("R1", "T5", 100, ("SOCKS", 3, 100)))
            assert h.loyalty.returns.records("T5") == []
            await h.loyalty.return_sale(returning("R1", "T5", 100, ("SOCKS", 1, 100)))
            with pytest.raises(ReturnIdReused):
                await h.loyalty.return_sale(returning("R1", "T5", 200))
            # A sale with no member: the return is taken, with no points to move.
            await sale(h, "T6", spend=0, member=None)
            plain = await h.loyalty.return_sale(returning("R6", "T6", 100))
            assert (plain.takeBack.state, plain.giveBack.state, plain.member) == ("none", "none", None)
        finally:
            await till.close()

    run(go())


def test_a_return_cut_short_after_its_commit_answers_from_its_record_and_moves_nothing_twice(tmp_path, sim):
    """The till restarts between the commit and the answer: the retry builds the first answer from the
    record, and queues nothing more."""

    async def go() -> None:
        till = Till(tmp_path, sim, returns={"confirm_wait": 0})
        h = till.h
        try:
            await sale(h, "T7")
            assert await h.drain()
            await settled_balance(sim, ALICE, 775)
            request = returning("R1", "T7", 1500)
            await h.loyalty.returns._take(request)  # committed; the process "dies" before answering
            rows = len(h.store.rows())
            record = h.loyalty.returns.record("R1")
            assert record is not None and record.answer is None
        finally:
            await till.close()
        again = Till(tmp_path, sim, returns={"confirm_wait": 0})
        try:
            answer = await again.h.loyalty.return_sale(request)
            assert (answer.giveBack.points, answer.takeBack.points) == (250, 15)
            assert len(again.h.store.rows()) == rows
            assert await again.h.loyalty.return_sale(request) == answer
            assert await again.h.drain()
            assert len(moves(sim, "T7", "POINTS_TAKEN_BACK")) == len(moves(sim, "T7", "POINTS_REFUND")) == 1
        finally:
            await again.close()

    run(go())


def test_kill_dash_9_at_each_step_of_a_return_leaves_it_exactly_once(tmp_path, sim):
    """A real process taking the return, killed with SIGKILL at each step of it (before its commit,
    after it, after a delivery, after the answer; each a random moment after its cue, while engine
    calls take 60 ms), started again each time, then let finish: every point moves exactly once."""
    rng = random.Random(25)

    async def setup() -> None:
        h = Harness(tmp_path, sim)
        try:
            await sale(h, "T1")
            assert await h.drain()
            await settled_balance(sim, ALICE, 775)
        finally:
            await h.close()

    run(setup())
    sim.sim.faults.slow_ms = 60
    cmd = [sys.executable, "-m", "tests.flows.returns_child", str(tmp_path), sim.url]
    root = Path(__file__).resolve().parents[2]
    killed: list[str] = []
    for cue in ("returning", "committed", "delivered", "delivered", "answered", "delivered"):
        child = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert child.stdout is not None
        for line in child.stdout:  # bounded: the child exits (EOF) when it is done
            if line.strip() == cue:
                time.sleep(rng.uniform(0.0, 0.08))
                child.send_signal(signal.SIGKILL)
                killed.append(cue)
                break
        child.wait(30)
        child.stdout.close()
    sim.sim.faults.slow_ms = 0
    final = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stdout + final.stderr
    assert final.stdout.split()[-3:] == ["done", "15", "250"]
    assert {"returning", "committed", "delivered"} <= set(killed), killed
    assert [m["points"] for m in moves(sim, "T1", "POINTS_TAKEN_BACK")] == [15]
    assert [m["points"] for m in moves(sim, "T1", "POINTS_REFUND")] == [250]
    assert sim.state.ledger.duplicates() == {}
    assert asyncio.run(_balance_settles(sim, 775 + 250 - 15)) == 1010


async def _balance_settles(sim: SimServer, expected: float) -> float:
    return await settled_balance(sim, ALICE, expected)


@pytest.mark.parametrize(("listed", "state"), [("flat", "none"), ("never", "unverifiable")])
def test_a_sale_whose_earn_shows_no_points_takes_nothing_back_only_where_reactions_are_listed(
    tmp_path, sim, listed, state
):
    """No points in the earn's reactions a minute on: nothing earned, where the engine lists reactions
    (engine-check); where it never does, nothing can be concluded and the answer says so."""

    async def go() -> None:
        till = Till(tmp_path, sim, returns={"confirm_wait": 0})
        h = till.h
        try:
            await sale(h, "T8", spend=0, total=50)  # 50p earns nothing: the engine lists no reaction
            assert await h.drain()
            with h.store.transaction() as t:  # a minute later
                t.execute("UPDATE outbox SET updated = updated - 120")
            h.client.dialect = dataclasses.replace(h.client.dialect, reactions=listed)
            answer = await h.loyalty.return_sale(returning("R1", "T8", 50))
            assert answer.takeBack.state == state and answer.takeBack.points == 0
            assert (answer.pointsEarned == 0) == (listed == "flat")
        finally:
            await till.close()

    run(go())


def test_a_return_gives_nothing_back_for_a_deduction_the_engine_never_applied(tmp_path, sim):
    """#21, found by the mutation work: with the redemption reactor missing, the engine records a
    spend of 500 but takes nothing.  The sale completed without tender, so its deduction was never
    shown applied; returning the whole sale gave the 500 points back: invented.  A return now gives
    back only what the engine took (the void's rule), and says so in its answer."""
    import httpx

    httpx.post(sim.url + "/_sim/reactors", json={"redemption": "missing"}, timeout=10).raise_for_status()

    async def go() -> None:
        till = Till(tmp_path, sim)
        h = till.h
        try:
            await h.loyalty.open_checkout("T9", 1, "c-1")
            await h.loyalty.attach_member("T9", "1000001")
            await h.loyalty.spend_points("T9", 500)
            await h.loyalty.complete("T9", 2500, BASKET, True)  # no tender: the points were never final
            assert await h.drain()
            start = await settled_balance(sim, ALICE, 1250 + 25)
            assert start == 1250 + 25, "the spend took nothing; the earn was applied"
            till.deliver()
            answer = await h.loyalty.return_sale(returning("R9", "T9", 3000, ("SHIRT", 2, 1500), ("SOCKS", 2, 1500)))
            assert answer.giveBack.points == 0, answer
            assert moves(sim, "T9", "POINTS_REFUND") == []
            assert await settled_balance(sim, ALICE, start - 25) == start - 25  # the earn taken back, nothing given
        finally:
            await till.close()

    run(go())
