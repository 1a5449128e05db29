"""Returns at any till of the chain: the relay's sale facts, its return register and its points caps."""

import asyncio
import time
import uuid

import httpx

from tests.relay.conftest import bearer, relay_config, running

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"  # 1250 points in the seed
BOB = "5a1b2c3d-0000-4000-8000-000000000002"
BASKET = [{"sku": "SHIRT", "quantity": 2, "amount": 1500}, {"sku": "SOCKS", "quantity": 2, "amount": 1500}]


def event(type_: str, subject: str | None, **payload) -> dict:
    body = {"type": type_, "payload": {"eventKey": str(uuid.uuid4()), **payload}}
    if subject:
        body["subject"] = subject
    return body


def ledger(sim) -> dict:
    return httpx.get(sim.url + "/_sim/ledger", timeout=10).json()


async def until(parts, check, seconds: float = 15.0):
    """Run the relay's outbox until ``check()`` gives something true (bounded); that value."""
    deadline = time.monotonic() + seconds
    while not (value := await check()):
        assert time.monotonic() < deadline, "not there in time"
        await parts.deliverer.pass_once()
        await asyncio.sleep(0.05)
    return value


async def a_sale_at(http, token: str, tx: str, points: int = 500) -> str:
    """30.00 of goods, 500 points (5.00) off, 25.00 paid (it earns 25 points); the earn's eventKey."""
    assert (await http.get(f"/v1/users/{ALICE}", headers=bearer(token))).status_code == 200
    spend = event("REDEEMED_POINTS", ALICE, points=points, value=points, currency="GBP", transactionId=tx)
    assert (await http.post("/v1/events/", json=spend, headers=bearer(token))).status_code == 200
    earn = event("TRANSACTION", ALICE, total=2500, currency="GBP", basket=BASKET, transactionId=tx, pointsRedeemed=500)
    assert (await http.post("/v1/events/", json=earn, headers=bearer(token))).status_code == 200
    return str(earn["payload"]["eventKey"])


async def known(parts, http, token: str, tx: str) -> dict:
    """The sale as the relay reports it, once it has read the points the earn earned."""

    async def check():
        answer = await http.get(f"/relay/v1/sales/{tx}", headers=bearer(token))
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        return data if data["earn"]["state"] == "known" else None

    return await until(parts, check)


def test_the_chains_returns_of_a_sale_are_registered_once_and_never_past_it(sim, database):
    async def go():
        async with running(relay_config(sim.url, database), deliver=False) as (parts, http):
            a, b = await parts.tokens.enrol("T01", "B01"), await parts.tokens.enrol("T02", "B02")
            earn_key = await a_sale_at(http, a, "S1")
            sale = await known(parts, http, b, "S1")
            assert sale["member"] == ALICE
            assert sale["earn"] == {"eventKey": earn_key, "state": "known", "points": 25, "reason": None}
            assert (sale["paid"], sale["spent"], sale["gross"], sale["returns"]) == (2500, 500, 3000, [])
            assert set(sale) == {  # amounts and the member's id: nothing personal
                "transactionId", "member", "currency", "paid", "spent", "gross", "basket", "earn", "returns",
                "registered", "givenBack", "takenBack",
            }  # fmt: skip

            # Half at till B (the shirts), the other half at till A (the socks): one register for the chain.
            shirts = {"returnId": "R1", "amount": 1500, "lines": [BASKET[0]]}
            at_b = await http.post("/relay/v1/sales/S1/returns", json=shirts, headers=bearer(b))
            assert at_b.status_code == 200, at_b.text
            assert at_b.json()["data"]["registered"] == 0
            again = await http.post("/relay/v1/sales/S1/returns", json=shirts, headers=bearer(b))
            assert again.json()["data"]["registered"] == 0 and len(again.json()["data"]["returns"]) == 1
            reused = await http.post("/relay/v1/sales/S1/returns", json={**shirts, "amount": 10}, headers=bearer(b))
            assert reused.status_code == 422 and reused.json()["data"]["code"] == "return_id_reused"
            more_shirts = {"returnId": "R9", "amount": 100, "lines": [{**BASKET[0], "quantity": 1, "amount": 100}]}
            past_sku = await http.post("/relay/v1/sales/S1/returns", json=more_shirts, headers=bearer(a))
            assert past_sku.status_code == 409 and past_sku.json()["data"]["code"] == "return_exceeds_sale"
            socks = {"returnId": "R1", "amount": 1500, "lines": [BASKET[1]]}  # A's own R1: ids are per till
            at_a = await http.post("/relay/v1/sales/S1/returns", json=socks, headers=bearer(a))
            assert at_a.status_code == 200 and at_a.json()["data"]["registered"] == 1
            for token in (a, b):
                past = await http.post(
                    "/relay/v1/sales/S1/returns", json={"returnId": "R2", "amount": 1}, headers=bearer(token)
                )
                assert past.status_code == 409, past.text
                assert past.json()["data"]["code"] == "return_exceeds_sale"
                assert "at most £0.00" in past.json()["message"]
            nothing = await http.get("/relay/v1/sales/NOPE", headers=bearer(b))
            assert nothing.status_code == 404 and nothing.json()["data"]["code"] == "sale_not_found"

    asyncio.run(go())


