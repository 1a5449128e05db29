"""Hostile review of money safety through the real till API (issue 11).

Every test drives a real daemon (``VirtualTill``) over HTTP against the simulator,
and states the numbers it expects: the member's balance in the engine's ledger and
what the till was told.  A failing test here is a finding: a way a member gains or
loses points, or the till is told something untrue.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tillplug.commands.virtual.till import VirtualTill
from tillplug.sim import SimServer

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"  # card 1000001, 1250 points
BOB = "5a1b2c3d-0000-4000-8000-000000000002"  # card 1000002, 300 points


def balance(till: VirtualTill, member: str) -> float:
    return float(till.ledger()["balances"][member])


def open_sale(till: VirtualTill, tx: str, card: str) -> None:
    created = till.api.post("/v1/checkouts", json={"transactionId": tx, "lane": 1, "cashierId": "c-1"})
    assert created.status_code == 201, created.text
    attached = till.api.put(f"/v1/checkouts/{tx}/member", json={"code": card})
    assert attached.status_code == 200, attached.text


def at_once(*calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """Fire the calls from threads released together; every thread joined within 60 s."""
    answers: list[httpx.Response | None] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def worker(i: int, call: Callable[[], httpx.Response]) -> None:
        start.wait(10)
        answers[i] = call()

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(a is not None for a in answers), "a call did not return within 60 s"
    return [a for a in answers if a is not None]


def discount_given(answer: httpx.Response) -> int:
    """What a till that follows docs/pos-api.md gives: ``discount`` of a 200 answer, nothing otherwise."""
    if answer.status_code != 200:
        return 0
    body: dict[str, Any] = answer.json()
    return int(body["discount"]["amount"])


def bob_spends_200_at_two_tills_at_once(a: VirtualTill, b: VirtualTill) -> list[httpx.Response]:
    """Bob (300 points) at two tills, each spending 200 at the same moment: the race on one member."""
    open_sale(a, "A1", "1000002")
    open_sale(b, "B1", "1000002")
    return at_once(
        lambda: a.api.post("/v1/checkouts/A1/points", json={"points": 200}),
        lambda: b.api.post("/v1/checkouts/B1/points", json={"points": 200}),
    )


def test_two_spends_on_one_checkout_cannot_take_more_points_than_the_member_has_with_late_reactions(
    tmp_path: Path, late_reactions_sim: SimServer
) -> None:
    """FINDING: Alice has 1250; two sequential spends of 1000 on one checkout both answer 200 with a
    1000 discount (``balanceAfter: 250, balanceEstimated: true`` twice) and the engine ends at -750.

    The balance check before a spend re-reads the engine's wallet, which does not yet show the
    first deduction (its reaction is late), and tillplug does not subtract the deductions it has
    itself just confirmed but the engine has not applied.
    """
    with VirtualTill(tmp_path, sim=late_reactions_sim) as till:
        open_sale(till, "T1", "1000001")
        first = till.api.post("/v1/checkouts/T1/points", json={"points": 1000})
        second = till.api.post("/v1/checkouts/T1/points", json={"points": 1000})
        assert till.settle(10)
        given = discount_given(first) + discount_given(second)
        assert given <= 1250, f"the till was told to give {given} of discount for a member holding 1250 points"
        assert balance(till, ALICE) >= 0


@pytest.mark.xfail(
    strict=True,
    reason="engine limit: WLL applies a deduction's reaction asynchronously (seconds, load-dependent), "
    "allows a negative balance, and has no conditional or idempotent write; a spend answers before "
    "either deduction shows (balanceEstimated: true, final: false).  The points become final at tender, "
    "before payment (tests/flows/test_final_before_payment.py); a till that gives the discount without "
    "tendering can overdraw.",
)
def test_two_tills_spending_one_member_at_once_cannot_overdraw_with_late_reactions(
    tmp_path: Path, late_reactions_sim: SimServer
) -> None:
    """FINDING: Bob has 300; two tills each spend 200 at once; both answer 200 with a 200 discount
    (``balanceAfter: 100, balanceEstimated: true``) and the engine ends at -100.

    The reactions land 6 s late here, well after every read either till makes (its confirming
    reads and the overdraw wait end within about 3 s), so the engine limit shows every time.
    """
    switch = {"late_reaction_seconds": 6.0}
    httpx.post(late_reactions_sim.url + "/_sim/dialect", json=switch, timeout=10).raise_for_status()
    with (
        VirtualTill(tmp_path / "a", sim=late_reactions_sim, till_id="till-01") as a,
        VirtualTill(tmp_path / "b", sim=late_reactions_sim, till_id="till-02") as b,
    ):
        answers = bob_spends_200_at_two_tills_at_once(a, b)
        assert a.settle(15) and b.settle(15)
        given = sum(discount_given(x) for x in answers)
        assert given <= 300, f"the tills were told to give {given} of discount for a member holding 300 points"
        assert balance(a, BOB) >= 0


def sim_faults(till: VirtualTill, **values: Any) -> None:
    httpx.post(till.sim.url + "/_sim/faults", json=values, timeout=10).raise_for_status()


def burns(till: VirtualTill) -> list[str]:
    return [str(b["code"]) for b in till.sim.state.ledger.burns]


def test_a_tender_whose_burn_is_still_unknown_is_never_ready_and_the_sale_cannot_complete_without_it(
    tmp_path: Path,
) -> None:
    """FINDING (check_then_burn): the first tender's burn answer is lost (it landed) and the till is
    told ``pending: ["ALICE-5OFF-0001"], ready: false``.  Tendering again at once answers
    ``pending: [], vouchers: [], ready: true`` though the burn is still unknown, and complete is
    accepted; then the settler finds the burn landed: the voucher is used up, the customer got no
    £5 discount (``voucher_settled: applied false``, an error event after the sale).
    """
    with VirtualTill(tmp_path, voucher_mode="check_then_burn") as till:
        open_sale(till, "T1", "1000001")
        checked = till.api.post("/v1/checkouts/T1/vouchers", json={"code": "ALICE-5OFF-0001"})
        assert checked.status_code == 200 and checked.json()["burned"] is False
        sim_faults(till, reset_rate=1.0)
        first = till.api.post("/v1/checkouts/T1/tender").json()
        sim_faults(till, reset_rate=0.0)
        assert first["pending"] == ["ALICE-5OFF-0001"] and first["ready"] is False
        assert burns(till) == ["ALICE-5OFF-0001"]  # the engine did burn it
        again = till.api.post("/v1/checkouts/T1/tender").json()
        settled = any(e["type"] == "voucher_settled" for e in till.events())
        # Whatever the timing: "ready" with no voucher on the sale is true only once the burn was
        # settled and the voucher given back to the sale; a burned voucher must be on it.
        assert not (again["ready"] and not settled), f"ready while the burn was still unknown: {again}"
        done = till.api.post("/v1/checkouts/T1/complete", json={"total": 2000, "basket": [], "paymentConfirmed": True})
        if done.status_code == 200:
            assert till.wait_for(lambda: any(e["type"] == "voucher_settled" for e in till.events()), 10)
            [verdict] = [e["data"] for e in till.events() if e["type"] == "voucher_settled"]
            assert verdict["applied"] is True, f"voucher burned, sale completed without its discount: {verdict}"


def test_a_sale_with_a_voucher_burn_of_unknown_outcome_cannot_complete(tmp_path: Path) -> None:
    """FINDING (burn mode): the burn's answer is lost (202 pending, it landed), ``vouchersPending``
    shows the code, yet complete answers 200; the burn then settles on a completed sale: voucher
    gone, no discount given.  Points in the same position are refunded; a voucher cannot be.
    """
    with VirtualTill(tmp_path) as till:
        open_sale(till, "T1", "1000001")
        sim_faults(till, reset_rate=1.0)
        applied = till.api.post("/v1/checkouts/T1/vouchers", json={"code": "ALICE-5OFF-0001"})
        sim_faults(till, reset_rate=0.0)
        assert applied.status_code == 202 and applied.json()["pending"] is True
        assert burns(till) == ["ALICE-5OFF-0001"]
        state = till.api.get("/v1/checkouts/T1").json()
        if state["vouchersPending"]:
            done = till.api.post(
                "/v1/checkouts/T1/complete", json={"total": 2000, "basket": [], "paymentConfirmed": True}
            )
            assert done.status_code != 200, f"completed with voucher {state['vouchersPending']} pending: {done.json()}"


def voucher_verdicts(till: VirtualTill) -> list[dict[str, Any]]:
    return [e["data"] for e in till.events() if e["type"] == "voucher_settled"]


def still_unknown(till: VirtualTill) -> int:
    """One pass of the settler, run on the daemon's loop: how many outcomes are still unknown."""
    left: int = till.call(till.daemon.loyalty.settle_owed())
    return left


