"""#21: a write that may still be in flight is never believed missing (observations 1 and 2).

The engine here takes writes late (the simulator's ``late_write_seconds``: after the client's
read timeout, as a loaded engine does); the in-flight rule's clock is a fake one the test moves,
so nothing here depends on how fast the machine is.
"""

import asyncio
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine_helpers import calibrated_client
from tillplug.engine.clock import InFlight, in_flight_window
from tillplug.engine.lookup import Lookup
from tillplug.engine.models import new_event_key
from tillplug.engine.outcome import Outcome
from tillplug.outbox import Deliverer, OutboxStore
from tillplug.outbox.deliver import REVERSAL_WINDOW
from tillplug.sim import SimServer

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"
LATE = 1.0  # seconds the engine takes a write after it arrived: past the client's read timeout below


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def event(key: str, kind: str, points: int = 100, **extra) -> dict:
    return {"type": kind, "subject": ALICE, "payload": {"eventKey": key, "points": points, **extra}}


def landed(sim: SimServer, key: str) -> int:
    return sum(e["payload"].get("eventKey") == key for e in sim.state.ledger.events)


def wait_until_engine_idle(sim: SimServer, *, reactions: bool = True) -> None:
    """Every write that reached the simulator has been taken and its reaction applied (bounded: held
    writes land within LATE)."""
    deadline = time.monotonic() + 10 * LATE + 5
    while time.monotonic() < deadline:
        arrived = sim.sim.requests_for("POST /v1/events")
        if len(sim.state.ledger.events) >= arrived and (sim.state.reactions_due == 0 or not reactions):
            return
        time.sleep(0.05)
    raise AssertionError("the simulator did not take the writes it received")


def queue_refund_if_landed(store: OutboxStore, refund: str, deduction: str, points: int = 500) -> None:
    """What Points.recover queues after a crash mid-spend: a refund sent only if the deduction landed."""
    body = event(refund, "POINTS_REFUND", points, reverses=deduction)
    store.add(kind="event", stream="tx-1", event_key=refund, body=body, requires_key=deduction)


def make_due(store: OutboxStore) -> None:
    with store.transaction() as tx:
        tx.execute("UPDATE outbox SET next_attempt=0 WHERE state='pending'")


async def step_with(sim: SimServer, store: OutboxStore, clock: FakeMonotonic, *, late: bool) -> None:
    """One delivery step by a deliverer whose client's read timeout is shorter than the engine's delay."""
    sim.sim.faults.update({"late_write_seconds": LATE if late else 0.0})
    async with calibrated_client(sim, read_timeout=0.3, connect_timeout=0.3) as client:
        client.in_flight = InFlight(client.in_flight.window, monotonic=clock)
        deliverer = Deliverer(store, client, rate=1e6, burst=10**6)
        await deliverer.step()


@pytest.fixture
def sim():
    with SimServer() as server:
        yield server


def test_an_earn_the_engine_takes_after_the_read_timeout_is_not_resent_while_it_may_be_in_flight(tmp_path, sim):
    """Observation 1: looked up 1-2 s after the timeout, not found, resent: {eventKey: 2}."""
    store = OutboxStore(tmp_path / "o.db")
    key = new_event_key()
    store.add(kind="event", stream="tx-1", event_key=key, body=event(key, "TRANSACTION"))
    clock = FakeMonotonic()

    async def day() -> None:
        await step_with(sim, store, clock, late=True)  # times out; the engine has not taken it yet
        assert store.by_key(key).needs_lookup
        clock.now += 1.5  # looked up soon after: the engine is still holding the write
        make_due(store)
        await step_with(sim, store, clock, late=True)
        assert store.by_key(key).state == "pending", "not resent while it may be in flight"
        wait_until_engine_idle(sim)  # the engine takes the first send, late
        clock.now += 3600
        make_due(store)
        await step_with(sim, store, clock, late=False)

    asyncio.run(day())
    wait_until_engine_idle(sim)
    assert sim.state.ledger.duplicates() == {}
    assert landed(sim, key) == 1
    row = store.by_key(key)
    assert row.state == "delivered" and "found by look-up" in (row.note or "")


