"""Whose burn a benefit shows: a lost burn answer is settled from the benefit's burn time.

The engine's clock is known only through its Date header (whole seconds).  These
properties pin what tillplug may conclude from it: a burn made on another sale
before our intent is never taken for ours (beyond the second the Date header
cannot resolve), and our own burn is never taken for someone else's.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.flow_harness import Harness, is_burn, reset_after
from tillplug.engine.models import Benefit
from tillplug.errors import VouchersPending
from tillplug.flows.answers import VoucherPending
from tillplug.flows.vouchers import (
    DATE_SLACK,
    NOT_BURNED,
    OURS,
    UNVERIFIABLE,
    USED_BEFORE,
    burn_verdict,
    engine_offset,
    verdict_between,
)
from tillplug.sim import SimServer

SINCE = 1_800_000_000.0  # our intent, on our clock


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def benefit(burned_at: float | None) -> Benefit:
    return Benefit.model_validate(
        {
            "id": "b-1",
            "code": {"value": "ALICE-5OFF-0001", "validatedAt": None if burned_at is None else iso(burned_at)},
            "burnedAt": None if burned_at is None else iso(burned_at),
        }
    )


def offset_seen(true_offset: float, rtt: float, seen_after: float) -> tuple[float, float]:
    """engine_offset as a response received ``seen_after`` s after our intent, its round trip ``rtt``, shows it."""
    seen = SINCE + seen_after
    handled = seen - rtt / 2  # our clock
    date = format_datetime(datetime.fromtimestamp(math.floor(handled + true_offset), UTC), usegmt=True)
    return engine_offset(date, seen)


clock_offsets = st.floats(min_value=-600, max_value=600, allow_nan=False)
round_trips = st.floats(min_value=0, max_value=2 * DATE_SLACK * 0.9)
gaps = st.floats(min_value=0.001, max_value=900)
seen_afters = st.floats(min_value=-3600, max_value=3600)


@given(clock_offsets, round_trips, gaps, seen_afters)
def test_a_burn_made_before_our_intent_is_taken_for_ours_only_within_the_second_the_date_cannot_resolve(
    true_offset: float, rtt: float, gap: float, seen_after: float
) -> None:
    burned = SINCE + true_offset - gap  # engine clock: before our intent
    verdict = burn_verdict(benefit(burned), SINCE, offset_seen(true_offset, rtt, seen_after))
    if verdict == OURS:
        assert gap <= true_offset <= 1 + 2 * DATE_SLACK, (true_offset, gap)


@given(clock_offsets, round_trips, st.floats(min_value=0, max_value=900), seen_afters)
def test_our_own_burn_is_never_taken_for_someone_elses(
    true_offset: float, rtt: float, gap: float, seen_after: float
) -> None:
    burned = SINCE + true_offset + gap  # engine clock: at or after our intent
    assert burn_verdict(benefit(burned), SINCE, offset_seen(true_offset, rtt, seen_after)) != USED_BEFORE


@given(round_trips, st.floats(min_value=0, max_value=900), seen_afters)
def test_with_agreeing_clocks_our_own_burn_is_settled_as_ours(rtt: float, gap: float, seen_after: float) -> None:
    assert burn_verdict(benefit(SINCE + gap), SINCE, offset_seen(0.0, rtt, seen_after)) == OURS


def test_a_burn_long_before_our_intent_is_someone_elses_and_no_burn_is_not_burned() -> None:
    agree = offset_seen(0.0, 0.05, 1.0)
    assert burn_verdict(benefit(SINCE - 60), SINCE, agree) == USED_BEFORE
    assert burn_verdict(benefit(None), SINCE, agree) == NOT_BURNED


def validated_only(validated_at: float) -> Benefit:
    """A benefit as an engine that shows no ``burnedAt`` lists it: the code's validation is the trace."""
    return Benefit.model_validate({"id": "b-1", "code": {"value": "ALICE-5OFF-0001", "validatedAt": iso(validated_at)}})


def test_the_verdicts_edges_at_exact_timestamps() -> None:
    """The edges the model cannot reach (the engine stamps in milliseconds; our moments are floats):
    a burn (or, with no burnedAt, a validation) stamped exactly at the latest our intent can be is
    ours, as the docstring says ("at or after"); one exactly at the earliest our intent can be is not
    clearly before it, so neither ours nor another's: unverifiable, never "used before"."""
    ours_from, others_before = SINCE + 2.0, SINCE - 1.0  # whole milliseconds: exact in ISO stamps
    assert verdict_between(benefit(ours_from), ours_from, others_before) == OURS
    assert verdict_between(validated_only(ours_from), ours_from, others_before) == OURS
    assert verdict_between(validated_only(ours_from - 0.001), ours_from, others_before) == NOT_BURNED
    assert verdict_between(benefit(others_before), ours_from, others_before) == UNVERIFIABLE
    assert verdict_between(benefit(others_before - 0.001), ours_from, others_before) == USED_BEFORE


def test_without_a_date_header_the_clocks_are_taken_to_agree() -> None:
    assert engine_offset(None, None) == (0.0, -DATE_SLACK)
    assert engine_offset("not a date", SINCE) == (0.0, -DATE_SLACK)


# -- through the flows, against the simulator --------------------------------------------------


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer() as s:
        yield s


def is_benefit_listing(request: httpx.Request) -> bool:
    return request.method == "GET" and request.url.path.rstrip("/").endswith("/benefits")


async def refuse(request: httpx.Request, forward: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    return httpx.Response(400, json={"status": "fail", "data": {"message": "filter[owner] is required"}})


def test_a_lost_burn_that_cannot_be_verified_blocks_completion_until_the_till_is_told_so(
    tmp_path: Path, sim: SimServer
) -> None:
    """No member, the burn's answer lost (it landed), and the engine will not list benefits: the
    code's check says "already used" but not by whom.  While unknown the sale cannot complete
    (``vouchers_pending``); then the till is told ``unverifiable``, no discount, and the sale can go on."""

    async def go() -> None:
        h = Harness(tmp_path, sim)
        try:
            await h.loyalty.open_checkout("T1", 1, "c-1")
            h.tamper.on(is_burn, reset_after)
            answer = await h.loyalty.apply_voucher("T1", "ALICE-5OFF-0001")
            assert isinstance(answer, VoucherPending)
            with pytest.raises(VouchersPending):
                await h.loyalty.complete("T1", 2000, [], True)
            h.tamper.on(is_benefit_listing, refuse, times=10)
            assert await h.loyalty.settle_owed() == 0
            [verdict] = h.of_type("voucher_settled")
            assert (verdict["outcome"], verdict["applied"], verdict["discounts"]) == ("unverifiable", False, [])
            assert "ALICE-5OFF-0001" in verdict["message"]
            assert h.loyalty.get_checkout("T1").vouchersPending == []
            done = await h.loyalty.complete("T1", 2000, [], True)
            assert done.state == "completed"
        finally:
            await h.close()

    asyncio.run(go())