def test_a_lost_burn_answer_on_a_sale_without_a_member_is_settled(tmp_path: Path) -> None:
    """FINDING: a voucher scanned on a sale with no member (allowed) whose burn answer is lost (it
    landed) answers 202 pending, and no ``voucher_settled`` ever follows: the settler can only
    look a code-only burn up in the attached member's wallet, and there is none.  The voucher is
    used up; the till is never told.
    """
    with VirtualTill(tmp_path) as till:
        created = till.api.post("/v1/checkouts", json={"transactionId": "T1", "lane": 1, "cashierId": "c-1"})
        assert created.status_code == 201
        sim_faults(till, reset_rate=1.0)
        applied = till.api.post("/v1/checkouts/T1/vouchers", json={"code": "ALICE-5OFF-0001"})
        sim_faults(till, reset_rate=0.0)
        assert applied.status_code == 202 and applied.json()["pending"] is True
        assert burns(till) == ["ALICE-5OFF-0001"]
        # The burn is in the engine's ledger: one look-up settles it (retried a few times, bounded).
        assert till.wait_for(lambda: still_unknown(till) == 0 and voucher_verdicts(till) != [], 8), (
            "the burn never settled: the till is never told"
        )
        [verdict] = voucher_verdicts(till)
        assert verdict["outcome"] == "burned" and verdict["applied"] is True


