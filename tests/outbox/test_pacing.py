"""Adaptive pacing of the outbox (tillplug/outbox/pacing.py) and the traffic signal it reads
(tillplug/engine/traffic.py): AIMD within bounds, Retry-After honoured, interactive calls first, a
jittered restart after an outage; and the hooks in the engine client and the deliverer."""

import asyncio
import random
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine.test_client import CFG, Engine, ok, secrets
from tillplug import errors as E
from tillplug.config.model import OutboxConfig
from tillplug.daemon.wiring import pacing_policy
from tillplug.engine import EngineClient
from tillplug.engine.models import Event, EventDefinition
from tillplug.engine.traffic import OUTBOX, Traffic, parse_retry_after, use_case
from tillplug.outbox import Deliverer, OutboxStore, Pacer, PacingPolicy


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
        if p.in_outage():  # a down engine is probed, at most every 30 s, never above the ceiling
            assert p.allowed_rate() == 1 / p.probe_interval() <= p.policy.max_rate
            assert p.probe_interval() >= 30
        else:
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
    cut=st.integers(0, 100),
    steps=st.lists(st.floats(0.001, 5), min_size=1, max_size=200),
    figures=st.booleans(),
)
def test_by_default_the_configured_rate_is_a_ceiling_whatever_the_engine_and_the_cashiers_do(
    share, cut, steps, figures
):
    """#27: the paced drain ran at 254/s for a configured 100/s.  Unless the config sets ``above_share``,
    no success, drain plan or quiet cashier takes the outbox above ``rate_per_second``."""
    clock = Clock()
    fleet = {"fleet_interactive_per_second": share / 4, "fleet_writes_per_second": share / 8} if figures else {}
    p = Pacer(pacing_policy(OutboxConfig(rate_per_second=share, **fleet)), clock=clock, traffic=Traffic(clock))
    assert p.policy.ceiling == 1.0
    admitted, start = 0, clock.now
    for i, step in enumerate(steps):
        clock.now += step
        if i == cut:  # an outage and the engine's return: the restart, and the chain's plan with figures set
            p.record(E.EngineUnreachable())
            clock.now += 600
            p.record(E.EngineUnreachable())
            p.record(None)
        assert p.allowed_rate() <= share * (1 + 1e-9)
        if p.delay() == 0:
            p.record(None)
            admitted += 1
    assert admitted <= p.policy.burst + share * (clock.now - start) + 1


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
        assert p.rate == pytest.approx(0.01 * min(1 + p.policy.increase, p.policy.ceiling))  # at most the share
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
        p = pacer(share=0.02, clock=clock, traffic=traffic, fleet_interactive=0.01, headroom=0.9, ceiling=4.0)
        allowed[busyness] = p.allowed_rate()
    assert allowed[1.0] == pytest.approx(0.9 * (0.02 - 0.01), rel=0.1)
    assert allowed[2.0] == pytest.approx(2 * allowed[1.0], rel=0.1)
    assert allowed[0.5] == pytest.approx(0.5 * allowed[1.0], rel=0.1)


# -- the chain's drain plan after an outage -----------------------------------------------------

# A chain that set its dashboard figures and lets tills go above their share ([outbox] above_share = 4).
FLEET = {"fleet_interactive": 0.01, "fleet_writes": 0.004, "headroom": 0.9, "ceiling": 4.0}


def outage(p: Pacer, clock: Clock, *, last_ok: float, first_failure: float, last_failure: float, back: float) -> None:
    """The engine answers at ``last_ok``, fails from ``first_failure`` to ``last_failure``, answers at ``back``."""
    clock.now = last_ok
    p.record(None)
    clock.now = first_failure
    p.record(E.EngineServerError())
    clock.now = last_failure
    p.record(E.EngineServerError())
    clock.now = back
    p.record(None)


