"""engine-check and the money of issue 22: its events carry the till and branch ids, it checks the reactors."""

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.engine_helpers import sim_client
from tillplug.commands.engine_check import engine_check
from tillplug.commands.virtual.till import VirtualTill
from tillplug.config.model import EngineConfig
from tillplug.engine.dialect import EngineDialect, read_test_member, write_dialect_file
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


def _dialect_file_from_engine_check(sim: SimServer, path: Path) -> None:
    async def go() -> None:
        async with sim_client(sim.url) as client:
            report = await engine_check(
                client,
                "1000001",
                event_types=EngineConfig(preset="simulator").event_types,
                write=False,
                till_id="till-07",
                branch_id="branch-0042",
            )
        write_dialect_file(path, report.dialect(), {}, test_member=report.test_member)

    asyncio.run(go())


def _health_problems(till: VirtualTill) -> dict[str, str]:
    return {p["code"]: p["message"] for p in till.api.get("/v1/health").json()["problems"]}


def test_a_missing_redemption_reactor_is_a_health_problem_from_the_daemons_start(tmp_path: Path) -> None:
    """Issue 22, observation 4 / "reactor sanity": with the redemption reactor missing the engine takes
    REDEEMED_POINTS and deducts nothing, so a discount is given that the member never pays for.  Where
    engine-check stored its test member, the daemon asks test_reaction at start and health says so before
    any shopper spends; with the reactors in order it says nothing."""
    dialect = tmp_path / "dialect.json"
    with SimServer() as sim:
        _dialect_file_from_engine_check(sim, dialect)
        assert read_test_member(dialect) == ALICE
        asked: list[str] = []
        answer = sim.state.test_reaction

        def counted(body: dict[str, Any]) -> list[dict[str, Any]]:
            asked.append(body["type"])
            return answer(body)

        sim.state.test_reaction = counted  # type: ignore[method-assign]
        engine = {
            "preset": "simulator",
            "base_url": sim.url + "/v1",
            "auth_url": sim.url + "/oauth/token",
            "receipts_url": sim.url + "/receipts/v1",
            "dialect_file": str(dialect),
        }
        with VirtualTill(tmp_path / "good", sim=sim, engine=engine) as till:
            assert till.wait_for(lambda: len(asked) == 3)
            assert sorted(asked) == ["POINTS_REFUND", "POINTS_TAKEN_BACK", "REDEEMED_POINTS"]
            assert till.wait_for(lambda: till.daemon.loyalty.points.problems == {} and len(asked) == 3)
            assert "reactor_missing" not in _health_problems(till)
        sim.state.reactors["redemption"] = "missing"
        with VirtualTill(tmp_path / "bad", sim=sim, engine=engine) as till:
            assert till.wait_for(lambda: "reactor_missing" in _health_problems(till))
            message = _health_problems(till)["reactor_missing"]
    assert "REDEEMED_POINTS" in message and "discount" in message


def test_without_a_stored_test_member_the_daemon_asks_no_reactor_at_start(tmp_path: Path) -> None:
    """A dialect file from before this check (no test member) or none at all: nothing is asked at
    start; the first spend's reactions are checked instead."""
    dialect = tmp_path / "dialect.json"
    write_dialect_file(dialect, EngineDialect(), {})
    assert read_test_member(dialect) is None and read_test_member(None) is None
    dialect.write_text(json.dumps({"version": 1, "answers": {}, "testMember": "x/../../etc"}))
    assert read_test_member(dialect) is None  # only an id is ever sent as an event's subject
