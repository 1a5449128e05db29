"""#21: what the outbox does when a look-up cannot tell (focused tests, in process, for paths the
model check does not reach).

* A reversal whose reversed write cannot be looked up is held, never sent: sent, it would refund a
  deduction the engine may never have taken.
* An unproven filter is tried on a key the engine has only when there is one: a till that never
  delivered anything asks nothing more.
* A write found by look-up is delivered, with the engine's id, and not sent.
"""

import asyncio
from pathlib import Path

from tests.outbox.test_look_up_since import RecordingClient, UnknownClient
from tillplug.outbox import Deliverer, OutboxStore


def test_a_reversal_is_held_while_what_it_reverses_cannot_be_looked_up(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "outbox.sqlite3")
    client = UnknownClient(unproven=False)
    deliverer = Deliverer(store, client, rate=1000, burst=1000)  # type: ignore[arg-type]
    with store.transaction() as tx:
        body = {"type": "POINTS_REFUND", "payload": {"eventKey": "refund-1", "points": 5, "reverses": "target"}}
        store.enqueue(tx, kind="event", stream="s", body=body, event_key="refund-1", requires_key="target")
    [row] = store.rows()
    try:
        assert asyncio.run(deliverer._settled_by_look_up(row)) is True  # nothing to send now
        [held] = store.rows()
        assert held.state == "pending" and held.note is None  # neither sent nor "not needed"
        assert [key for key, _ in client.asked] == ["target"]
    finally:
        store.close()


def test_an_unproven_filter_is_not_tried_when_nothing_was_ever_delivered(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "outbox.sqlite3")
    client = UnknownClient(unproven=True)
    deliverer = Deliverer(store, client, rate=1000, burst=1000)  # type: ignore[arg-type]
    with store.transaction() as tx:
        body = {"type": "TRANSACTION", "payload": {"eventKey": "target"}}
        store.enqueue(tx, kind="event", stream="s", body=body, event_key="target")
    [row] = store.rows()
    try:
        asyncio.run(deliverer._look_up(row, "target"))
        assert [key for key, _ in client.asked] == ["target"]
    finally:
        store.close()


def test_a_write_found_by_look_up_is_delivered_with_the_engines_id(tmp_path: Path) -> None:
    """Found, it is not sent again: delivered, with the engine's id."""
    store = OutboxStore(tmp_path / "outbox.sqlite3")
    client = RecordingClient()  # every look-up finds it
    deliverer = Deliverer(store, client, rate=1000, burst=1000)  # type: ignore[arg-type]
    with store.transaction() as tx:
        body = {"type": "TRANSACTION", "payload": {"eventKey": "sale-1"}}
        store.enqueue(tx, kind="event", stream="s", body=body, event_key="sale-1")
    row = store.claim()  # as the deliverer holds it: sending
    assert row is not None
    try:
        assert asyncio.run(deliverer._landed_or_waits(row)) is True
        [found] = store.rows()
        assert (found.state, found.engine_id, found.note) == ("delivered", "e-1", "found by look-up")
    finally:
        store.close()
