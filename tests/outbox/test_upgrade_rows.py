"""#21: rows an older tillplug left in state_dir settle under the new rules.

The outbox gained ``requires_since`` (how far back a look-up that reads the engine's list must
reach for a reversal); a database from before it is opened, upgraded in place, and its rows —
one held as unverifiable, one left in 'sending' by a crash, one refund-if-landed — settle in a
dialect whose filter is ignored, with nothing sent twice.
"""

import asyncio
import json
import sqlite3
import time

from tests.engine_helpers import sim_client
from tillplug.engine.models import new_event_key
from tillplug.outbox import Deliverer, OutboxStore
from tillplug.outbox.store import SCHEMA
from tillplug.sim import SimServer

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"


def old_database(path, rows):
    """An outbox as the previous release wrote it: its schema, its columns, no requires_since."""
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.execute("ALTER TABLE outbox ADD COLUMN unverifiable INTEGER NOT NULL DEFAULT 0")
    now = time.time() - 600
    for key, state, needs_lookup, unverifiable, requires_key, body in rows:
        db.execute(
            "INSERT INTO outbox (event_key, kind, stream, body, requires_key, state, needs_lookup, attempts,"
            " next_attempt, last_error, created, updated, unverifiable) VALUES (?, 'event', ?, ?, ?, ?, ?, 1, ?, ?,"
            " ?, ?, ?)",
            (key, key, json.dumps(body), requires_key, state, needs_lookup, now + 300, None, now, now, unverifiable),
        )
    db.commit()
    db.close()


def body(key, kind="TRANSACTION", **payload):
    return {"type": kind, "subject": ALICE, "payload": {"eventKey": key, **payload}}


def test_rows_from_an_older_outbox_settle_in_a_dialect_that_ignores_the_filter(tmp_path):
    held, interrupted, refund, deduction = (new_event_key() for _ in range(4))
    path = tmp_path / "outbox.sqlite3"
    old_database(
        path,
        [
            (held, "pending", 1, 1, None, body(held)),  # held for a technician by the old rules
            (interrupted, "sending", 0, 0, None, body(interrupted)),  # a crash mid-send
            (refund, "pending", 0, 0, deduction, body(refund, "POINTS_REFUND", points=50, reverses=deduction)),
        ],
    )
    with SimServer(dialect="strict") as sim:
        sim.state.record_event(body(held))  # its answer was lost, but it landed
        sim.state.record_event(body(deduction, "REDEEMED_POINTS", points=50))
        store = OutboxStore(path)
        with store.transaction() as tx:  # the old due times are hours away on this clock; not the point here
            tx.execute("UPDATE outbox SET next_attempt=0")

        async def go():
            async with sim_client(sim.url, in_flight_window=1) as c:
                return await Deliverer(store, c, rate=1000, burst=1000).drain(20)

        assert asyncio.run(go())
        got = [e["payload"]["eventKey"] for e in sim.state.ledger.events]
    assert sorted(got) == sorted([held, deduction, interrupted, refund])  # each once
    assert store.stats().unverifiable == 0 and store.stats().depth == 0
    assert store.by_key(held).note == "found by look-up"
    assert store.by_key(refund).requires_since is None  # an old row: its look-up reads to the list's end
    assert store.by_key(refund).requires_applied is False  # an old row: a failed read of its reactions sends it
