"""Issue 22, observation 1: two tills overdrew one member every time; the points now become final at
tender, before payment, by a rule both tills reach without talking.

Two real daemons (``VirtualTill``) over HTTP against one simulator whose reactions land late.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tillplug.commands.virtual.till import VirtualTill
from tillplug.sim import SimServer

BOB = "5a1b2c3d-0000-4000-8000-000000000002"  # card 1000002, 300 points


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


def open_sale(till: VirtualTill, tx: str, card: str) -> None:
    created = till.api.post("/v1/checkouts", json={"transactionId": tx, "lane": 1, "cashierId": "c-1"})
    assert created.status_code == 201, created.text
    attached = till.api.put(f"/v1/checkouts/{tx}/member", json={"code": card, "entry": "scanned"})
    assert attached.status_code == 200, attached.text


def kept_points(spend: httpx.Response, tender: httpx.Response) -> int:
    """Points a till that follows the README keeps as a discount: a 200 spend's points, unless its
    tender refused them (or, where tender says, only those it made final)."""
    if spend.status_code != 200 or tender.status_code != 200:
        return 0
    final = tender.json().get("points", {}).get("final")
    return int(spend.json()["points"] if final is None else final)


@pytest.mark.parametrize("delay", [0.5, 2.0])
def test_two_tills_spending_70_percent_at_once_and_tendering_at_most_one_keeps(tmp_path: Path, delay: float) -> None:
    """Bob (300) at two tills, each spending 210 at the same moment; reactions land ``delay`` s late.
    Before: both answered 200 and Bob ended at -120, every round.  Now each tender waits for its
    own deduction to show, then the earlier deduction keeps and the later is given back
    (409 ``insufficient_points``): never both keep, and Bob never ends overdrawn."""
    with SimServer() as sim:
        sim.state.reactors["delay_seconds"] = delay
        with (
            VirtualTill(tmp_path / "a", sim=sim, till_id="till-01") as a,
            VirtualTill(tmp_path / "b", sim=sim, till_id="till-02") as b,
        ):
            for round_ in range(2):
                sim.state.members[BOB]["pointsBalance"] = 300
                tx_a, tx_b = f"A{round_}", f"B{round_}"
                open_sale(a, tx_a, "1000002")
                open_sale(b, tx_b, "1000002")
                spent = at_once(
                    lambda: a.api.post(f"/v1/checkouts/{tx_a}/points", json={"points": 210}),  # noqa: B023
                    lambda: b.api.post(f"/v1/checkouts/{tx_b}/points", json={"points": 210}),  # noqa: B023
                )
                assert all(s.status_code == 200 for s in spent), [s.text for s in spent]
                tendered = at_once(
                    lambda: a.api.post(f"/v1/checkouts/{tx_a}/tender"),  # noqa: B023
                    lambda: b.api.post(f"/v1/checkouts/{tx_b}/tender"),  # noqa: B023
                )
                kept = [kept_points(s, t) for s, t in zip(spent, tendered, strict=True)]
                assert sorted(kept) in ([0, 0], [0, 210]), [t.text for t in tendered]
                for t in tendered:
                    if t.status_code != 200:
                        assert t.status_code == 409 and t.json()["error"]["code"] == "insufficient_points"
                assert a.settle(15) and b.settle(15)
                assert sim.state.members[BOB]["pointsBalance"] == 300 - sum(kept)
                for t in tendered:
                    if t.status_code == 200:
                        assert t.json()["ready"] is True and t.json()["points"]["state"] == "final"
