"""#21: rows settle in every dialect (observations 3 and 4).

Where the eventKey filter is ignored, rejected, or answered with an empty list whatever the key
(``blank``: a filter the engine does not support), "not found" from the filter proves nothing;
the engine's own list, read newest first, settles the row: found, or proven absent by the
engine's timestamps or by the list's end.  Nothing is left for a technician.
"""

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine_helpers import sim_client
from tillplug.engine.dialect import read_dialect_file
from tillplug.engine.lookup import SCAN_SKEW, scan_recent
from tillplug.engine.models import new_event_key
from tillplug.outbox import Deliverer, OutboxStore
from tillplug.sim import SimServer

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"
BOB = "5a1b2c3d-0000-4000-8000-000000000002"
FILTERS_THAT_CANNOT_TELL = ("strict", "hostile", "blank")  # ignored, rejected, empty whatever the key


def drain(sim, store, timeout, **client_kw):
    async def go():
        async with sim_client(sim.url, **client_kw) as c:
            return await Deliverer(store, c, rate=10_000, burst=10_000).drain(timeout)

    return asyncio.run(go())


def keys_in(sim):
    return [e["payload"].get("eventKey") for e in sim.state.ledger.events]


def sale_row(store, i):
    key = new_event_key()
    body = {"type": "TRANSACTION", "subject": ALICE, "payload": {"eventKey": key, "transactionId": f"tx-{i}"}}
    store.add(kind="event", stream=f"tx-{i}", event_key=key, body=body)
    return key


def refund_row(store, i, reverses):
    key = new_event_key()
    body = {"type": "POINTS_REFUND", "subject": ALICE, "payload": {"eventKey": key, "points": 50, "reverses": reverses}}
    store.add(kind="event", stream=f"void-{i}", event_key=key, body=body, requires_key=reverses)
    return key


@pytest.mark.parametrize("name", FILTERS_THAT_CANNOT_TELL)
def test_a_faulted_day_leaves_no_row_for_a_technician(tmp_path, name, monkeypatch):
    """Observation 3: filters ignored, 25 rows held; rejected, 44 rows held; each for a technician."""
    import tillplug.outbox.deliver as d

    monkeypatch.setattr(d, "retry_delay", lambda attempts: 0.01 * min(attempts, 5))
    store = OutboxStore(tmp_path / "o.db")
    with SimServer(dialect=name, rate=100_000, burst=100_000) as sim:
        landed, lost = [], []
        for i in range(6):  # deductions of voided sales: half reached the engine, half never did
            key = new_event_key()
            if i % 2 == 0:
                sim.state.record_event(
                    {"type": "REDEEMED_POINTS", "subject": ALICE, "payload": {"eventKey": key, "points": 50}}
                )
                landed.append(refund_row(store, i, key))
            else:
                lost.append(refund_row(store, i, key))
        sales = [sale_row(store, i) for i in range(40)]
        sim.sim.faults.update({"reset_rate": 0.3, "seed": 11})  # answers lost after the engine took the write
        emptied = drain(sim, store, 30, in_flight_window=1)
        got = keys_in(sim)
    stats = store.stats()
    assert emptied and stats.unverifiable == 0 and stats.dead == 0, stats
    assert len(got) == len(set(got)), "a write was sent twice"
    assert sorted(k for k in got if k in sales) == sorted(sales)  # every sale earned once
    assert sorted(k for k in got if k in landed) == sorted(landed)  # every landed deduction refunded
    assert not set(got) & set(lost)
    assert all("not needed" in (store.by_key(k).note or "") for k in lost)


def test_a_fresh_till_settles_its_first_interrupted_row_without_waiting_minutes(tmp_path):
    """Observation 3: with no delivered row to prove the filter with, the first interrupted row was held 300 s."""
    store = OutboxStore(tmp_path / "o.db")
    with SimServer(dialect="default") as sim:
        key = sale_row(store, 1)
        store.claim()  # then killed mid-send: left in 'sending', the write never reached the engine
        assert drain(sim, store, 10, in_flight_window=1)  # no dialect file: the filter is unproven
        assert keys_in(sim) == [key]
        assert store.by_key(key).unverifiable is False


