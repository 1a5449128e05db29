"""#21 observation 7: verdicts that compare times use the engine's clock, not our wall clock.

A pending burn is settled from the benefit's ``burnedAt`` (the engine's clock) against our
intent.  Our wall clock stepped while the burn was pending must change nothing: our own burn
stays ours (a step back), another till's earlier burn stays someone else's (a step forward).
The step is made in the client's view of the wall clock only (``time.time`` as the engine
client reads it); the simulator, its Date headers and ``time.monotonic`` go on undisturbed.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flow_harness import Harness, is_burn, reset_after, reset_before
from tillplug.engine.clock import EngineClock, InFlight
from tillplug.flows.answers import VoucherPending
from tillplug.sim import SimServer

CODE = "ALICE-5OFF-0001"


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer() as s:
        yield s


def step_wall_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """From now on the engine client reads a wall clock ``seconds`` away from the real one."""
    import tillplug.engine.client as client_module

    stepped = types.SimpleNamespace(
        time=lambda: time.time() + seconds, monotonic=time.monotonic, perf_counter=time.perf_counter
    )
    monkeypatch.setattr(client_module, "time", stepped)


async def settled_outcome(h: Harness) -> str:
    assert await h.loyalty.settle_owed() == 0
    [verdict] = h.of_type("voucher_settled")
    return str(verdict["outcome"])


def test_our_own_burn_stays_ours_when_the_clock_steps_back_while_it_is_pending(
    tmp_path: Path, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen: after a 5 s step back, our own burn settled as "used before": no discount, voucher gone."""

    async def go() -> str:
        h = Harness(tmp_path, sim)
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            h.tamper.on(is_burn, reset_after)  # the burn lands; its answer is lost
            assert isinstance(await h.loyalty.apply_voucher("T1", CODE), VoucherPending)
            step_wall_clock(monkeypatch, -5.0)
            return await settled_outcome(h)
        finally:
            await h.close()

    assert asyncio.run(go()) == "burned"


def test_another_tills_earlier_burn_is_not_taken_for_ours_when_the_clock_steps_forward(
    tmp_path: Path, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step forward must not make a burn from before our intent look like ours."""

    async def go() -> str:
        h = Harness(tmp_path, sim)
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            real = sim.state.clock
            sim.state.clock = lambda: real() - 4.0  # another till burned the code 4 s before our intent
            sim.state.validate_voucher({"code": CODE})
            sim.state.clock = real
            h.tamper.on(is_burn, reset_before)  # ours never reached the engine; the till cannot tell
            assert isinstance(await h.loyalty.apply_voucher("T1", CODE), VoucherPending)
            step_wall_clock(monkeypatch, +5.0)
            return await settled_outcome(h)
        finally:
            await h.close()

    assert asyncio.run(go()) == "not_burned"  # used before: the till gives no discount


def test_the_points_grace_is_counted_on_a_steady_clock(
    tmp_path: Path, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen: the not-found grace of a pending deduction used time.time(): a step forward ended it early."""

    class Monotonic:
        now = 100.0

        def __call__(self) -> float:
            return self.now

    async def go() -> tuple[str, str]:
        h = Harness(tmp_path, sim)
        try:
            mono = Monotonic()
            h.client.in_flight = InFlight(h.client.in_flight.window, monotonic=mono)
            await h.loyalty.open_checkout("T1", 1, "c-1")
            await h.loyalty.attach_member("T1", "1000001")
            h.tamper.on(lambda r: r.method == "POST" and r.url.path.endswith("/events/"), reset_before)
            assert (await h.loyalty.spend_points("T1", 500)).pending is True
            # However far the wall clock is set ahead, only steady time ends the window.
            import tillplug.flows.points as points_module

            ahead = types.SimpleNamespace(time=lambda: time.time() + 3600, monotonic=time.monotonic)
            monkeypatch.setattr(points_module, "time", ahead)
            first = await h.loyalty.settle_owed()
            mono.now += h.client.in_flight.window + 1
            second = await h.loyalty.settle_owed()
            return str(first), str(second)
        finally:
            await h.close()

    assert asyncio.run(go()) == ("1", "0")


def test_the_engine_clock_is_bounded_by_its_date_headers() -> None:
    now = [50.0]
    clock = EngineClock(monotonic=lambda: now[0], tolerance=0.0)
    assert clock.now() is None  # nothing seen: nothing guessed
    clock.observe("Tue, 15 Nov 1994 08:12:31 GMT", left=49.9, arrived=50.0)
    at = clock.now()
    assert at is not None and at.high - at.low == pytest.approx(2.1)  # a second, a stale second, the trip
    clock.observe("Tue, 15 Nov 1994 08:12:32 GMT", left=50.5, arrived=50.6)  # a second's edge: narrower
    narrowed = clock.at(50.0)
    assert narrowed is not None and narrowed.high - narrowed.low < at.high - at.low


def test_our_own_burn_stays_ours_when_writing_its_intent_down_was_slow(
    tmp_path: Path, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen in CI (twice, a loaded machine): a burn that landed, its answer lost, settled "unverifiable".

    The intent's wall time was stamped before its commit, its steady moment after the commit's
    hop back to the loop; a slow commit put the two apart by more than the engine clock's
    tolerance, so our stamp looked stepped and the burn's time fell before "ours from".
    """

    async def go() -> str:
        h = Harness(tmp_path, sim)
        begin_burn = h.loyalty.checkouts.begin_burn

        def slow_begin_burn(*args: object) -> int:
            burn_id = begin_burn(*args)  # type: ignore[arg-type]
            time.sleep(3.0)  # a commit held up by a busy disk or a starved thread
            return burn_id

        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            monkeypatch.setattr(h.loyalty.checkouts, "begin_burn", slow_begin_burn)
            h.tamper.on(is_burn, reset_after)  # the burn lands; its answer is lost
            assert isinstance(await h.loyalty.apply_voucher("T1", CODE), VoucherPending)
            return await settled_outcome(h)
        finally:
            await h.close()

    assert asyncio.run(go()) == "burned"
