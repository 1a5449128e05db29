"""engine-check and the money of issue 22: its events carry the till and branch ids, it checks the reactors."""

import asyncio

from tests.engine_helpers import sim_client
from tillplug.commands.engine_check import engine_check
from tillplug.config.model import EngineConfig
from tillplug.sim import SimServer

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"


def test_engine_checks_test_spend_and_refund_carry_till_and_branch_ids() -> None:
    """A tenant schema that requires tillId and branchId on every event would refuse the check
    otherwise: both events carry the configured ids, as every event a till reports does."""

    async def go(sim: SimServer) -> None:
        async with sim_client(sim.url) as client:
            await engine_check(
                client,
                "1000001",
                event_types=EngineConfig(preset="simulator").event_types,
                write=True,
                reaction_wait=2.0,
                till_id="till-07",
                branch_id="branch-0042",
            )

    with SimServer() as sim:
        asyncio.run(go(sim))
        sent = [e for e in sim.state.ledger.events if e["subject"] == ALICE]
    # The test spend, its duplicate-eventKey probe (taken by the simulator), and a refund of each.
    assert sorted(e["type"] for e in sent) == ["POINTS_REFUND"] * 2 + ["REDEEMED_POINTS"] * 2
    for event in sent:
        assert event["payload"]["tillId"] == "till-07" and event["payload"]["branchId"] == "branch-0042"


def test_engine_check_asks_test_reaction_for_the_spend_and_refund_reactors() -> None:
    """Issue 22, observation 4: with the redemption reactor missing, the engine accepts REDEEMED_POINTS
    and deducts nothing.  engine-check now asks test_reaction (no side effects) for both reactors."""

    async def go(sim: SimServer) -> dict[str, str]:
        async with sim_client(sim.url) as client:
            report = await engine_check(
                client,
                "1000001",
                event_types=EngineConfig(preset="simulator").event_types,
                write=False,
                till_id="till-07",
                branch_id="branch-0042",
            )
        return report.reactors

    with SimServer() as sim:
        assert asyncio.run(go(sim)) == {"REDEEMED_POINTS": "ok", "POINTS_REFUND": "ok", "POINTS_TAKEN_BACK": "ok"}
        sim.state.reactors["redemption"] = "missing"
        reactors = asyncio.run(go(sim))
        assert reactors["REDEEMED_POINTS"].startswith("MISSING") and reactors["POINTS_REFUND"] == "ok"
        sim.state.reactors |= {"redemption": "present", "take_back": "missing"}
        reactors = asyncio.run(go(sim))
    # Issue 25: a tenant with no take-back reactor would let a returned sale keep its points.
    assert reactors["POINTS_TAKEN_BACK"].startswith("MISSING") and reactors["REDEEMED_POINTS"] == "ok"