def drain(p: Pacer, clock: Clock, old: int, *, inflow: float, limit: float) -> list[tuple[float, bool]]:
    """Send what the outage left as the pacer allows while sales go on queueing rows at ``inflow``/s,
    first in, first out; (when, whether an outage's row) for each row sent."""
    queue, sent, next_sale = [True] * old, [], clock.now + 1 / inflow
    for _ in range(100_000):
        if not queue or clock.now > limit:
            break
        wait = p.delay((len(queue), sum(queue)))
        if wait == 0:
            p.record(None)
            sent.append((clock.now, queue.pop(0)))
        clock.now += wait
        while next_sale <= clock.now:
            queue.append(False)
            next_sale += 1 / inflow
    return sent


def test_an_outage_sets_the_chains_deadline_from_when_the_engine_went_away_and_came_back():
    clock = Clock()
    p = pacer(share=0.02, clock=clock, start_uncertainty=1e9, **FLEET)
    outage(p, clock, last_ok=1000.0, first_failure=1200.0, last_failure=4700.0, back=4900.0)
    assert p.outage_began == pytest.approx(1100.0)  # between the last answer and the first failure
    plan = p.plan
    assert plan is not None and p.plan is not None
    assert plan.back == pytest.approx(4800.0) and plan.answered == 4900.0  # back: between last failure and answer
    outage_s = 4800.0 - 1100.0
    old = outage_s * 0.004 / (0.95 * 0.02 - 0.01)  # the average till's rows over what cashiers leave free
    assert plan.old_until == pytest.approx(4800.0 + old)
    assert plan.catch_up_until == pytest.approx(4800.0 + old + old * 0.004 / (0.95 * 0.02 - 0.01 - 0.004))
    assert p.hold_until <= clock.now and p.tokens == 0.0  # no jitter: the fleet hears of the return spread out


def test_a_quiet_till_that_saw_the_outage_begin_late_takes_it_as_shorter():
    clock = Clock()
    p = pacer(share=0.02, clock=clock, start_uncertainty=120.0, **FLEET)
    outage(p, clock, last_ok=0.0, first_failure=3000.0, last_failure=4700.0, back=4900.0)
    assert p.outage_began == 3000.0 - 120.0  # not the midpoint, 1500: half an hour of doubt


def test_without_the_chains_averages_there_is_no_plan_and_the_restart_is_jittered():
    clock = Clock()
    p = pacer(share=0.02, clock=clock, fleet_interactive=0.01)  # writes unknown
    outage(p, clock, last_ok=1000.0, first_failure=1200.0, last_failure=4700.0, back=4900.0)
    assert not p.plan is not None and p.tokens == 0.0 and p.hold_until >= clock.now


def test_a_busy_and_a_quiet_till_send_the_outages_rows_by_the_same_deadline():
    """Each sends what the outage left over the same time, so a till that queued four times as much
    goes four times as fast; the rows of sales made meanwhile wait behind them, then catch up."""
    finished, rates, last = {}, {}, {}
    for name, old, inflow in (("busy", 60, 0.016), ("quiet", 15, 0.004)):
        clock = Clock()
        p = pacer(share=0.02, clock=clock, **FLEET)
        outage(p, clock, last_ok=0.0, first_failure=10.0, last_failure=3590.0, back=3600.0)
        plan = p.plan
        assert plan is not None
        sent = drain(p, clock, old, inflow=inflow, limit=plan.catch_up_until + 3600)
        old_sent = [t for t, was_old in sent if was_old]
        assert len(old_sent) == old
        finished[name] = (old_sent[-1] - plan.back) / (plan.old_until - plan.back)
        rates[name] = old / (old_sent[-1] - plan.back)
        last[name] = sent[-1][0] - plan.catch_up_until
        assert not p.plan is not None  # caught up: the usual pacing again
    assert 0.9 < finished["quiet"] <= 1.0 and 0.9 < finished["busy"] <= 1.0
    assert rates["busy"] == pytest.approx(4 * rates["quiet"], rel=0.15)
    assert last["busy"] <= 60 and last["quiet"] <= 300  # and the new rows are in by the second deadline