def test_a_refund_if_landed_waits_for_its_deduction_still_in_flight_after_a_restart(tmp_path, sim):
    """Observation 2: killed mid-spend while the deduction was held at the engine; after the restart
    the refund-if-landed row was looked up at once, marked "not needed", then the deduction landed."""
    store = OutboxStore(tmp_path / "o.db")
    deduction, refund = new_event_key(), new_event_key()

    async def crash_mid_spend() -> None:
        sim.sim.faults.update({"late_write_seconds": LATE})
        async with calibrated_client(sim, read_timeout=0.3, connect_timeout=0.3) as client:
            with pytest.raises(Exception):  # noqa: B017 -- the till never heard back
                await client.report_event(_definition(deduction, "REDEEMED_POINTS", 500))

    asyncio.run(crash_mid_spend())
    # The restart: Points.recover queues a refund sent only if the deduction landed.
    queue_refund_if_landed(store, refund, deduction)
    clock = FakeMonotonic()

    async def after_restart() -> None:
        await step_with(sim, store, clock, late=False)  # at once: the deduction is still held
        assert store.by_key(refund).state == "pending", "not dropped while the deduction may be in flight"
        wait_until_engine_idle(sim)  # the deduction lands and, within the hour that passes, is applied
        clock.now += 3600
        make_due(store)
        await step_with(sim, store, clock, late=False)

    asyncio.run(after_restart())
    assert landed(sim, deduction) == 1
    assert landed(sim, refund) == 1, "the member got the points back"
    assert "not needed" not in (store.by_key(refund).note or "")


def test_a_refund_waits_for_a_deduction_taken_late_and_applied_within_its_window(tmp_path, sim):
    """The engine may take a write as late as the in-flight window after the send, and apply its
    reaction up to ``REVERSAL_WINDOW`` after taking it.  The refund-if-applied used to count that
    window from the send alone: looked up just past it, the deduction shown taken but not yet
    applied was called "moved no points", the refund dropped, and 500 points lost when it applied."""
    store = OutboxStore(tmp_path / "o.db")
    deduction, refund = new_event_key(), new_event_key()
    sim.state.reactors["delay_seconds"] = 30.0  # real seconds: not applied while the test looks
    clock = FakeMonotonic()

    async def day() -> None:
        sim.sim.faults.update({"late_write_seconds": LATE})
        async with calibrated_client(sim, read_timeout=0.3, connect_timeout=0.3) as client:
            client.in_flight = InFlight(30.0, monotonic=clock)  # a configured window of 30 s
            with pytest.raises(Exception):  # noqa: B017 -- answered after the read timeout
                await client.report_event(_definition(deduction, "REDEEMED_POINTS", 500))
            wait_until_engine_idle(sim, reactions=False)  # taken (late), its reaction still to come
            sim.sim.faults.update({"late_write_seconds": 0.0})
            queue_refund_if_landed(store, refund, deduction)
            clock.now += REVERSAL_WINDOW + 1  # past the reaction's window from the send, not from the take
            await Deliverer(store, client, rate=1e6, burst=10**6).step()
            row = store.by_key(refund)
            assert row.state == "pending" and "not needed" not in (row.note or ""), "waits for the reaction"
            # Never sent: asking the engine about the refund itself on its next turn would be a wasted read.
            assert not row.needs_lookup

    asyncio.run(day())
    assert landed(sim, refund) == 0


def _definition(key: str, kind: str, points: int):
    from tillplug.engine.models import EventDefinition

    return EventDefinition.model_validate(event(key, kind, points))


def test_the_window_is_counted_from_the_restart_for_a_write_sent_before_it():
    clock = FakeMonotonic()
    rule = InFlight(10.0, monotonic=clock)
    clock.now += 4
    assert rule.remaining("sent-before-the-crash") == pytest.approx(6.0)
    rule.sent("sent-now")
    clock.now += 9
    assert not rule.may_land("sent-before-the-crash")
    assert rule.may_land("sent-now") and rule.remaining("sent-now") == pytest.approx(1.0)


