"""The money invariant, tested by machine (issue 11).

A hypothesis state machine drives two tills' flows against the simulator —
open, attach, spend, voucher, redeem, complete, void, kill and restart (also in
the middle of a spend), engine down and up, engines that answer writes oddly —
and checks after every step:

* for every member, the engine's balance equals start + earned - spent +
  refunded, exactly as the tills were told (writes still queued in an outbox
  counted at their effect once delivered — unless the engine has them already:
  a write it took but answered unreadably stays queued, held as unverifiable
  where the look-up is refused, and counts once, in the balance);
* no eventKey reached the engine twice;
* no voucher was burned that a till was not told about.

Unknown outcomes are settled by look-up before each check (as the settler
would), and what the till is told about them enters the model; an outcome the
look-up cannot verify stays pending, and the till was told so: its points count
only if the engine's ledger has its eventKey (once — duplicates are checked).
Run for every simulator dialect; a dialect the simulator in this tree does not
know is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.flow_harness import Harness, answer_2xx, is_burn, is_spend, reset_after, reset_before
from tillplug.engine.models import EventDefinition
from tillplug.errors import TillplugError
from tillplug.flows.answers import EngineVoucher
from tillplug.flows.checkouts import Deduction
from tillplug.sim import SimServer
from tillplug.sim.app import Faults
from tillplug.sim.state import EngineState, default_seed

DIALECTS = ("default", "strict", "hostile")
CARDS = ("1000001", "1000002", "5a1b2c3d-0000-4000-8000-000000000001")  # account numbers and a WLL id
VOUCHERS = ("ALICE-5OFF-0001", "ALICE-RIVER-0005", "ALICE-USED-0003", "BOB-5OFF-0001", "ALICE-10PC-0002")
FAULTS = {"none": None, "reset_after": reset_after, "reset_before": reset_before, "answer_2xx": answer_2xx}
# Ordinary answers three times as often as each odd one, so that sales get far enough to be closed.
FAULT_CHOICES = ("none", "none", "none", "none", "none", "none", "reset_after", "reset_before", "answer_2xx")
TILLS = ("a", "b")
LATE_REACTION_SECONDS = 0.1  # a "delayed" dialect's reactions: later than FIRST_CONFIRM_DELAY below


def sim_for(dialect: str) -> SimServer:
    if dialect == "default":
        return SimServer()
    if "dialect" not in inspect.signature(SimServer).parameters:
        pytest.skip(f"the simulator in this tree has no dialect {dialect!r}")
    return SimServer(dialect=dialect)


class MoneyMachine(RuleBasedStateMachine):
    dialect = "default"
    shared_sim: SimServer | None = None  # one simulator per test run; its state is new for each example

    def fresh_engine(self) -> SimServer:
        sim = self.shared_sim
        if sim is None:
            sim = type(self).shared_sim = sim_for(self.dialect).start()
            if sim.sim.dialect.reactions == "delayed":
                # Still late (after the first confirming reads), but not 1.5 s of wall time per write.
                sim.sim.dialect = sim.sim.dialect.with_switches({"late_reaction_seconds": LATE_REACTION_SECONDS})
        state = EngineState(default_seed())
        state.reactors["delay_seconds"] = 0.0
        sim.state = sim.sim.state = state
        sim.sim.faults = Faults()
        return sim

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="tillplug-money-"))
        self.sim = self.fresh_engine()
        self.start = {m: float(v["pointsBalance"]) for m, v in self.sim.state.members.items()}
        self.told: dict[str, float] = dict.fromkeys(self.start, 0.0)  # net points change the tills were told
        self.told_burns: set[str] = set()
        self.member_of: dict[str, str] = {}  # transaction → member UUID
        self.closed: set[str] = set()  # transactions completed or voided
        self.voided: set[str] = set()
        self.by_sale: dict[str, float] = {}  # net points the till was told each sale moved
        self.tills: dict[str, Harness] = {}
        self.seen_events: dict[str, int] = {}
        self.down = False
        self.counter = 0
        for name in TILLS:
            self._build(name)

    # -- plumbing ------------------------------------------------------------------

    def _build(self, name: str) -> None:
        h = Harness(self.dir / name, self.sim, till_id=f"till-{name}", engine={"max_attempts": 1})
        h.loyalty.recover()
        self.tills[name] = h
        self.seen_events[name] = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def uuid(self, ident: str) -> str:
        member = self.sim.state.find_member(ident)
        assert member is not None, ident
        return str(member["id"])

    def _absorb(self, name: str) -> None:
        """What a till was told on the event stream enters the model."""
        h = self.tills[name]
        for kind, data in h.published[self.seen_events[name] :]:
            # A verdict on a sale already closed is one no till can act on: it gives the member nothing.
            tx = data.get("transactionId", "")
            if kind == "points_settled" and data["outcome"] == "landed" and tx not in self.closed:
                self.told[self.member_of[tx]] -= data["points"]
                self.by_sale[tx] = self.by_sale.get(tx, 0) - data["points"]
            elif kind == "voucher_settled" and data["outcome"] == "burned":
                self.told_burns.add(data["code"])
        self.seen_events[name] = len(h.published)

    def _call(self, name: str, coro: Any) -> Any:
        try:
            return self.run(coro)
        except TillplugError:
            return None
        finally:
            self.tills[name].tamper.hooks.clear()
            self._absorb(name)

    def teardown(self) -> None:
        try:
            for h in self.tills.values():
                self.run(h.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the tills' operations ---------------------------------------------------------

    sales = Bundle("sales")

    @initialize(target=sales)
    def a_sale_with_a_member(self) -> tuple[str, str]:
        return self._open_and_attach("a", CARDS[0])

    @rule(target=sales, till=st.sampled_from(TILLS), card=st.sampled_from(CARDS))
    def open_and_attach(self, till: str, card: str) -> tuple[str, str]:
        return self._open_and_attach(till, card)

    def _open_and_attach(self, till: str, card: str) -> tuple[str, str]:
        self.counter += 1
        tx = f"{till}-{self.counter}"
        self._call(till, self.tills[till].loyalty.open_checkout(tx, 1, "c"))
        # Scanned: offline, a keyed code never seen is promised no figure (issue 22), which this
        # machine's count of what each member was told cannot hold.
        attached = self._call(till, self.tills[till].loyalty.attach_member(tx, card, "scanned"))
        if attached is not None:
            self.member_of[tx] = self.uuid(card)
        return till, tx

    @rule(
        sale=sales,
        spends=st.lists(st.tuples(st.integers(1, 300), st.sampled_from(FAULT_CHOICES)), min_size=1, max_size=2),
    )
    def spend(self, sale: tuple[str, str], spends: list[tuple[int, str]]) -> None:
        till, tx = sale
        h = self.tills[till]
        for points, fault in spends:
            hook = FAULTS[fault]
            if hook is not None:
                h.tamper.on(is_spend, hook)
            answer = self._call(till, h.loyalty.spend_points(tx, points))
            if answer is not None and not answer.pending:
                self.told[self.member_of[tx]] -= answer.points
                self.by_sale[tx] = self.by_sale.get(tx, 0) - answer.points

    @rule(sale=sales, code=st.sampled_from(VOUCHERS), fault=st.sampled_from(FAULT_CHOICES))
    def voucher(self, sale: tuple[str, str], code: str, fault: str) -> None:
        till, tx = sale
        h = self.tills[till]
        hook = FAULTS[fault]
        if hook is not None:
            h.tamper.on(is_burn, hook)
        answer = self._call(till, h.loyalty.apply_voucher(tx, code))
        if isinstance(answer, EngineVoucher) and answer.burned:
            self.told_burns.add(answer.code)

    @rule(sale=sales, pick=st.integers(0, 3))
    def redeem(self, sale: tuple[str, str], pick: int) -> None:
        till, tx = sale
        h = self.tills[till]
        listed = self._call(till, h.loyalty.list_benefits(tx)) or []
        if listed:
            answer = self._call(till, h.loyalty.redeem_benefit(tx, listed[pick % len(listed)].id))
            if isinstance(answer, EngineVoucher) and answer.burned:
                self.told_burns.add(answer.code)

    @rule(sale=consumes(sales), total=st.integers(0, 5000))
    def complete(self, sale: tuple[str, str], total: int) -> None:
        till, tx = sale
        answer = self._call(till, self.tills[till].loyalty.complete(tx, total, [], True))
        if answer is not None:
            self.closed.add(tx)
        if answer is not None and tx in self.member_of:
            self.told[self.member_of[tx]] += answer.expectedPoints

    @rule(sale=consumes(sales))
    def void(self, sale: tuple[str, str]) -> None:
        till, tx = sale
        answer = self._call(till, self.tills[till].loyalty.void(tx))
        if answer is not None:
            self.closed.add(tx)
            self.voided.add(tx)
        if answer is not None and tx in self.member_of:
            self.told[self.member_of[tx]] += answer.pointsRefunded
            self.by_sale[tx] = self.by_sale.get(tx, 0) + answer.pointsRefunded

    def _restart(self, till: str) -> None:
        self.run(self.tills[till].close())
        self._build(till)

    @rule(sale=sales, mid_spend=st.sampled_from(["no", "landed", "lost"]))
    def kill_and_restart(self, sale: tuple[str, str], mid_spend: str) -> None:
        """Kill a till and start it again on its state; maybe in the middle of a spend on ``sale``
        (after the intent row was written and, if ``landed``, after the engine took the event)."""
        till, tx = sale
        h = self.tills[till]
        checkout = h.loyalty.checkouts.get(tx)
        usable = checkout is not None and checkout.state == "open" and checkout.member and not checkout.member.offline
        if mid_spend != "no" and usable and checkout is not None and checkout.member is not None:
            self.counter += 1
            key = f"crash-{self.counter}"
            with h.loyalty.checkouts.transaction() as t:
                h.loyalty.checkouts.add_deduction(t, Deduction(key, tx, 50, 50, "sending"))
            if mid_spend == "landed" and not self.down:
                event = EventDefinition(
                    type="REDEEMED_POINTS", subject=checkout.member.id, payload={"points": 50, "eventKey": key}
                )
                # The engine took it; an answer it words oddly changes nothing (its ledger says).
                with contextlib.suppress(TillplugError):
                    self.run(h.client.report_event(event))
        self._restart(till)  # a spend cut off like this told the till nothing

    @rule(down=st.booleans())
    def engine(self, down: bool) -> None:
        self.down = down
        self.sim.sim.faults.update({"down": down})

    @rule(settle=st.booleans())
    def background_catches_up(self, settle: bool) -> None:
        """The daemon's background work: the outbox delivers; the settler looks unknown outcomes up
        (no request is in flight between steps, so a "not found" is believed at once)."""
        if self.down:
            return
        for name, h in self.tills.items():
            if settle:
                for d in h.loyalty.checkouts.pending_deductions():
                    self.run(h.loyalty.points.settle(d, not_landed_after=0))
                for b in h.loyalty.checkouts.pending_burns():
                    self.run(h.loyalty.vouchers.settle(b, not_landed_after=0))
                self._absorb(name)
            with h.store.transaction() as t:  # time passes: rows backing off (or held) are due again
                t.execute("UPDATE outbox SET next_attempt=0 WHERE state='pending'")
            self.run(self._deliver_due(h))

    @staticmethod
    async def _deliver_due(h: Harness) -> None:
        """One pass of the outbox over the rows due now.  Not ``drain``: a row held as unverifiable
        stays pending by design, and waiting for an empty outbox would only burn the timeout."""
        await asyncio.to_thread(h.store.recover)
        for _ in range(50):  # more than the rows a run of 15 steps can queue
            if not await h.deliverer.step():
                return

    # -- the invariant --------------------------------------------------------------------

    def _queued_effect(self) -> dict[str, float]:
        """Points that writes still waiting in the outboxes will move once delivered."""
        state = self.sim.state
        effect = dict.fromkeys(self.start, 0.0)
        landed = {e["payload"].get("eventKey") for e in state.ledger.events}
        for h in self.tills.values():
            for row in h.store.rows("pending") + h.store.rows("sending"):
                member = state.find_member(str(row.body.get("subject") or ""))
                if member is None or (row.requires_key is not None and row.requires_key not in landed):
                    continue
                if row.event_key in landed:
                    # The engine took it and its answer could not be read (a row held as unverifiable,
                    # or awaiting its look-up): its effect is in the balance already, never twice.
                    continue
                effect[member["id"]] += state.points_for(row.body["type"], row.body.get("payload", {}))
        return effect

    def _reactions_applied(self) -> bool:
        state = self.sim.state
        return all(
            state.reactions[e["id"]] or not e["subject"] or not state.points_for(e["type"], e["payload"])
            for e in state.events.values()
        )

    def _in_flight(self) -> tuple[dict[str, float], set[str]]:
        """Outcomes the tills were told are pending: points that landed, vouchers that were burned."""
        landed = {e["payload"].get("eventKey") for e in self.sim.state.ledger.events}
        points = dict.fromkeys(self.start, 0.0)
        codes: set[str] = set()
        for h in self.tills.values():
            for d in h.loyalty.checkouts.pending_deductions():
                if d.event_key in landed:
                    points[self.member_of[d.tx_id]] -= d.points
            codes |= {b.code for b in h.loyalty.checkouts.pending_burns()}
        return points, codes

    @invariant()
    def money_is_neither_lost_nor_invented(self) -> None:
        deadline = time.monotonic() + 3
        while not self._reactions_applied() and time.monotonic() < deadline:
            time.sleep(0.005)
        queued = self._queued_effect()
        pending_points, pending_codes = self._in_flight()
        for member, start in self.start.items():
            engine = float(self.sim.state.members[member]["pointsBalance"])
            expected = start + self.told[member] + pending_points[member]
            assert engine + queued[member] == expected, (member, engine, queued[member], pending_points[member])
        for tx in self.voided:  # a void gives back every point the till was told the sale took
            assert self.by_sale.get(tx, 0) == 0, (tx, self.by_sale[tx])
        assert self.sim.state.ledger.duplicates() == {}
        burned = {b["code"] for b in self.sim.state.ledger.burns}
        assert burned <= self.told_burns | pending_codes, (burned, self.told_burns, pending_codes)


@pytest.mark.system
@pytest.mark.parametrize("dialect", DIALECTS)
def test_money_invariant_over_till_operations(dialect: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if dialect != "default" and "dialect" not in inspect.signature(SimServer).parameters:
        pytest.skip(f"the simulator in this tree has no dialect {dialect!r}")
    monkeypatch.setattr("tillplug.flows.points.FIRST_CONFIRM_DELAY", 0.01)  # reactions apply at once here
    machine: type[MoneyMachine] = type(f"MoneyMachine_{dialect}", (MoneyMachine,), {"dialect": dialect})
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=int(os.environ.get("TILLPLUG_MONEY_EXAMPLES", "50")),
                stateful_step_count=15,
                deadline=None,
                derandomize=True,  # the same bounded run in CI every time
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        if machine.shared_sim is not None:
            machine.shared_sim.stop()


def test_an_earning_answered_unreadably_is_found_by_the_engines_list_and_counted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hostile: the engine takes a completion's earning but answers it unreadably and refuses the
    look-up filter.  The row was held (the first hostile run's falsifying example: its points were
    counted again as "queued"); #21: the engine's unfiltered list shows it, so it is delivered by
    look-up, never resent, and its points are in the balance once."""
    if "dialect" not in inspect.signature(SimServer).parameters:
        pytest.skip("the simulator in this tree has no dialects")
    monkeypatch.setattr("tillplug.flows.points.FIRST_CONFIRM_DELAY", 0.01)
    machine_class: type[MoneyMachine] = type("MoneyMachine_held", (MoneyMachine,), {"dialect": "hostile"})
    machine = machine_class()
    try:
        sale = machine._open_and_attach("a", CARDS[0])
        machine.complete(sale=sale, total=1367)
        member = machine.member_of[sale[1]]
        for _ in range(2):  # sent (answer unreadable), then looked up (found in the list)
            machine.background_catches_up(settle=False)
            machine.money_is_neither_lost_nor_invented()
        store = machine.tills[sale[0]].store
        assert store.rows("pending") == []
        [row] = [r for r in store.rows("delivered") if r.body.get("type") != "REDEEMED_POINTS"]
        assert row.note == "found by look-up"
        assert [e["payload"]["eventKey"] for e in machine.sim.state.ledger.events] == [row.event_key]
        balance = machine.sim.state.members[member]["pointsBalance"]
        assert balance == machine.start[member] + machine.told[member] > machine.start[member]
    finally:
        machine.teardown()
        if machine_class.shared_sim is not None:
            machine_class.shared_sim.stop()
