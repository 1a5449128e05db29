"""Adaptive pacing of the outbox (tillplug/outbox/pacing.py) and the traffic signal it reads
(tillplug/traffic.py): AIMD within bounds, Retry-After honoured, interactive calls first, a
jittered restart after an outage; and the hooks in the engine client and the deliverer."""

import asyncio
import random

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_engine_client import CFG, Engine, ok, secrets
from tillplug import errors as E
from tillplug.engine import EngineClient
from tillplug.engine.models import EventDefinition
from tillplug.outbox import Deliverer, OutboxStore, Pacer, PacingPolicy
from tillplug.traffic import OUTBOX, Traffic, parse_retry_after, use_case


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pacer(share: float = 2.0, clock: Clock | None = None, traffic: Traffic | None = None, **policy) -> Pacer:
    return Pacer(PacingPolicy(share=share, **policy), clock=clock or Clock(), rng=random.Random(7), traffic=traffic)


OUTCOMES = st.sampled_from(
    [
        None,
        E.RateLimited(),
        E.RateLimited(retry_after=3.0),
        E.EngineServerError(),
        E.EngineUnreachable(),
        E.OutcomeUnknown(),
        E.EngineTimeout(),
        E.EngineRejected(status=400),
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    share=st.floats(0.001, 100),
    outcomes=st.lists(st.tuples(OUTCOMES, st.floats(0, 600)), max_size=60),
)
def test_the_rate_stays_within_its_floor_and_ceiling(share, outcomes):
    clock = Clock()
    p = pacer(share, clock)
    for outcome, elapsed in outcomes:
        clock.now += elapsed
        p.record(outcome)
        assert p.policy.min_rate <= p.rate <= p.policy.max_rate
        assert p.policy.min_rate <= p.allowed_rate() <= p.policy.max_rate


@settings(max_examples=200, deadline=None)
@given(
    share=st.floats(0.001, 100),
    before=st.lists(OUTCOMES, max_size=30),
    retry_after=st.none() | st.floats(0, 10_000),
)
def test_a_429_always_lowers_the_rate_unless_it_is_already_at_the_floor(share, before, retry_after):
    p = pacer(share)
    for outcome in before:
        p.record(outcome)
    rate = p.rate
    p.record(E.RateLimited(retry_after=retry_after))
    assert p.rate < rate or p.rate == rate == p.policy.min_rate


@settings(max_examples=200, deadline=None)
@given(retry_after=st.floats(0.5, 10_000), probes=st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_nothing_is_sent_before_retry_after_has_passed_and_it_is_capped_at_an_hour(retry_after, probes):
    clock = Clock()
    p = pacer(50.0, clock, burst=400)  # plenty of tokens: only the hold can stop a request
    start = clock.now
    p.record(E.RateLimited(retry_after=retry_after))
    hold = min(retry_after, 3600.0)
    for fraction in sorted(probes):
        clock.now = start + fraction * hold * 0.999
        assert p.delay() > 0
    clock.now = start + hold + 1.0 / p.policy.min_rate + 1  # after the hold, a token is earned
    assert p.delay() == 0


@settings(max_examples=100, deadline=None)
@given(
    share=st.floats(0.01, 50),
    burst=st.integers(1, 50),
    window=st.floats(1, 1000),
    steps=st.lists(st.floats(0.001, 5), min_size=1, max_size=200),
)
def test_requests_admitted_never_exceed_the_burst_plus_the_ceiling_rate(share, burst, window, steps):
    clock = Clock()
    p = pacer(share, clock, burst=burst)
    admitted = 0
    for step in steps:  # asking as often as the caller likes never buys more than the rate
        clock.now += step
        if p.delay() == 0:
            p.record(None)
            admitted += 1
    elapsed = clock.now - 1000.0
    assert admitted <= burst + p.policy.max_rate * elapsed + 1


def test_success_raises_the_rate_slowly_up_to_the_ceiling():
    p = pacer(share=1.0, increase=0.05, ceiling=4.0)
    p.record(None)
    assert p.rate == pytest.approx(1.05)
    for _ in range(1000):
        p.record(None)
    assert p.rate == 4.0


def test_503_and_unreachable_cut_the_rate_but_do_not_hold_like_a_429():
    clock = Clock()
    p = pacer(share=1.0, clock=clock)
    p.record(E.EngineServerError())
    assert p.rate == 0.5 and p.hold_until == 0.0
    p.record(E.EngineUnreachable())
    assert p.rate == 0.25 and p.failing_since == clock.now


def test_after_an_outage_the_restart_is_jittered_with_an_empty_bucket_at_the_share():
    starts = []
    for seed in range(40):
        clock = Clock()
        p = Pacer(PacingPolicy(share=0.01, burst=20, restart_jitter=120), clock=clock, rng=random.Random(seed))
        p.record(E.EngineUnreachable())
        clock.now += 600  # ten minutes down
        p.record(E.EngineServerError())
        p.record(None)  # the engine answers again
        assert p.rate == pytest.approx(0.01 * (1 + p.policy.increase))
        assert p.tokens == 0.0
        held = p.hold_until - clock.now
        assert 0 <= held <= 120
        starts.append(held)
    assert max(starts) - min(starts) > 60  # spread out, not one instant for the whole fleet


def test_a_short_blip_is_not_an_outage_and_does_not_hold():
    clock = Clock()
    p = pacer(share=1.0, clock=clock, outage_after=10)
    p.record(E.EngineUnreachable())
    clock.now += 2
    p.record(None)
    assert p.hold_until == 0.0 and p.failing_since is None


def test_the_outbox_yields_while_interactive_calls_are_rate_limited():
    clock = Clock()
    traffic = Traffic(clock)
    p = pacer(share=10.0, clock=clock, traffic=traffic, burst=10)
    assert p.delay() == 0
    traffic.answered(429, 5.0, name="lookup")
    assert p.delay() == pytest.approx(5.0)
    clock.now += 5.01
    assert p.delay() == 0
    traffic.answered(429, 5.0, name=OUTBOX)  # the outbox's own 429s go to the pacer, not here
    assert traffic.interactive_hold() == 0


def test_interactive_requests_are_left_free_out_of_the_share():
    clock = Clock()
    traffic = Traffic(clock)
    p = pacer(share=1.0, clock=clock, traffic=traffic)
    for _ in range(30):  # 0.5 requests/s of look-ups for a minute
        clock.now += 2
        traffic.request("lookup")
    assert 0.25 < traffic.interactive_rate() < 0.6
    assert p.allowed_rate() == pytest.approx(1.0 - traffic.interactive_rate())
    for _ in range(100):
        traffic.request(OUTBOX)  # the outbox's own requests are not interactive
    assert p.allowed_rate() == pytest.approx(1.0 - traffic.interactive_rate())
    assert traffic.requests == {"lookup": 30, OUTBOX: 100}


@given(st.floats(0, 1e7))
def test_retry_after_is_read_in_seconds_and_capped_at_an_hour(seconds):
    assert parse_retry_after(repr(seconds)) == min(seconds, 3600.0)


def test_retry_after_as_an_http_date_and_garbage():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=lambda: 1445412480.0) == 30.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# -- the hooks ---------------------------------------------------------------------


def test_the_engine_client_counts_requests_by_use_case_and_signals_interactive_429s():
    traffic = Traffic()
    engine = Engine(
        {("GET", "/users/1234567"): [httpx.Response(429, headers={"Retry-After": "900"}), ok({"id": "1234567"})]},
    )
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    async def go() -> None:
        async with EngineClient(
            CFG, secrets(), transport=httpx.MockTransport(engine), sleep=sleep, traffic=traffic
        ) as c:
            with use_case("lookup"):
                await c.get_user("1234567")

    asyncio.run(go())
    assert traffic.requests == {"lookup": 3}  # token, the 429, the retry
    assert slept == [4.0]  # the cashier waits at most a few seconds...
    assert 800 < traffic.interactive_hold() <= 900  # ...while the outbox yields for the whole Retry-After


def test_the_outbox_use_case_is_not_retried_inside_the_client_and_keeps_a_long_retry_after():
    engine = Engine({("POST", "/events/"): [httpx.Response(429, headers={"Retry-After": "1200"})]})

    async def go() -> None:
        async with EngineClient(CFG, secrets(), transport=httpx.MockTransport(engine), traffic=Traffic()) as c:
            with use_case(OUTBOX):
                await c.report_event(EventDefinition(type="TRANSACTION"))

    with pytest.raises(E.RateLimited) as info:
        asyncio.run(go())
    assert info.value.retry_after == 1200.0
    assert len([r for r in engine.requests if r.url.path != "/oauth/token"]) == 1


class RateLimitedEngine:
    def __init__(self) -> None:
        self.calls = 0

    async def report_event(self, event):
        self.calls += 1
        raise E.RateLimited(retry_after=1800.0)


def test_the_deliverer_feeds_a_429_to_its_pacer_and_holds_the_row(tmp_path):
    store = OutboxStore(tmp_path / "o.sqlite3")
    store.add(event_key="k1", kind="event", stream="s", body={"type": "TRANSACTION", "payload": {"eventKey": "k1"}})
    clock = Clock()
    d = Deliverer(store, RateLimitedEngine(), pacer=pacer(share=5.0, clock=clock, burst=5))
    assert asyncio.run(d.step())
    assert d.pacer.rate == 2.5 and d.pacer.hold_until == clock.now + 1800.0
    row = store.rows(state="pending")[0]
    assert row.last_error == "engine_busy" and row.next_attempt >= row.updated + 1799
    store.close()


def test_with_doubling_the_rate_climbs_only_while_rows_wait_on_it():
    clock = Clock()
    p = pacer(share=1.0, clock=clock, burst=1, doubling=100.0, ceiling=4.0)
    assert p.delay() == 0
    clock.now += 1000  # idle: nothing waited on the rate, so nothing to grow for
    assert p.delay() == 0 and p.rate == 1.0
    waited = 0.0
    for _ in range(1000):  # a backlog: every request waits for its token
        if waited >= 100:
            break
        wait = p.delay()
        clock.now += wait
        waited += wait
    assert 1.8 < p.rate < 2.3  # about doubled in 100 s of waiting
    for _ in range(1000):
        clock.now += p.delay()
    assert p.rate == 4.0  # never past the ceiling
    p.record(E.RateLimited())
    assert p.rate == 2.0


def test_with_the_fleet_average_known_the_free_share_is_split_by_how_busy_each_till_is():
    """A till twice as busy queued twice the backlog during an outage: it gets twice the rate."""
    allowed = {}
    for busyness in (0.5, 1.0, 2.0):
        clock = Clock()
        traffic = Traffic(clock)
        for _ in range(int(1800 * 0.01 * busyness)):  # half an hour of cashiers' calls
            clock.now += 1 / (0.01 * busyness)
            traffic.request("lookup")
        assert traffic.busy_rate() == pytest.approx(0.01 * busyness, rel=0.1)  # short history corrected
        p = pacer(share=0.02, clock=clock, traffic=traffic, fleet_interactive=0.01, headroom=0.9)
        allowed[busyness] = p.allowed_rate()
    assert allowed[1.0] == pytest.approx(0.9 * (0.02 - 0.01), rel=0.1)
    assert allowed[2.0] == pytest.approx(2 * allowed[1.0], rel=0.1)
    assert allowed[0.5] == pytest.approx(0.5 * allowed[1.0], rel=0.1)
