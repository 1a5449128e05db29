"""A till subtracts its own deductions the engine's balance does not show yet, and only until it does.

With late reactions the wallet lags a spend by seconds; the next spend on this till is checked
against the balance less that deduction (the review finding of two 1000-point spends from 1250).
Once the deduction's reaction shows it applied, it is no longer subtracted: counting it twice
would refuse points the member has.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tillplug.commands.virtual.till import VirtualTill
from tillplug.sim import SimServer

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"  # card 1000001, 1250 points


def test_a_late_deduction_is_subtracted_until_its_reaction_shows_then_forgotten(
    tmp_path: Path, late_reactions_sim: SimServer
) -> None:
    with VirtualTill(tmp_path, sim=late_reactions_sim) as till:
        assert till.api.post("/v1/checkouts", json={"transactionId": "T1", "lane": 1, "cashierId": "c"}).is_success
        assert till.api.put("/v1/checkouts/T1/member", json={"code": "1000001"}).is_success
        first = till.api.post("/v1/checkouts/T1/points", json={"points": 1000}).json()
        assert first["balanceEstimated"] is True and first["balanceAfter"] == 250
        too_much = till.api.post("/v1/checkouts/T1/points", json={"points": 300})
        assert too_much.status_code == 409 and "250" in too_much.json()["error"]["message"]
        # The late reaction lands (1.5 s); from then on the wallet itself shows the deduction.
        assert till.wait_for(lambda: float(till.ledger()["balances"][ALICE]) == 250, 10)
        second = till.api.post("/v1/checkouts/T1/points", json={"points": 250})
        assert second.status_code == 200, second.text
        unseen = till.daemon.loyalty.points._unseen.get(ALICE, {})
        assert first["eventKey"] not in unseen  # forgotten once its reaction showed it applied
        assert till.settle(10)
        assert float(till.ledger()["balances"][ALICE]) == 0


def test_a_spend_confirmed_while_an_earlier_one_is_unseen_reports_the_balance_after_both(
    tmp_path: Path, late_reactions_sim: SimServer
) -> None:
    """The second spend's reaction shows at once but the first's is still late: the wallet then
    reads 1050, which is not Alice's balance after both (50); the till is told 50."""
    with VirtualTill(tmp_path, sim=late_reactions_sim) as till:
        assert till.api.post("/v1/checkouts", json={"transactionId": "T1", "lane": 1, "cashierId": "c"}).is_success
        assert till.api.put("/v1/checkouts/T1/member", json={"code": "1000001"}).is_success
        first = till.api.post("/v1/checkouts/T1/points", json={"points": 1000}).json()
        assert first["balanceEstimated"] is True
        # New reactions apply at once; the first one's stays 1.5 s late.
        httpx.post(late_reactions_sim.url + "/_sim/dialect", json={"reactions": "flat"}, timeout=10).raise_for_status()
        second = till.api.post("/v1/checkouts/T1/points", json={"points": 200})
        assert second.status_code == 200, second.text
        assert second.json()["balanceAfter"] == 50
        assert till.settle(10)
        assert float(till.ledger()["balances"][ALICE]) == 50


def test_the_confirming_reads_after_a_spend_go_out_together(tmp_path: Path) -> None:
    """Over a WAN each sequential engine request is a round trip: after reporting a spend the
    reactions and the balance are read at once, so the spend costs three round trips, not four.
    Seen here as the two confirming requests both in flight at the same moment.  (The reactions
    are read where engine-check saw them listed promptly, as it does against this simulator.)"""
    with SimServer() as sim, VirtualTill(tmp_path, sim=sim) as till:
        till.daemon.client.dialect = sim.sim.dialect.answers()
        assert till.api.post("/v1/checkouts", json={"transactionId": "T1", "lane": 1, "cashierId": "c"}).is_success
        assert till.api.put("/v1/checkouts/T1/member", json={"code": "1000001"}).is_success
        client = till.daemon.client
        in_flight: list[str] = []
        overlapped: list[tuple[str, ...]] = []
        original_send = client._send

        async def watched(method: str, url: str, **kw: object) -> httpx.Response:
            in_flight.append(url)
            if len(in_flight) > 1:
                overlapped.append(tuple(sorted(in_flight)))
            try:
                return await original_send(method, url, **kw)  # type: ignore[arg-type]
            finally:
                in_flight.remove(url)

        client._send = watched  # type: ignore[method-assign]
        httpx.post(sim.url + "/_sim/faults", json={"slow_ms": 50}, timeout=10).raise_for_status()
        spent = till.api.post("/v1/checkouts/T1/points", json={"points": 100}).json()
        assert spent["balanceAfter"] == 1150 and spent["balanceEstimated"] is False
        assert any(
            any("/reactions" in u for u in urls) and any(u.endswith("/wallet") for u in urls) for urls in overlapped
        ), overlapped