@settings(max_examples=100, deadline=None)
@given(
    share=st.floats(0.005, 10),
    backlog=st.integers(1, 500),
    down=st.floats(60, 8 * 3600),
    cut=st.booleans(),
)
def test_the_planned_rate_stays_within_floor_and_ceiling_and_a_429_slows_it(share, backlog, down, cut):
    clock = Clock()
    p = pacer(share=share, clock=clock, fleet_interactive=share * 0.4, fleet_writes=share * 0.2)
    outage(p, clock, last_ok=0.0, first_failure=1.0, last_failure=down, back=down + 1)
    assert p.plan is not None
    p.delay((backlog, backlog))
    before = p.allowed_rate()
    assert p.policy.min_rate <= before <= p.policy.max_rate
    if cut:
        p.record(E.RateLimited(retry_after=1.0))
        assert p.allowed_rate() <= before
    for _ in range(20):
        p.record(None)  # successes never speed the plan past what the chain can take
    assert p.allowed_rate() <= max(before, p.policy.min_rate) * 1.0001


def test_the_plan_ends_when_the_outages_rows_and_the_catch_up_are_done():
    clock = Clock()
    p = pacer(share=0.02, clock=clock, **FLEET)
    outage(p, clock, last_ok=0.0, first_failure=10.0, last_failure=3590.0, back=3600.0)
    p.delay((5, 5))
    assert p.plan is not None
    p.delay((1, 1))  # the last of the outage's rows keeps to the plan
    assert p.plan is not None and p.view()["drainDeadlineSeconds"] > 0
    p.delay((1, 0))  # one new row, nothing of the outage's left
    assert not p.plan is not None and p.view()["drainDeadlineSeconds"] == 0.0


def test_a_429_after_an_outage_says_the_engine_is_back():
    clock = Clock()
    p = pacer(share=0.02, clock=clock, **FLEET)
    outage(p, clock, last_ok=0.0, first_failure=10.0, last_failure=3590.0, back=3590.0)
    clock.now = 3700.0
    p.record(E.RateLimited(retry_after=2.0))
    assert not p.in_outage() and p.plan is not None and p.hold_until == 3702.0


def test_in_an_outage_rows_are_tried_at_the_probe_rate_and_not_after_a_long_backoff():
    clock = Clock()
    p = pacer(share=0.02, clock=clock)
    p.record(E.EngineServerError())
    clock.now += 60
    p.record(E.EngineServerError())
    assert p.in_outage() and p.probe_interval() == 100.0  # half the share: one try every 100 s
    assert p.allowed_rate() == 0.01
    assert pacer(share=10.0).probe_interval() == 30.0  # a big share still tries at most every 30 s


class DownThenUpEngine:
    def __init__(self) -> None:
        self.up = False
        self.sent: list[str] = []

    async def report_event(self, event):
        if not self.up:
            raise E.EngineServerError()
        self.sent.append(event.event_key)
        return Event(id=f"ev-{event.event_key}", type=event.type, payload=event.payload)


def test_a_cashiers_answer_ends_the_outage_for_the_outbox_and_its_rows_are_due_at_once(tmp_path):
    """Without it a till hears of the engine's return only when a row's backoff (up to 5 min) runs out."""

    async def scenario() -> None:
        store = OutboxStore(tmp_path / "o.sqlite3")  # real time: the pacer's waits are real sleeps
        for k in ("k1", "k2"):
            store.add(event_key=k, kind="event", stream=k, body={"type": "TRANSACTION", "payload": {"eventKey": k}})
        traffic = Traffic(time.time)
        engine = DownThenUpEngine()
        p = Pacer(PacingPolicy(share=10.0, outage_after=0.1, restart_jitter=0.0), clock=time.time, traffic=traffic)
        d = Deliverer(store, engine, pacer=p, clock=time.time)  # type: ignore[arg-type]
        assert await d.step() and await d.step()  # both fail: the engine is down
        await asyncio.sleep(0.2)
        assert not await d.step()  # nothing due: both wait on their backoff (a second at least)
        engine.up = True
        with use_case("lookup"):
            traffic.answered(200, None)  # a cashier's look-up is answered
        assert d._wake.is_set()  # the outbox is woken...
        assert await d.step()  # ...and the rows are due again at once
        due = store.next_due()
        assert engine.sent == ["k1"] and due is not None and due <= time.time()
        store.close()

    asyncio.run(scenario())