def test_a_blank_filter_is_never_trusted_by_engine_check_nor_the_daemon(tmp_path):
    """Observation 4: an engine answering [] to a filter it does not support proves nothing."""
    answers = tmp_path / "dialect.json"
    with SimServer(dialect="blank") as sim:
        sim.state.submit_order(
            {
                "orderId": "o-1",
                "totalSpend": 100,
                "submitter": {"authIdentifier": "auth-bob"},
                "metadata": {"eventKey": "k"},
            }
        )
        cfg = tmp_path / "tillplug.toml"
        cfg.write_text(
            f'till_id = "t"\nbranch_id = "b"\nstate_dir = "{tmp_path / "state"}"\n'
            f'[engine]\npreset = "simulator"\nbase_url = "{sim.url}/v1"\ndialect_file = "{answers}"\n'
        )
        r = subprocess.run(
            [sys.executable, "-m", "tillplug", "engine-check", "--config", str(cfg), "--card", "1000001", "--yes"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        dialect = read_dialect_file(answers)
        assert dialect.event_key_filter == "unknown" and dialect.order_key_filter == "unknown"
        assert not dialect.filter_works("event") and not dialect.filter_works("order")

        async def daemon():
            async with sim_client(sim.url, dialect=dialect) as c:
                sim.state.record_event({"type": "TRANSACTION", "subject": BOB, "payload": {"eventKey": "landed"}})
                assert (await c.look_up_event("landed")).outcome == "landed"  # the list shows it
                assert not c.filter_evidence.works("event")
                return await c.look_up_event("never-sent")

        # Not found only because the whole (short) list was read, never from the filter's [].
        assert asyncio.run(daemon()).outcome == "not_landed"
        assert sim.sim.requests_for("GET /v1/events/?limit=1000") >= 1


def test_where_the_filter_works_a_look_up_never_reads_the_engines_whole_list():
    """An honoured filter answers a look-up alone: a page of only the key's items (or none) is no sign
    of an ignored filter.  Taken for one, every look-up would page the tenant's whole list (the
    request the decision on #21 counts), and a busy tenant's list would leave rows unverifiable."""
    from tests.engine_helpers import calibrated_client

    with SimServer() as sim:
        sim.state.record_event({"type": "TRANSACTION", "subject": BOB, "payload": {"eventKey": "landed"}})
        sim.state.record_event({"type": "TRANSACTION", "subject": BOB, "payload": {"eventKey": "another"}})

        async def till():
            async with calibrated_client(sim) as c:
                found = await c.look_up_event("landed")
                absent = await c.look_up_event("never-sent")
                return found.outcome, absent.outcome, c.filter_evidence.works("event")

        assert asyncio.run(till()) == ("landed", "not_landed", True)
        assert sim.sim.requests_for("order=DESC") == sim.sim.requests_for("filter%5Bpayload.eventKey%5D") == 2


def test_a_filter_is_seen_ignored_even_on_a_page_that_holds_the_key():
    """A till with no engine-check yet learns the filter from its look-ups.  Against an engine that
    ignores it, a page listing the key among others must show it ignored, not working: taken for
    working, a later look-up of a write older than one page (``PAGE`` newer events) was "not landed"
    from the filter's first page, and the outbox would send that write again."""
    from tillplug.engine.client import PAGE

    with SimServer(dialect="strict") as sim:
        sim.state.record_event({"type": "TRANSACTION", "subject": BOB, "payload": {"eventKey": "ours"}})
        for n in range(PAGE):
            sim.state.record_event({"type": "TRANSACTION", "subject": BOB, "payload": {"eventKey": f"later-{n}"}})

        async def till():
            async with sim_client(sim.url) as c:  # no dialect file: nothing known of the filter
                newest = await c.look_up_event(f"later-{PAGE - 1}")
                learnt = c.filter_evidence.works("event")
                return newest.outcome, learnt, (await c.look_up_event("ours")).outcome

        assert asyncio.run(till()) == ("landed", False, "landed")


# -- reading the list: the engine's own timestamps prove absence, nothing else --------------------


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def pages_of(items, calls):
    async def page(skip, limit):
        calls.append(skip)
        return items[skip : skip + limit]

    return page


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.floats(0, 30), min_size=0, max_size=40),
    where=st.integers(0, 40),
    since_back=st.floats(0, 600),
    limit=st.integers(1, 7),
    pages=st.integers(1, 4),
)
def test_a_write_stored_after_its_send_is_never_reported_missing(gaps, where, since_back, limit, pages):
    """Whatever the list's length, paging and timestamps: a write the engine stored at or after its
    send time (less the skew) is found or unverifiable, never "not found"."""
    now = 2_000_000_000.0
    times, t = [], now
    for gap in gaps:
        times.append(t)
        t -= gap
    items = [{"id": str(i), "payload": {"eventKey": f"other-{i}"}, "createdAt": stamp(x)} for i, x in enumerate(times)]
    since = now - since_back
    at = min(where, len(items))
    ours_time = times[at - 1] if at else now
    if ours_time >= since - SCAN_SKEW:
        items.insert(at, {"id": "ours", "payload": {"eventKey": "ours"}, "createdAt": stamp(ours_time)})
        verdict = asyncio.run(scan_recent(pages_of(items, []), "ours", since, max_pages=pages, limit=limit)).outcome
        assert verdict in ("landed", "unknown")
        if at < pages * limit:  # within the pages read: nothing before it can stop the reading
            assert verdict == "landed"


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 30), limit=st.integers(1, 7))
def test_absence_is_proven_by_the_lists_end_or_a_stamp_before_the_send(n, limit):
    now = 2_000_000_000.0
    items = [{"id": str(i), "payload": {"eventKey": f"k{i}"}, "createdAt": stamp(now - 60 * i)} for i in range(n)]
    whole = asyncio.run(scan_recent(pages_of(items, []), "absent", None, max_pages=100, limit=limit))
    assert whole.outcome == "not_landed"  # the whole list was read
    calls: list[int] = []
    by_time = asyncio.run(scan_recent(pages_of(items, calls), "absent", now, max_pages=100, limit=limit))
    assert by_time.outcome == "not_landed"
    assert len(calls) <= (3 * 60 + SCAN_SKEW) // 60 // limit + 2  # stopped once past the send less the skew


