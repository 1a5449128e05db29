"""The relay against each of the simulator's dialects as WLL: exactly once, spends settled by look-up."""

import asyncio
import json
import time
import uuid

import httpx
import pytest

from tests.relay.conftest import bearer, relay_config, running
from tillplug.sim import SimServer
from tillplug.sim.dialects import DIALECTS

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_every_dialect_gets_each_event_once_and_each_spend_settled(name, database, tmp_path):
    dialect_file = tmp_path / "dialect.json"  # what engine-check finds this dialect to do
    dialect_file.write_text(json.dumps({"version": 1, "answers": DIALECTS[name].answers().to_dict()}))

    async def go(sim):
        config = relay_config(sim.url, database, engine={"dialect_file": str(dialect_file)})
        async with running(config, deliver=False) as (parts, http):
            token = await parts.tokens.enrol("T01", "B01")
            h = bearer(token)
            assert (await http.get("/v1/users/1000001", headers=h)).status_code == 200
            earn = {"type": "TRANSACTION", "subject": ALICE, "payload": {"eventKey": str(uuid.uuid4()), "total": 900}}
            assert (await http.post("/v1/events/", json=earn, headers=h)).status_code == 200
            spend_key = str(uuid.uuid4())
            spend = {"type": "REDEEMED_POINTS", "subject": ALICE, "payload": {"eventKey": spend_key, "points": 100}}
            answer = await http.post("/v1/events/", json=spend, headers=h)
            assert answer.status_code in (200, 504), answer.text  # 504: WLL's answer unreadable (hostile)
            lookup = f"/v1/events/?filter[payload.eventKey]={spend_key}"
            deadline = time.monotonic() + 40
            while True:
                await parts.deliverer.pass_once()
                ledger = httpx.get(sim.url + "/_sim/ledger", timeout=10).json()
                found = await http.get(lookup, headers=h)
                earned = [e for e in ledger["events"] if e["eventKey"] == earn["payload"]["eventKey"]]
                if earned and found.status_code == 200 and found.json()["data"]:
                    break
                assert time.monotonic() < deadline, (name, await parts.store.counts())
                await asyncio.sleep(0.2)
            for _ in range(3):  # nothing left that would send either of them again
                await parts.deliverer.pass_once()
            ledger = httpx.get(sim.url + "/_sim/ledger", timeout=10).json()
            assert [e["eventKey"] for e in ledger["events"]].count(earn["payload"]["eventKey"]) == 1
            assert [e["eventKey"] for e in ledger["events"]].count(spend_key) == 1
            assert not ledger["duplicates"]

    with SimServer(dialect=name) as sim:
        asyncio.run(go(sim))