def test_a_returns_points_moves_stay_within_what_the_chain_reported_across_tills(sim, database):
    async def go():
        async with running(relay_config(sim.url, database), deliver=False) as (parts, http):
            a, b = await parts.tokens.enrol("T01", "B01"), await parts.tokens.enrol("T02", "B02")
            earn_key = await a_sale_at(http, a, "S1")
            await known(parts, http, b, "S1")

            # Given back ≤ spent (500), taken back ≤ earned (25), counted across the tills.
            def move(type_: str, points: int, return_id: str, **extra) -> dict:
                return event(type_, ALICE, transactionId="S1", returnId=return_id, points=points, **extra)

            async def send(token: str, body: dict) -> httpx.Response:
                return await http.post("/v1/events/", json=body, headers=bearer(token))

            given_b = move("POINTS_REFUND", 250, "R1")
            assert (await send(b, given_b)).status_code == 200
            assert (await send(b, given_b)).status_code == 200  # a resend: answered as the first time
            assert (await send(b, move("POINTS_TAKEN_BACK", 15, "R1", reverses=earn_key))).status_code == 200
            too_much = await send(a, move("POINTS_REFUND", 251, "R1"))
            assert too_much.status_code == 422 and too_much.json()["data"]["code"] == "points_exceed_sale"
            assert "Only 250 points" in too_much.json()["message"]
            assert (await send(a, move("POINTS_REFUND", 250, "R1"))).status_code == 200
            over_take = await send(a, move("POINTS_TAKEN_BACK", 11, "R1", reverses=earn_key))
            assert over_take.status_code == 422 and over_take.json()["data"]["code"] == "points_exceed_sale"
            assert (await send(a, move("POINTS_TAKEN_BACK", 10, "R1", reverses=earn_key))).status_code == 200
            bob = await send(b, {**move("POINTS_REFUND", 1, "R3"), "subject": BOB})
            assert bob.status_code == 403  # another member than the sale's

            async def delivered():
                moves = [e for e in ledger(sim)["events"] if e["type"] in ("POINTS_REFUND", "POINTS_TAKEN_BACK")]
                return len(moves) == 4

            await until(parts, delivered)
            await asyncio.sleep(0.3)  # the simulator applies reactions a moment later
            # 1250 - 500 spent + 25 earned, then every point of it moved back exactly once.
            assert ledger(sim)["balances"][ALICE] == 1250
            assert not ledger(sim)["duplicates"]
            final = (await http.get("/relay/v1/sales/S1", headers=bearer(a))).json()["data"]
            assert (final["givenBack"], final["takenBack"]) == (500, 25)

    asyncio.run(go())


def test_a_till_may_not_look_past_the_chain_or_without_its_token(sim, database):
    async def go():
        async with running(relay_config(sim.url, database), deliver=False) as (parts, http):
            a = await parts.tokens.enrol("T01", "B01")
            await a_sale_at(http, a, "S2")
            assert (await http.get("/relay/v1/sales/S2")).status_code == 401
            bad = await http.post("/relay/v1/sales/S2/returns", json={"returnId": "R1", "amount": 0}, headers=bearer(a))
            assert bad.status_code == 400 and "amount" in bad.json()["message"]
            # Two tills reporting one transaction id: no return by it at another till.
            b = await parts.tokens.enrol("T02", "B02")
            await a_sale_at(http, b, "S2", points=100)  # within what the guard leaves of Alice
            twice = await http.get("/relay/v1/sales/S2", headers=bearer(b))
            assert twice.status_code == 404 and "More than one till" in twice.json()["message"]

    asyncio.run(go())