def test_a_cancelled_outbox_loop_leaves_no_task_behind(tmp_path):
    async def scenario() -> None:
        store = OutboxStore(tmp_path / "o.sqlite3")
        d = Deliverer(store, DownThenUpEngine(), pacer=pacer(share=10.0))  # type: ignore[arg-type]
        run = asyncio.ensure_future(d.run(asyncio.Event()))
        await asyncio.sleep(0.05)  # asleep, waiting for a row or a wake
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert left == []
        store.close()

    asyncio.run(scenario())


def test_in_an_outage_a_rows_backoff_is_capped_at_the_probe_interval(tmp_path):
    """A row's own backoff grows to five minutes; while the engine is away the pacer spaces the tries
    instead, so the till hears of the return within one probe interval."""

    async def scenario() -> list[float]:
        clock = Clock()
        store = OutboxStore(tmp_path / "o.sqlite3", clock=clock)
        store.add(event_key="k", kind="event", stream="k", body={"type": "TRANSACTION", "payload": {"eventKey": "k"}})
        p = Pacer(PacingPolicy(share=1.0, burst=20, outage_after=10.0), clock=clock)
        d = Deliverer(store, DownThenUpEngine(), pacer=p, clock=clock)  # type: ignore[arg-type]
        waits = []
        for _ in range(12):
            assert await d.step()
            row = store.rows(state="pending")[0]
            waits.append(row.next_attempt - clock.now)
            clock.now = row.next_attempt
        store.close()
        return waits

    waits = asyncio.run(scenario())
    assert max(waits) <= 30.0  # the probe interval at a share of 1/s (its floor: 30 s)
    assert max(waits[:3]) < 10  # the first failures back off as before: no outage yet


def test_a_429_in_the_plan_moves_its_deadline_and_deliveries_bring_it_back_never_past_the_plan():
    """Figures that promise room the limiter does not have must not end in a rush: a 429 halves this
    till's part and moves its deadline to match; deliveries then win the time back slowly."""
    clock = Clock()
    p = pacer(share=0.02, clock=clock, **FLEET)
    outage(p, clock, last_ok=0.0, first_failure=10.0, last_failure=3590.0, back=3600.0)
    plan = p.plan
    assert plan is not None
    planned = plan.old_until
    p.delay((20, 20))
    clock.now += 100
    before = p.allowed_rate()
    p.record(E.RateLimited(retry_after=1.0))
    assert plan.old_until > planned and p.allowed_rate() == pytest.approx(before / 2, rel=0.01)
    behind = plan.old_until
    for _ in range(50):
        p.record(None)
    assert planned <= plan.old_until < behind  # faster again, and never ahead of the chain's plan
    for _ in range(2000):
        p.record(None)
    assert plan.old_until == pytest.approx(planned)


@settings(max_examples=200, deadline=None)
@given(
    old_share=st.floats(0.001, 100),
    new_share=st.floats(0.001, 100),
    cuts=st.integers(0, 6),
    burst=st.integers(1, 400),
)
def test_a_reloaded_policy_keeps_the_rates_ratio_to_the_share_within_the_new_bounds(old_share, new_share, cuts, burst):
    """A reload (SIGHUP) that changes the share: a till that had been cut stays cut in proportion, never
    above the new ceiling or below the new floor, and its bucket never holds more than the new burst."""
    p = pacer(share=old_share, burst=40)
    for _ in range(cuts):
        p.record(E.EngineServerError())
    ratio = p.rate / old_share
    new = PacingPolicy(share=new_share, burst=burst, fleet_interactive=new_share / 3, fleet_writes=new_share / 4)
    p.adopt(new)
    assert p.policy is new
    assert new.min_rate * (1 - 1e-9) <= p.rate <= new.max_rate * (1 + 1e-9)
    assert p.rate == pytest.approx(min(new.max_rate, max(new.min_rate, ratio * new_share)))
    assert p.tokens <= burst
    assert p.view()["fleetInteractivePerSecond"] == new_share / 3