def test_re_attaching_another_member_while_a_burn_is_pending_does_not_orphan_the_burn(tmp_path: Path) -> None:
    """FINDING: Alice's voucher burn answer is lost (202 pending, it landed).  Re-attaching Bob is
    allowed (``vouchersPending: ["ALICE-5OFF-0001"]``) although the same move is refused for a
    pending points spend; the settler then looks the burn up in Bob's wallet, never finds it, and
    no ``voucher_settled`` follows; complete answers 200 and health shows no problem.
    """
    with VirtualTill(tmp_path) as till:
        open_sale(till, "T1", "1000001")
        sim_faults(till, reset_rate=1.0)
        applied = till.api.post("/v1/checkouts/T1/vouchers", json={"code": "ALICE-5OFF-0001"})
        sim_faults(till, reset_rate=0.0)
        assert applied.status_code == 202
        reattached = till.api.put("/v1/checkouts/T1/member", json={"code": "1000002"})
        if reattached.status_code == 200:
            assert till.wait_for(lambda: still_unknown(till) == 0 and voucher_verdicts(till) != [], 8), (
                "Alice's burn never settled"
            )


def test_two_tills_spending_one_member_at_once_are_not_both_told_the_points_were_spent_elsewhere(
    tmp_path: Path,
) -> None:
    """FINDING (default dialect, untrue answer): Bob has 300; two tills each spend 200 at once.
    Both deductions land, both confirming reads see -100, both tills refund and answer 409
    ``insufficient_points`` "Those points were just spent elsewhere" -- yet nothing was spent
    elsewhere: Bob ends at 300 and neither sale got a discount, though one of them could have.
    """
    with (
        SimServer() as sim,
        VirtualTill(tmp_path / "a", sim=sim, till_id="till-01") as a,
        VirtualTill(tmp_path / "b", sim=sim, till_id="till-02") as b,
    ):
        answers = bob_spends_200_at_two_tills_at_once(a, b)
        assert a.settle(10) and b.settle(10)
        given = sum(discount_given(x) for x in answers)
        assert balance(a, BOB) == 300 - given, "the ledger and what the tills were told disagree"
        # Neither till can see the other's deduction before it lands, so which one keeps its points
        # is decided by each waiting a random time for the other to give back: exactly one keeps,
        # unless both times fall within one refund's round trip, when both give back (never both
        # keep).  A refused till is told what happened, not that the points were spent elsewhere.
        assert given in (0, 200)
        for refused in (x for x in answers if x.status_code != 200):
            message = refused.json()["error"]["message"]
            assert "spent elsewhere" not in message, message
            # Raced: told so.  On a loaded machine the threads' requests may not overlap at all: the
            # other till's spend had already shown when this one read the wallet (seen in CI under
            # load), and it is told the balance it saw, the other till keeping its discount.
            raced = "at the same moment" in message
            assert raced or (given == 200 and message.startswith("The member has 100 points")), message


