"""Issue 20: the checkouts table is pruned of finished sales past their keep time, never of open or unsettled ones."""

import time

from tillplug.flows.checkouts import KEEP_FINISHED_CHECKOUTS, Checkout, CheckoutStore, Deduction
from tillplug.outbox.store import OutboxStore


def test_finished_checkouts_past_their_keep_time_are_pruned_unless_open_or_unsettled(tmp_path):
    outbox = OutboxStore(tmp_path / "outbox.sqlite3")
    store = CheckoutStore(outbox)
    with store.transaction() as tx:
        for tx_id, state in (("DONE", "completed"), ("VOID", "voided"), ("OPEN", "open"), ("UNSURE", "completed")):
            store.insert(tx, Checkout(tx_id=tx_id, lane=1, state=state))
        store.add_deduction(tx, Deduction("k1", "DONE", 10, 100, "landed", False, time.time()))
        store.add_deduction(tx, Deduction("k2", "UNSURE", 10, 100, "unknown", True, time.time()))
    later = time.time() + KEEP_FINISHED_CHECKOUTS + 1
    assert store.prune_finished(now=time.time()) == 0  # all are recent
    assert store.prune_finished(now=later) == 2
    assert store.get("DONE") is None and store.get("VOID") is None and store.deductions("DONE") == []
    assert store.get("OPEN") is not None and store.get("UNSURE") is not None
    assert [d.event_key for d in store.deductions("UNSURE")] == ["k2"]
    outbox.close()