def test_a_write_stamped_at_the_skews_edge_is_read_past_an_equal_stamp_on_the_page_before():
    """The edge the model cannot reach: the engine stamps in whole seconds, and items stamped alike
    come in any order.  A page ending on a stamp exactly at the send less the skew proves nothing yet:
    the write, stored at that very second, may be next.  Only a stamp *before* it proves absence."""
    edge = 2_000_000_000.0
    since = edge + SCAN_SKEW  # the write was sent at ``since``: stored at ``edge`` at the earliest
    items = [
        {"id": "1", "payload": {"eventKey": "other-1"}, "createdAt": stamp(edge + 10)},
        {"id": "2", "payload": {"eventKey": "other-2"}, "createdAt": stamp(edge)},  # ends page 1
        {"id": "ours", "payload": {"eventKey": "ours"}, "createdAt": stamp(edge)},  # first on page 2
        {"id": "3", "payload": {"eventKey": "other-3"}, "createdAt": stamp(edge - 1)},
    ]
    calls: list[int] = []
    found = asyncio.run(scan_recent(pages_of(items, calls), "ours", since, max_pages=3, limit=2))
    assert found.outcome == "landed" and found.engine_id == "ours"
    absent = asyncio.run(scan_recent(pages_of(items, calls), "never-sent", since, max_pages=3, limit=2))
    assert absent.outcome == "not_landed"  # page 2 ends on a stamp before the edge: proven


def test_a_list_not_newest_first_or_without_stamps_proves_absence_only_by_its_end():
    now = 2_000_000_000.0
    shuffled = [{"payload": {"eventKey": f"k{i}"}, "createdAt": stamp(now - 1000 + (i % 2) * 2000)} for i in range(10)]
    unstamped = [{"payload": {"eventKey": f"k{i}"}} for i in range(10)]
    for items in (shuffled, unstamped):
        verdict = asyncio.run(scan_recent(pages_of(items, []), "absent", now, max_pages=2, limit=3)).outcome
        assert verdict == "unknown"


def test_a_refused_list_proves_nothing():
    from tillplug.errors import EngineRejected

    async def refused(skip, limit):
        raise EngineRejected(status=400, engine_message="filter required")

    assert asyncio.run(scan_recent(refused, "k", None)).outcome == "unknown"


def test_the_answers_of_engine_check_against_blank_are_what_the_simulator_says():
    from tillplug.sim.dialects import dialect

    answers = dialect("blank").answers()
    assert json.loads(json.dumps(answers.to_dict()))["event_key_filter"] == "unknown"