def test_two_tills_overdrawing_one_member_together_one_keeps_its_points(tmp_path: Path) -> None:
    """Both deductions land and show: the one the engine created first keeps its points, the other
    is given back (the rule of tillplug.flows.finality, reached by each till on its own): one
    discount of 200, Bob at 100."""
    with (
        SimServer() as sim,
        VirtualTill(tmp_path / "a", sim=sim, till_id="till-01") as a,
        VirtualTill(tmp_path / "b", sim=sim, till_id="till-02") as b,
    ):
        answers = bob_spends_200_at_two_tills_at_once(a, b)
        assert a.settle(10) and b.settle(10)
        given = [discount_given(x) for x in answers]
        assert sorted(given) == [0, 200], [x.json() for x in answers]
        spends = [e for e in sim.state.ledger.events if e["type"] == "REDEEMED_POINTS"]
        if len(spends) == 2:  # both reported: the first the engine created is the one kept
            first = min(spends, key=lambda e: (e["createdAt"], e["id"]))
            keeper = 0 if first["payload"]["tillId"] == "till-01" else 1
            assert given[keeper] == 200 and answers[1 - keeper].status_code == 409
        assert balance(a, BOB) == 100


def test_a_spend_the_filter_cannot_verify_is_settled_from_the_engines_list_and_refunded_after_a_void(
    tmp_path: Path,
) -> None:
    """FINDING (hostile dialect): every spend answers 202 pending (unreadable 2xx; the look-up
    filter is refused with 400).  After a void Alice was at 750 (the 500 landed) and the checkout
    said ``pointsPending: 500`` for ever.  #21: the engine's unfiltered list shows the deduction
    landed, so the settler refunds it: Alice is back at 1250 and nothing is left unknown.
    """
    with VirtualTill(tmp_path, dialect="hostile") as till:
        open_sale(till, "T1", "1000001")
        spent = till.api.post("/v1/checkouts/T1/points", json={"points": 500})
        assert spent.status_code == 202
        voided = till.api.post("/v1/checkouts/T1/void").json()
        assert voided["pointsPending"] == 500
        assert till.wait_for(lambda: still_unknown(till) == 0, 20)
        assert till.wait_for(lambda: balance(till, ALICE) == 1250, 20)  # refunded once, through the outbox


def test_a_voucher_burned_on_another_sale_a_moment_ago_is_not_settled_as_this_sales_burn(tmp_path: Path) -> None:
    """FINDING: till 1 burns ALICE-5OFF-0001 on sale A (200, £5 off).  Till 2 tries the same code on
    sale B; the engine refuses it (already used) but the answer is lost: 202 pending.  The settler
    then finds the benefit burned less than ``CLOCK_SKEW`` (300 s) before B's intent and settles it
    ``outcome: burned, applied: true, discounts: [£5]`` -- one burn in the engine's ledger, two
    sales given the discount.
    """
    with (
        SimServer() as sim,
        VirtualTill(tmp_path / "a", sim=sim, till_id="till-01") as a,
        VirtualTill(tmp_path / "b", sim=sim, till_id="till-02") as b,
    ):
        open_sale(a, "A1", "1000001")
        open_sale(b, "B1", "1000001")
        first = a.api.post("/v1/checkouts/A1/vouchers", json={"code": "ALICE-5OFF-0001"})
        assert first.status_code == 200 and first.json()["burned"] is True
        sim_faults(b, reset_rate=1.0)
        second = b.api.post("/v1/checkouts/B1/vouchers", json={"code": "ALICE-5OFF-0001"})
        sim_faults(b, reset_rate=0.0)
        assert second.status_code == 202
        assert burns(a) == ["ALICE-5OFF-0001"]  # burned once, on sale A
        # One settler pass sees the benefit burned; give it up to 5 s to say something (or nothing).
        b.wait_for(lambda: still_unknown(b) == 0 or voucher_verdicts(b) != [], 5)
        applied_on_b = [v for v in voucher_verdicts(b) if v["applied"]]
        assert applied_on_b == [], f"sale B was told to give the discount of a voucher burned on sale A: {applied_on_b}"


