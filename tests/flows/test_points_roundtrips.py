"""A spend's till's own work (its SQLite commits, each with an fsync) overlaps its engine round trips.

Over a WAN the cashier waits for three sequential round trips; the intent row's commit is made
while the balance is re-read and the outcome's commit while the confirming reads are out, so
neither adds to the wait.  Money safety is unchanged: the intent row is durable before the engine
hears of the deduction, the outcome is recorded before the till is told, and a spend stopped
before its report leaves no row that counts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.flow_harness import ALICE, Harness, body_of, is_spend, reset_before, settled_balance
from tillplug.engine.dialect import EngineDialect
from tillplug.errors import EngineUnavailable, InsufficientPoints, TillplugError
from tillplug.flows.answers import PointsSpent
from tillplug.flows.checkouts import Deduction
from tillplug.flows.intents import State
from tillplug.sim import SimServer

OVERLAP_WAIT = 2.0  # seconds one side waits to see the other in flight; only a regression waits this long
Forward = Callable[[], Awaitable[httpx.Response]]


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer() as s:
        yield s


def is_wallet_read(request: httpx.Request) -> bool:
    return request.method == "GET" and request.url.path.endswith("/wallet")


def is_reactions_read(request: httpx.Request) -> bool:
    return request.method == "GET" and request.url.path.endswith("/reactions")


async def open_sale(h: Harness, tx: str) -> None:
    await h.loyalty.open_checkout(tx, 1, "c-1")
    await h.loyalty.attach_member(tx, "1000001")  # Alice, 1250 points


def test_the_intent_row_is_committed_while_the_balance_is_re_read_and_is_durable_before_the_report(
    tmp_path: Path, sim: SimServer
) -> None:
    async def go() -> None:
        h = Harness(tmp_path, sim)
        store = h.loyalty.checkouts
        wallet_in_flight = threading.Event()
        begun = threading.Event()
        overlapped: list[bool] = []
        durable_at_report: list[Deduction | None] = []
        original_begin = store.begin_deduction

        def begin(d: Deduction) -> None:  # runs in a worker thread, as every commit does
            begun.set()
            overlapped.append(wallet_in_flight.wait(OVERLAP_WAIT))
            original_begin(d)

        async def wallet(request: httpx.Request, forward: Forward) -> httpx.Response:
            wallet_in_flight.set()
            try:
                # The read is held (bounded) until the commit has begun: on a loaded machine the
                # answer could otherwise come back before the worker thread even looks.  A spend
                # that commits only after the read never begins meanwhile, and fails the check.
                await asyncio.to_thread(begun.wait, OVERLAP_WAIT)
                return await forward()
            finally:
                wallet_in_flight.clear()

        async def report(request: httpx.Request, forward: Forward) -> httpx.Response:
            durable_at_report.append(store.deduction(body_of(request)["payload"]["eventKey"]))
            return await forward()

        try:
            await open_sale(h, "R1")
            store.begin_deduction = begin  # type: ignore[method-assign]
            h.tamper.on(is_wallet_read, wallet)
            h.tamper.on(is_spend, report)
            answer = await h.loyalty.spend_points("R1", 100)
            assert answer.pending is False and answer.balanceAfter == 1150
            assert overlapped == [True], "the intent's commit waited for the wallet re-read"
            [row] = durable_at_report
            assert row is not None and row.state == "sending" and row.points == 100
        finally:
            await h.close()

    asyncio.run(go())


def test_the_outcome_is_committed_while_the_confirming_reads_are_out_and_recorded_before_the_till_hears(
    tmp_path: Path, sim: SimServer
) -> None:
    async def go() -> None:
        h = Harness(tmp_path, sim)
        store = h.loyalty.checkouts
        confirming = threading.Event()
        overlapped: list[bool] = []
        original_settle = store.deduction_intents.settle

        def settle(event_key: str, state: State, **kwargs: Any) -> None:
            if state == State.LANDED:
                overlapped.append(confirming.wait(OVERLAP_WAIT))
            original_settle(event_key, state, **kwargs)

        async def reactions(request: httpx.Request, forward: Forward) -> httpx.Response:
            confirming.set()
            return await forward()

        try:
            await open_sale(h, "R2")
            store.deduction_intents.settle = settle  # type: ignore[method-assign,assignment]
            h.tamper.on(is_reactions_read, reactions)
            answer = await h.loyalty.spend_points("R2", 100)
            assert answer.pending is False and answer.balanceEstimated is False
            assert overlapped == [True], "the outcome's commit waited for nothing, before the confirming reads"
            row = store.deduction(answer.eventKey)
            assert row is not None and row.state == "landed"  # recorded before the till was told
        finally:
            await h.close()

    asyncio.run(go())


async def refuse_points(h: Harness) -> None:
    await h.loyalty.spend_points("R3", 5000)  # Alice has 1250


async def lose_the_wallet_read(h: Harness) -> None:
    h.tamper.on(is_wallet_read, reset_before, times=100)  # every retry of the read too
    await h.loyalty.spend_points("R3", 100)


@pytest.mark.parametrize(
    ("stop", "error"),
    [(refuse_points, InsufficientPoints), (lose_the_wallet_read, EngineUnavailable)],
    ids=["too-few-points", "wallet-read-lost"],
)
def test_a_spend_stopped_before_its_report_leaves_no_row_that_counts_nor_anything_to_refund(
    tmp_path: Path,
    sim: SimServer,
    stop: Callable[[Harness], Awaitable[None]],
    error: type[TillplugError],
) -> None:
    """Its intent row, committed while the balance was re-read, is marked failed (before, no row
    was written): the member can still be changed on the sale, and a restart queues no
    refund-if-landed for it.  Guards the overlap: fails if the row were left 'sending'."""

    async def go() -> None:
        h = Harness(tmp_path, sim)
        try:
            await open_sale(h, "R3")
            with pytest.raises(error):
                await stop(h)
            assert not any(is_spend_call(c) for c in h.tamper.seen)
            assert all(d.state == "not_landed" for d in h.loyalty.checkouts.deductions("R3"))
            changed = await h.loyalty.attach_member("R3", "1000002")  # another member: nothing was spent
            assert changed.member is not None
        finally:
            await h.close()
        restarted = Harness(tmp_path, sim)
        try:
            assert restarted.loyalty.recover() == 0
            assert restarted.store.stats().depth == 0
        finally:
            await restarted.close()

    asyncio.run(go())


def is_spend_call(seen: str) -> bool:
    return seen.startswith("POST ") and seen.rstrip("/").endswith("/events")


# -- what confirms a deduction ---------------------------------------------------------------------


def confirming_calls(h: Harness, before: int) -> list[str]:
    """The engine requests a spend made after reporting its deduction."""
    calls = h.tamper.seen[before:]
    return calls[calls.index("POST /v1/events/") + 1 :]


def test_a_balance_lowered_by_another_tills_spend_first_is_not_taken_for_ours_and_the_overdraw_is_seen(
    tmp_path: Path, sim: SimServer
) -> None:
    """Reactions listed promptly (flat, as engine-check finds on this simulator): another till's
    1000 points are applied at once, ours 0.2 s later.  The first confirming pair sees 250 (at or
    below our estimate of 750) but our reaction not yet applied; taking 250 would hide the
    overdraw.  The next pair sees ours applied and -250: one of the two spends is given back."""
    sim.state.reactors["delay_seconds"] = 0.2

    async def another_till_spends_first(request: httpx.Request, forward: Forward) -> httpx.Response:
        response = await forward()
        sim.state.members[ALICE]["pointsBalance"] -= 1000  # applied before ours
        return response

    async def go() -> None:
        h = Harness(tmp_path, sim, points={"confirm_reads": 4})
        try:
            assert h.client.dialect.reactions == "flat"
            await open_sale(h, "R4")
            h.tamper.on(is_spend, another_till_spends_first)
            with pytest.raises(InsufficientPoints):
                await h.loyalty.spend_points("R4", 500)
            assert await h.drain()
            assert await settled_balance(sim, ALICE, 250) == 250  # ours given back, never below zero
        finally:
            await h.close()

    asyncio.run(go())


def test_reactions_showing_ours_applied_let_a_later_balance_read_confirm_it(tmp_path: Path, sim: SimServer) -> None:
    """The balance read beside the reactions was a moment early (here: answered as before the
    spend); the one read left in the budget is of the balance, and it confirms the spend."""
    sim.state.reactors["delay_seconds"] = 0.0
    wallet_reads = [0]

    async def first_confirming_wallet_read_early(request: httpx.Request, forward: Forward) -> httpx.Response:
        response = await forward()
        wallet_reads[0] += 1
        if wallet_reads[0] != 2:  # the 1st is the re-read before the report
            return response
        data = response.json()
        data["data"]["pointsBalance"] += 100
        return httpx.Response(200, json=data)

    async def go() -> None:
        h = Harness(tmp_path, sim, points={"confirm_reads": 3})  # a pair, then one read left
        try:
            await open_sale(h, "R5")
            h.tamper.on(is_wallet_read, first_confirming_wallet_read_early, times=2)
            before = len(h.tamper.seen)
            answer = await h.loyalty.spend_points("R5", 100)
            assert isinstance(answer, PointsSpent)
            assert answer.balanceEstimated is False and answer.balanceAfter == 1150
            calls = confirming_calls(h, before)
            # The pair (in either order), then the balance alone.
            assert len(calls) == 3 and sum(c.endswith("/reactions") for c in calls[:2]) == 1, calls
            assert calls[2] == f"GET /v1/users/{ALICE}/wallet"
        finally:
            await h.close()

    asyncio.run(go())


def test_with_no_read_left_that_could_confirm_the_till_is_answered_at_once(tmp_path: Path, sim: SimServer) -> None:
    """Reactions listed promptly, ours never applied while we wait: after the first pair shows it
    not applied, the one read left (of 3) could not confirm anything, so none is made and the
    estimate is answered without a further wait."""
    sim.state.reactors["delay_seconds"] = 3600

    async def go() -> None:
        h = Harness(tmp_path, sim)
        try:
            await open_sale(h, "R6")
            before = len(h.tamper.seen)
            answer = await h.loyalty.spend_points("R6", 100)
            assert isinstance(answer, PointsSpent)
            assert answer.balanceEstimated is True and answer.balanceAfter == 1150
            calls = confirming_calls(h, before)
            assert len(calls) == 2 and any(c.endswith("/reactions") for c in calls), calls
        finally:
            await h.close()

    asyncio.run(go())


def test_where_reactions_are_not_known_to_be_listed_the_balance_alone_confirms_in_one_read(
    tmp_path: Path, sim: SimServer
) -> None:
    """Without engine-check's word that reactions are listed promptly (dialect unknown), what they
    say could not change the verdict, so they are not read: a spend costs 3 engine requests."""

    async def go() -> None:
        h = Harness(tmp_path, sim)
        h.client.dialect = EngineDialect()  # every answer unknown, as with no dialect file
        try:
            await open_sale(h, "R7")
            before = len(h.tamper.seen)
            answer = await h.loyalty.spend_points("R7", 100)
            assert isinstance(answer, PointsSpent)
            assert answer.balanceEstimated is False and answer.balanceAfter == 1150
            assert h.tamper.seen[before:] == [
                f"GET /v1/users/{ALICE}/wallet",
                "POST /v1/events/",
                f"GET /v1/users/{ALICE}/wallet",
            ]
        finally:
            await h.close()

    asyncio.run(go())
