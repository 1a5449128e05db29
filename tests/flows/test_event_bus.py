"""The event bus's listeners (#27): one that follows a few kinds of event is handed only those, so the
customer display's hub and the till-receipt tracker are not woken for every scan and print job, and
what they leave out could not have changed anything they keep."""

import asyncio
import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from tillplug.display.screen import SALE_EVENTS, Screen, ScreenBook
from tillplug.flows.events import EventBus
from tillplug.spool.sales import TRACKED_EVENTS, SaleTracker

KINDS = sorted(SALE_EVENTS | TRACKED_EVENTS | {"scan", "print_job", "device_state", "error", "voucher_settled"})
DATA = st.fixed_dictionaries(
    {},
    optional={
        "transactionId": st.sampled_from(["t1", "t2"]),
        "member": st.sampled_from(["****0001", "****0002"]),
        "pointsBalance": st.integers(0, 10_000),
        "points": st.integers(0, 500),
        "balanceAfter": st.integers(0, 10_000),
        "expectedPoints": st.integers(0, 500),
        "ok": st.booleans(),
        "name": st.text(max_size=10),
    },
)
EVENTS = st.lists(st.tuples(st.sampled_from(KINDS), DATA, st.sampled_from([1, 2, None])), max_size=30)


@given(EVENTS)
def test_a_listener_of_some_kinds_gets_those_in_order_and_the_end(events):
    async def run() -> tuple[list[str], list[str]]:
        bus = EventBus()
        some, every = bus.subscribe(SALE_EVENTS), bus.subscribe()
        for kind, data, lane in events:
            bus.publish(kind, data, lane=lane)
        bus.close()
        got: tuple[list[str], list[str]] = ([], [])
        for queue, into in ((some, got[0]), (every, got[1])):
            while (event := queue.get_nowait()) is not None:
                into.append(event.type)
        return got

    some, every = asyncio.run(run())
    assert every == [kind for kind, _, _ in events]
    assert some == [kind for kind, _, _ in events if kind in SALE_EVENTS]


@given(EVENTS, st.sampled_from(sorted(set(KINDS) - SALE_EVENTS)), DATA, st.sampled_from([1, 2, None]))
def test_an_event_the_hub_is_not_handed_never_moves_a_screen(before, kind, data, lane):
    book = ScreenBook(idle_after=60.0)

    async def run() -> tuple[dict[int, dict[str, object]], object]:
        for k, d, ln in before:
            await book.see(k, d, ln)
        shown = {n: s.view() for n, s in book.screens.items()}
        return shown, await book.see(kind, data, lane)

    shown, told = asyncio.run(run())
    assert told is None
    assert {n: s.view() for n, s in book.screens.items()} == shown


@given(EVENTS, st.sampled_from(sorted(set(KINDS) - TRACKED_EVENTS)), DATA, st.sampled_from([1, 2, None]))
def test_an_event_the_tracker_is_not_handed_never_moves_a_sale(before, kind, data, lane):
    tracker = SaleTracker()
    for k, d, ln in before:
        tracker.see(k, d, ln)
    sales = {n: dataclasses.replace(s) for n, s in tracker.lanes.items()}
    tracker.see(kind, data, lane)
    assert tracker.lanes == sales


@given(
    st.builds(
        Screen,
        lane=st.integers(1, 9),
        state=st.sampled_from(["idle", "member", "sale", "done"]),
        member=st.none() | st.text(max_size=8),
        balance=st.none() | st.integers(),
        spent=st.integers(0, 999),
        earned=st.none() | st.integers(0, 999),
        voucher=st.none() | st.text(max_size=8),
        tx=st.none() | st.text(max_size=8),
    )
)
def test_a_screen_shows_every_field_but_its_sale_and_time(screen):
    expected = dataclasses.asdict(screen)
    del expected["tx"], expected["changed_at"]
    assert screen.view() == expected
