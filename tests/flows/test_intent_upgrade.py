"""A state directory written before the intent machine (issue 21, observation 5) opens, is migrated
once, and its open outcomes settle under the one vocabulary.

``tests/fixtures/state-before-intents.sql`` is the outbox database as main's code (4c2a79d) wrote
it: deductions confirmed, failed, unknown and owed, unknown after a crash with its refund-if-landed
queued, refunded, and one left ``sending``; burns burned, failed, unknown and owed, unknown after
its look-up gave up, and one left ``sending``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flow_harness import ALICE, Harness
from tillplug.engine.models import EventDefinition
from tillplug.flows.checkouts import Deduction
from tillplug.flows.intents import Intent
from tillplug.sim import SimServer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "state-before-intents.sql"
MIGRATED_DEDUCTIONS = {
    "k-confirmed": ("landed", False),
    "k-failed": ("not_landed", False),
    "k-owed-landed": ("unknown", True),
    "k-owed-lost": ("unknown", True),
    "k-cut": ("unknown", False),  # cut off by a crash: its refund-if-landed settles it
    "k-sending": ("sending", False),
    "k-refunded": ("refunded", False),
}
MIGRATED_BURNS = {
    "ALICE-USED-0003": ("landed", False),
    "BOB-5OFF-0001": ("not_landed", False),
    "ALICE-5OFF-0001": ("unknown", True),
    "ALICE-10PC-0002": ("unverifiable", False),  # unknown and no longer pending: its look-up had given up
    "ALICE-RIVER-0005": ("sending", False),
}


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer() as server:
        yield server


@pytest.fixture
def old_state(tmp_path: Path) -> Path:
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    db.executescript(FIXTURE.read_text())
    db.close()
    return tmp_path


def states(h: Harness) -> tuple[dict[str, tuple[str, bool]], dict[str, tuple[str, bool]]]:
    store = h.loyalty.checkouts
    deductions = store.deductions("OLD-OPEN") + store.deductions("OLD-VOID")
    return {d.event_key: (d.state, d.owed) for d in deductions}, {
        b.code: (b.state, b.owed) for b in store.burns("OLD-OPEN")
    }


def test_old_states_are_renamed_once_and_old_words_are_refused(old_state: Path, sim: SimServer) -> None:
    async def go() -> None:
        for _ in range(2):  # the second start finds the new tables and changes nothing
            h = Harness(old_state, sim)
            try:
                assert states(h) == (MIGRATED_DEDUCTIONS, MIGRATED_BURNS)
            finally:
                await h.close()
        h = Harness(old_state, sim)
        try:
            store = h.loyalty.checkouts
            with pytest.raises(ValueError):  # code still written in the old words fails loudly
                store.deductions("OLD-OPEN", "confirmed")
            with pytest.raises(ValueError), store.transaction() as tx:
                store.add_deduction(tx, Deduction("k-new", "OLD-OPEN", 1, 1, "confirmed"))
            with pytest.raises(sqlite3.IntegrityError), store.transaction() as tx:
                tx.execute("UPDATE burns SET state='burned' WHERE id=1")
            # The sequence of burn ids goes on after the copied rows.
            assert store.begin_burn("OLD-OPEN", "X", None, time.time()) == 6
        finally:
            await h.close()

    asyncio.run(go())


def test_old_open_outcomes_settle_under_the_new_words(old_state: Path, sim: SimServer) -> None:
    async def go() -> None:
        h = Harness(old_state, sim)
        try:
            # The engine took one of the two owed deductions; its answer was lost before the upgrade.
            taken = EventDefinition(
                type="REDEEMED_POINTS", subject=ALICE, payload={"points": 100, "eventKey": "k-owed-landed"}
            )
            await h.client.report_event(taken)
            assert h.loyalty.recover() == 2  # the deduction and the burn a crash left sending
            deductions, burns = states(h)
            assert deductions["k-sending"] == ("unknown", False)  # a refund-if-landed is queued for it
            assert burns["ALICE-RIVER-0005"] == ("unknown", True)  # looked up; the till is owed a verdict
            reversals = {r.requires_key for r in h.store.rows("pending") if r.requires_key}
            assert reversals == {"k-cut", "k-sending"}
            store = h.loyalty.checkouts
            owed: list[Intent] = [*store.deduction_intents.owed(), *store.burn_intents.owed()]
            for intent in owed:
                await h.loyalty.settler.settle(intent, window=0)  # nothing of this process is in flight
            points = {v["eventKey"]: v["outcome"] for v in h.of_type("points_settled")}
            assert points == {"k-owed-landed": "landed", "k-owed-lost": "not_landed"}
            vouchers = {v["code"]: v["outcome"] for v in h.of_type("voucher_settled")}
            assert vouchers == {"ALICE-5OFF-0001": "not_burned", "ALICE-RIVER-0005": "not_burned"}
            deductions, burns = states(h)
            assert deductions["k-owed-landed"] == ("landed", False) and deductions["k-owed-lost"] == (
                "not_landed",
                False,
            )
            assert burns["ALICE-5OFF-0001"] == ("not_landed", False)
            assert store.deduction_intents.owed() == [] and store.burn_intents.owed() == []
            # A void gives back what landed, old row and settled row alike.
            voided = await h.loyalty.void("OLD-OPEN")
            assert voided.pointsRefunded == 200 and voided.pointsPending == 0
        finally:
            await h.close()

    asyncio.run(go())