def test_a_till_whose_cashiers_use_its_whole_share_still_delivers_once_its_rate_has_grown():
    """Default pacing once held such a till at the floor for good (a scaled zero is zero): its sales'
    writes queued all day while the tenant had room.  Its deliveries now raise what its outbox may use
    (with ``above_share`` set: by default its share is its ceiling, #27)."""
    clock = Clock()
    traffic = Traffic(clock)
    p = pacer(share=1.0, clock=clock, traffic=traffic, ceiling=4.0)
    for _ in range(270):  # 1.5 requests/s of look-ups and spends for three minutes: more than the share
        clock.now += 2 / 3
        traffic.request("lookup")
    busy = traffic.interactive_rate()
    assert busy > 1.0
    assert p.allowed_rate() == p.policy.min_rate  # at its share: nothing left over the cashiers
    for _ in range(30):
        p.record(None)
    assert p.allowed_rate() == pytest.approx(p.rate - busy)  # what the rate grew by, whole
    assert p.allowed_rate() > 0.5  # more than the writes such a till queues
    p.record(E.RateLimited())  # 429s still cut it: back below the share, the floor again
    p.record(E.RateLimited())
    assert p.rate < 1.0 and p.allowed_rate() == p.policy.min_rate


@settings(max_examples=300, deadline=None)
@given(share=st.floats(0.001, 100), rate_over_share=st.floats(0.125, 4.0), interactive=st.floats(0, 200))
def test_at_or_below_its_share_the_outbox_paces_the_scaled_free_part_and_above_it_never_less(
    share, rate_over_share, interactive
):
    """The default split: a till cut below its share scales what its cashiers leave (as before); a till
    grown above it never gets less than that, nor more than the ceiling."""

    class Busy(Traffic):
        def interactive_rate(self) -> float:
            return interactive

    p = pacer(share=share, traffic=Busy(Clock()))
    p.rate = share * rate_over_share
    scaled = min(p.policy.max_rate, max(p.policy.min_rate, rate_over_share * max(0.0, share - interactive)))
    allowed = p.allowed_rate()
    if rate_over_share <= 1.0:
        assert allowed == pytest.approx(scaled)
    else:
        assert scaled * (1 - 1e-9) <= allowed <= p.policy.max_rate * (1 + 1e-9)
        assert allowed == pytest.approx(min(p.policy.max_rate, max(p.policy.min_rate, p.rate - interactive, scaled)))


def test_config_reaches_the_positional_fields_and_every_other_is_a_module_constant():
    """#23: of the policy's fields, config reaches four; the rest are the module's named constants,
    settable through the policy by tests and the fleet benchmark, and reached by nothing else."""
    import dataclasses

    from tillplug.config.model import OutboxConfig
    from tillplug.daemon.wiring import pacing_policy
    from tillplug.outbox import pacing

    fields = [f for f in dataclasses.fields(PacingPolicy) if f.name != "_"]
    fixed = [f for f in fields if f.kw_only]
    for f in fixed:
        assert hasattr(pacing, f.name.upper()), f"{f.name} has no module constant"
        assert f.default == getattr(pacing, f.name.upper()), f.name
    configured = OutboxConfig(
        rate_per_second=7.0, burst=33, fleet_interactive_per_second=2.0, fleet_writes_per_second=1.0
    )
    policy = pacing_policy(configured)
    reached = {f.name for f in fields if getattr(policy, f.name) != f.default}
    positional = {f.name for f in fields if not f.kw_only}
    assert reached == positional == {"share", "burst", "fleet_interactive", "fleet_writes"}
    assert PacingPolicy(share=1.0, restart_jitter=0.0).restart_jitter == 0.0  # the seam tests set