# -- probes that held: kept as regression tests --------------------------------------------------


def test_held_a_lost_spend_answer_then_a_void_gives_the_points_back_exactly_once(tmp_path: Path) -> None:
    """Held: the spend's answer is lost (it landed): 202 pending, discount 0; the void says
    ``pointsPending: 500``; the settler refunds it once (``points_settled: refunded``); Alice is
    back at 1250, no eventKey twice."""
    with VirtualTill(tmp_path) as till:
        open_sale(till, "T1", "1000001")
        sim_faults(till, reset_rate=1.0)
        spent = till.api.post("/v1/checkouts/T1/points", json={"points": 500})
        sim_faults(till, reset_rate=0.0)
        assert spent.status_code == 202 and spent.json()["discount"]["amount"] == 0
        voided = till.api.post("/v1/checkouts/T1/void").json()
        assert voided["pointsRefunded"] + voided["pointsPending"] == 500
        assert till.wait_for(lambda: still_unknown(till) == 0, 8)
        assert till.settle(10)
        assert balance(till, ALICE) == 1250
        assert till.ledger()["duplicates"] == {}
        verdicts = [e["data"] for e in till.events() if e["type"] == "points_settled"]
        assert [v["outcome"] for v in verdicts] in ([], ["refunded"])


def test_held_two_tills_tendering_one_checked_voucher_at_once_burn_it_once(tmp_path: Path) -> None:
    """Held (check_then_burn): both tills check ALICE-5OFF-0001 (200), both tender at once:
    exactly one is ``ready`` with it burned, the other is told ``voucher_already_used``."""
    with (
        SimServer() as sim,
        VirtualTill(tmp_path / "a", sim=sim, voucher_mode="check_then_burn", till_id="till-01") as a,
        VirtualTill(tmp_path / "b", sim=sim, voucher_mode="check_then_burn", till_id="till-02") as b,
    ):
        open_sale(a, "A1", "1000001")
        open_sale(b, "B1", "1000001")
        for till, tx in ((a, "A1"), (b, "B1")):
            assert till.api.post(f"/v1/checkouts/{tx}/vouchers", json={"code": "ALICE-5OFF-0001"}).status_code == 200
        answers = [
            x.json()
            for x in at_once(
                lambda: a.api.post("/v1/checkouts/A1/tender"), lambda: b.api.post("/v1/checkouts/B1/tender")
            )
        ]
        assert sorted(len(x["burned"]) for x in answers) == [0, 1]
        assert sorted(x["ready"] for x in answers) == [False, True]
        [refused] = [x for x in answers if not x["ready"]]
        assert [f["error"] for f in refused["failed"]] == ["voucher_already_used"]
        assert burns(a) == ["ALICE-5OFF-0001"]


@pytest.mark.parametrize("other", ["void", "complete"])
def test_held_a_spend_racing_a_close_keeps_no_deduction_on_a_closed_sale(tmp_path: Path, other: str) -> None:
    """Held: a spend fired at the same instant as a void or complete either lands before (and is
    refunded by the void) or is refused with 409; Alice's balance matches what the till was told."""
    with VirtualTill(tmp_path) as till:
        open_sale(till, "T1", "1000001")
        body = {"total": 2000, "basket": [], "paymentConfirmed": True} if other == "complete" else None
        spend, close = at_once(
            lambda: till.api.post("/v1/checkouts/T1/points", json={"points": 300}),
            lambda: till.api.post(f"/v1/checkouts/T1/{other}", json=body),
        )
        assert close.status_code == 200
        assert till.settle(10)
        kept = discount_given(spend) if other == "complete" else 0
        earned = 20 if other == "complete" else 0
        assert balance(till, ALICE) == 1250 - kept + earned