def test_a_send_is_remembered_as_long_as_a_reversal_asks_about_it():
    """Found by the model check: a deduction applied late (within ``REVERSAL_WINDOW``) had its refund
    dropped as "moved no points" whenever the outbox sent anything else meanwhile.  Each send forgot
    the writes past the in-flight window, and the refund's wait (the window plus ``REVERSAL_WINDOW``)
    was then counted from the process's start: over before the engine applied the deduction."""
    clock = FakeMonotonic()
    flight = InFlight(6.0, clock)
    clock.now += 30  # the till has run a while
    flight.sent("deduction")
    clock.now += 7  # past its in-flight window, well within its reaction's
    flight.sent("an earning")
    assert flight.remaining("deduction") == 0
    assert flight.remaining("deduction", 6.0 + REVERSAL_WINDOW) == pytest.approx(59.0)


def test_the_default_window_is_twice_connect_plus_read_and_the_key_overrides_it():
    assert in_flight_window(3.0, 5.0) == 16.0
    assert in_flight_window(3.0, 5.0, 40.0) == 40.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.floats(0, 40)), min_size=1, max_size=400))
def test_forgetting_writes_past_their_window_changes_no_answer_and_keeps_the_map_small(sends):
    """#27: every send once rebuilt the whole map past 256 keys, so a 10,000-row drain was quadratic.
    What is forgotten now, a few at a time from the oldest, never changes what ``remaining`` says,
    for the in-flight window or a reversal's longer wait."""
    clock = FakeMonotonic()
    flight = InFlight(10.0, clock)
    longest = 10.0 + REVERSAL_WINDOW
    remembered: dict[str, float] = {}
    for key, gap in sends:
        clock.now += gap * 3
        flight.sent(f"k{key}")
        remembered[f"k{key}"] = clock.now
        for k, at in remembered.items():
            assert flight.remaining(k) == pytest.approx(max(0.0, at + 10.0 - clock.now))
            assert flight.remaining(k, longest) == pytest.approx(max(0.0, at + longest - clock.now))
        # Nothing older than that stays long: at most a few past it, whatever was sent before.
        assert sum(1 for t in flight._sent.values() if clock.now - t >= longest) <= 8 * len(sends)
    asked_about = sum(1 for at in remembered.values() if clock.now - at < longest)
    assert len(flight._sent) <= asked_about + 8 * (len(flight._sent) > asked_about)


def test_a_send_drops_what_is_past_its_window_from_the_front():
    clock = FakeMonotonic()
    flight = InFlight(5.0, clock)
    for i in range(1000):
        clock.now += 1.0
        flight.sent(f"k{i}")
    assert len(flight._sent) <= 5 + REVERSAL_WINDOW + 8  # not every key: about a window and a reaction's worth
    flight.sent("k999")  # sent again: it moves to the end, and stays
    assert flight.remaining("k999") == 5.0


@pytest.mark.parametrize("engine_id", [None, "found"])
def test_a_reversal_is_sent_when_the_engine_names_no_id_for_what_it_reverses(tmp_path, engine_id):
    """The void's rule for what the engine cannot show: with no id for the reversed write (an engine
    whose look-ups name none, or an order found without one), its reactions cannot be read, so the
    reversal goes out; held instead, the member's points would never come back."""
    store = OutboxStore(tmp_path / "o.db")
    client = SimpleNamespace(dialect=SimpleNamespace(reactions="flat"))  # reactions listed: it would ask
    deliverer = Deliverer(store, client, rate=1e6, burst=10**6)
    queue_refund_if_landed(store, "refund-1", "deduction-1")
    row = store.by_key("refund-1")
    reversed_write = Lookup(Outcome.LANDED, engine_id=engine_id)
    assert asyncio.run(deliverer._waits_for_applied(row, "deduction-1", reversed_write)) is False
    assert store.by_key("refund-1").state == "pending" and not store.by_key("refund-1").last_error
