"""#21: how the outbox looks a write up before deciding (focused tests, in process, for what the
mutation report found only the model's luck or no test at all would catch).

* A look-up reads the engine's list back only as far as the write it looks for can be: a row's own
  write was not sent before the row was queued; what a reversal reverses was sent before the
  reversal was queued (``requires_since``).  Swapping the two read a reversal's list back only to
  the refund's queueing: a deduction older than that (a void long after the spend, on a busy
  tenant) was "not found" and its refund dropped.
* Only a filter never seen to work is tried on a key the engine has; one seen ignored is not.
* "Not found" proves nothing until the last moment of the in-flight window.
"""

import asyncio
from pathlib import Path

from tillplug.engine.clock import InFlight
from tillplug.engine.dialect import EngineDialect
from tillplug.engine.lookup import Lookup
from tillplug.engine.outcome import Outcome
from tillplug.outbox import Deliverer, OutboxStore


class RecordingClient:
    """Answers every look-up "landed" and records the ``since`` it was asked with."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, float | None]] = []
        self.dialect = EngineDialect()
        self.in_flight = InFlight(6.0)

    async def look_up_event(self, key: str, since: float | None = None) -> Lookup:
        self.asked.append((key, since))
        return Lookup(Outcome.LANDED, engine_id="e-1")


def test_a_look_up_reads_back_to_the_write_it_looks_for(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "outbox.sqlite3")
    client = RecordingClient()
    deliverer = Deliverer(store, client, rate=1000, burst=1000)  # type: ignore[arg-type]
    spent_at = store.clock() - 3600  # the deduction's intent, an hour before the void
    with store.transaction() as tx:
        body = {"type": "POINTS_REFUND", "payload": {"eventKey": "refund-1", "points": 5, "reverses": "spend-1"}}
        store.enqueue(
            tx,
            kind="event",
            stream="s",
            body=body,
            event_key="refund-1",
            requires_key="spend-1",
            requires_since=spent_at,
        )
    [row] = store.rows()
    try:
        asyncio.run(deliverer._look_up(row, "spend-1"))
        asyncio.run(deliverer._look_up(row, "refund-1"))
        assert client.asked == [("spend-1", spent_at), ("refund-1", row.created)]
    finally:
        store.close()


class UnknownClient(RecordingClient):
    """Answers "cannot tell" for ``target``: ``unproven`` (the filter never seen to work) or not (seen
    ignored); "landed" for any other key."""

    def __init__(self, unproven: bool) -> None:
        super().__init__()
        self.unproven = unproven

    async def look_up_event(self, key: str, since: float | None = None) -> Lookup:
        self.asked.append((key, since))
        if key == "target":
            return Lookup(Outcome.UNKNOWN, reason="cannot tell", unproven=self.unproven)
        return Lookup(Outcome.LANDED, engine_id="e-1")


def test_only_an_unproven_filter_is_tried_on_a_key_the_engine_has(tmp_path: Path) -> None:
    """A filter merely never seen to work is tried once on a key the engine surely has (a delivered
    row's); one seen ignored or rejected is not: that look-up could not change the answer, and each
    costs a request of the tenant's budget."""
    for unproven, keys in ((True, ["target", "known", "target"]), (False, ["target"])):
        store = OutboxStore(tmp_path / f"outbox-{unproven}.sqlite3")
        client = UnknownClient(unproven)
        deliverer = Deliverer(store, client, rate=1000, burst=1000)  # type: ignore[arg-type]
        with store.transaction() as tx:
            for key in ("known", "target"):
                body = {"type": "TRANSACTION", "payload": {"eventKey": key}}
                store.enqueue(tx, kind="event", stream=key, body=body, event_key=key)
        known = store.claim()  # the first row: sent, and the engine acknowledged it
        assert known is not None and known.event_key == "known"
        store.delivered(known.id, engine_id="e-known")
        [target] = store.rows("pending")
        try:
            asyncio.run(deliverer._look_up(target, "target"))
            assert [key for key, _ in client.asked] == keys
        finally:
            store.close()


class AbsentClient(RecordingClient):
    """Answers "not found" to every look-up; its in-flight rule runs on a clock the test moves."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.in_flight = InFlight(6.0, monotonic=lambda: clock[0])

    async def look_up_event(self, key: str, since: float | None = None) -> Lookup:
        self.asked.append((key, since))
        return Lookup(Outcome.NOT_LANDED)


def test_a_write_not_found_in_the_last_moment_of_its_window_waits_it_out(tmp_path: Path) -> None:
    """Half a second of the in-flight window left: "not found" still proves nothing, the row waits
    (a resend now could land beside the first send); once the window is over it is resent."""
    clock = [1000.0]
    store = OutboxStore(tmp_path / "outbox.sqlite3")
    client = AbsentClient(clock)
    deliverer = Deliverer(store, client, rate=1000, burst=1000)  # type: ignore[arg-type]
    with store.transaction() as tx:
        store.enqueue(tx, kind="event", stream="s", body={"type": "TRANSACTION"}, event_key="sale-1")
    client.in_flight.sent("sale-1")  # its send's answer was lost: looked up before any resend
    [row] = store.rows()
    try:
        clock[0] += 5.5
        assert asyncio.run(deliverer._landed_or_waits(row)) is True  # waits
        clock[0] += 0.5
        assert asyncio.run(deliverer._landed_or_waits(row)) is False  # now it may be sent again
    finally:
        store.close()
