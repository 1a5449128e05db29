"""The relay in this process against the simulator and a real PostgreSQL: scope, guard, exactly once."""

import asyncio
import time
import uuid

import httpx

from tests.relay.conftest import bearer, relay_config, running
from tillplug.relay.store import Store
from tillplug.relay.tokens import Tokens

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"  # 1250 points in the seed
BOB = "5a1b2c3d-0000-4000-8000-000000000002"
ALICE_BENEFIT = "be000000-0000-4000-8000-000000000002"
BOB_BENEFIT = "be000000-0000-4000-8000-000000000007"


def run(coro):
    return asyncio.run(coro)


def event(type_: str, subject: str | None, **payload) -> dict:
    body = {
        "type": type_,
        "payload": {"eventKey": str(uuid.uuid4()), **payload},
        "occurredAt": "2026-12-07T12:00:00.000Z",
    }
    if subject:
        body["subject"] = subject
    return body


def ledger(sim) -> dict:
    return httpx.get(sim.url + "/_sim/ledger", timeout=10).json()


async def settle(parts, until, seconds: float = 10.0) -> None:
    """Run the relay's outbox until ``until()`` holds (bounded)."""
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "the relay's outbox did not get there in time"
        await parts.deliverer.pass_once()
        await asyncio.sleep(0.05)


def test_a_resent_earn_reaches_the_engine_once_and_a_changed_one_is_refused(sim, database):
    async def go():
        async with running(relay_config(sim.url, database), deliver=False) as (parts, http):
            token = await parts.tokens.enrol("T01", "B01")
            earn = event("TRANSACTION", ALICE, total=1234, transactionId="tx-1", tillId="FORGED")
            first = await http.post("/v1/events/", json=earn, headers=bearer(token))
            again = await http.post("/v1/events/", json=earn, headers=bearer(token))
            assert first.status_code == again.status_code == 200
            assert first.json()["data"]["id"] == again.json()["data"]["id"]
            changed = {**earn, "payload": {**earn["payload"], "total": 99999}}
            refused = await http.post("/v1/events/", json=changed, headers=bearer(token))
            assert refused.status_code == 409
            assert refused.json()["data"]["code"] == "duplicate_event"
            key = earn["payload"]["eventKey"]
            await settle(parts, lambda: any(e["eventKey"] == key for e in ledger(sim)["events"]))
            for _ in range(3):  # the outbox has nothing left to send it again
                await parts.deliverer.pass_once()
                await http.post("/v1/events/", json=earn, headers=bearer(token))
            sent = [e for e in ledger(sim)["events"] if e["eventKey"] == key]
            assert len(sent) == 1
            row = await parts.store.event(key)
            assert row["state"] == "delivered"
            assert row["body"]["payload"]["tillId"] == "T01"  # stamped with the till's own ids
            assert row["body"]["payload"]["branchId"] == "B01"
            assert row["body"]["executor"] == "T01"

    run(go())


def test_member_look_up_is_by_card_only_and_trimmed(sim, database, caplog):
    caplog.set_level("INFO", logger="tillplug.relay.calls")

    async def go():
        async with running(relay_config(sim.url, database)) as (parts, http):
            token = await parts.tokens.enrol("T01", "B01")
            h = bearer(token)
            assert (await http.get("/v1/users/", headers=h)).status_code == 403  # no listing
            assert (await http.get(f"/v1/users/{ALICE}/wallet", headers=h)).status_code == 403  # not looked up
            assert (await http.get("/v1/benefits/", headers=h)).status_code == 403  # no tenant-wide list
            found = await http.get("/v1/users/1000001", headers=h)
            assert found.status_code == 200
            user = found.json()["data"]
            assert user["id"] == ALICE
            assert set(user) <= {"id", "accountNumber", "authIdentifier", "isRestricted"}
            assert "member@example.invalid" not in found.text
            wallet = await http.get(f"/v1/users/{ALICE}/wallet", headers=h)
            assert wallet.json()["data"]["pointsBalance"] == 1250
            mine = await http.get(f"/v1/benefits/{ALICE_BENEFIT}", headers=h)
            assert mine.status_code == 200
            theirs = await http.get(f"/v1/benefits/{BOB_BENEFIT}", headers=h)  # Bob's: not looked up here
            assert theirs.status_code == 404
            redeem = await http.post("/v1/commands/redeem_benefit", json={"benefitId": BOB_BENEFIT}, headers=h)
            assert redeem.status_code == 404
            # Another till has not looked Alice up.
            other = await parts.tokens.enrol("T02", "B01")
            assert (await http.get(f"/v1/users/{ALICE}/wallet", headers=bearer(other))).status_code == 403

    run(go())
    # Every call is logged by till, naming the route, never the card or the member.
    lines = [r.getMessage() for r in caplog.records if r.name == "tillplug.relay.calls"]
    assert any("till=T01 branch=B01 GET /v1/users/{ident} -> 200" in line for line in lines)
    assert any("till=T02" in line and "-> 403" in line for line in lines)
    assert not any("1000001" in line or ALICE in line for line in lines)


def test_no_token_a_wrong_one_or_a_revoked_one_is_refused_within_5_s_everywhere(sim, database):
    async def go():
        config = relay_config(sim.url, database)
        async with running(config) as (parts, http):
            token = await parts.tokens.enrol("T01", "B01")
            assert (await http.get("/v1/users/1000001")).status_code == 401
            assert (await http.get("/v1/users/1000001", headers=bearer("tpr1.forged"))).status_code == 401
            assert (await http.get("/v1/users/1000001", headers=bearer(token))).status_code == 200
            # A second process's view of the tokens (its own cache), revoked from the first.
            other = Store(config.database)
            await other.open()
            try:
                replica = Tokens(other)
                assert (await replica.till(f"Bearer {token}")).till_id == "T01"
                assert await parts.tokens.revoke("T01")
                revoked_at = time.monotonic()
                while True:
                    try:
                        await replica.till(f"Bearer {token}")
                    except Exception as exc:
                        assert getattr(exc, "code", "") == "unauthorized"
                        break
                    assert time.monotonic() - revoked_at < 5
                    await asyncio.sleep(0.1)
            finally:
                await other.close()
            refused = await http.get("/v1/users/1000001", headers=bearer(token))
            assert refused.status_code == 401

    run(go())


def test_two_tills_spending_70_percent_of_one_member_at_once_never_both_keep_it(sim, database):
    async def go():
        async with running(relay_config(sim.url, database)) as (parts, http):
            tills = [await parts.tokens.enrol(f"T0{i}", "B01") for i in range(1, 6)]
            for token in tills:
                assert (await http.get(f"/v1/users/{ALICE}", headers=bearer(token))).status_code == 200
            spend = 875  # 70 % of 1250
            answers = await asyncio.gather(
                *(
                    http.post(
                        "/v1/events/",
                        json=event("REDEEMED_POINTS", ALICE, points=spend, transactionId=f"tx-{i}"),
                        headers=bearer(token),
                    )
                    for i, token in enumerate(tills)
                )
            )
            statuses = sorted(a.status_code for a in answers)
            assert statuses.count(200) == 1, [a.text for a in answers]
            refused = [a.json()["data"]["code"] for a in answers if a.status_code != 200]
            assert set(refused) <= {"insufficient_points", "spend_in_progress"}
            assert "insufficient_points" in refused
            await asyncio.sleep(0.3)  # the simulator applies reactions a moment later
            assert ledger(sim)["balances"][ALICE] == 1250 - spend
            spends = [e for e in ledger(sim)["events"] if e["type"] == "REDEEMED_POINTS"]
            assert len(spends) == 1

    run(go())


def test_a_refund_only_for_a_known_deduction_and_never_more(sim, database):
    async def go():
        async with running(relay_config(sim.url, database), deliver=False) as (parts, http):
            token = await parts.tokens.enrol("T01", "B01")
            h = bearer(token)
            await http.get(f"/v1/users/{ALICE}", headers=h)
            spend = event("REDEEMED_POINTS", ALICE, points=200, transactionId="tx-9")
            assert (await http.post("/v1/events/", json=spend, headers=h)).status_code == 200
            key = spend["payload"]["eventKey"]
            before = ledger(sim)
            too_much = event("POINTS_REFUND", ALICE, points=201, reverses=key, transactionId="tx-9")
            answer = await http.post("/v1/events/", json=too_much, headers=h)
            assert answer.status_code == 422
            assert answer.json()["data"]["code"] == "refund_exceeds_deduction"
            unknown = event("POINTS_REFUND", ALICE, points=10, reverses=str(uuid.uuid4()), transactionId="tx-9")
            assert (await http.post("/v1/events/", json=unknown, headers=h)).status_code == 422
            foreign = event("POINTS_REFUND", BOB, points=10, reverses=key, transactionId="tx-9")
            assert (await http.post("/v1/events/", json=foreign, headers=h)).status_code == 422
            half = event("POINTS_REFUND", ALICE, points=150, reverses=key, transactionId="tx-9")
            assert (await http.post("/v1/events/", json=half, headers=h)).status_code == 200
            assert (await http.post("/v1/events/", json=half, headers=h)).status_code == 200  # a resend
            rest = event("POINTS_REFUND", ALICE, points=51, reverses=key, transactionId="tx-9")
            assert (await http.post("/v1/events/", json=rest, headers=h)).status_code == 422
            # A return at another till of the chain may give back what is left, no more.
            other = await parts.tokens.enrol("T02", "B02")
            rest = event("POINTS_REFUND", ALICE, points=50, reverses=key, transactionId="tx-9")
            assert (await http.post("/v1/events/", json=rest, headers=bearer(other))).status_code == 200
            row = await parts.store.event(key)
            assert row["refunded"] == 200
            assert ledger(sim)["events"] == before["events"]  # nothing reached the engine from the refusals
            await settle(
                parts, lambda: sum(e["type"] == "POINTS_REFUND" for e in ledger(sim)["events"]) == 2, seconds=10
            )

    run(go())


def test_bad_input_is_refused_and_changes_nothing(sim, database):
    async def go():
        async with running(relay_config(sim.url, database), deliver=False) as (parts, http):
            token = await parts.tokens.enrol("T01", "B01")
            h = bearer(token)
            huge = await http.post("/v1/events/", content=b"{" + b" " * 70000 + b"}", headers=h)
            assert huge.status_code == 413
            assert (await http.post("/v1/events/", content=b"not json", headers=h)).status_code == 400
            no_key = {"type": "TRANSACTION", "payload": {"total": 1}}
            assert (await http.post("/v1/events/", json=no_key, headers=h)).status_code == 400
            # A spend for a member this till never looked up (a foreign member).
            foreign = event("REDEEMED_POINTS", BOB, points=10, transactionId="tx-1")
            assert (await http.post("/v1/events/", json=foreign, headers=h)).status_code == 403
            assert await parts.store.counts() == {}
            assert ledger(sim)["events"] == []

    run(go())


def test_the_chain_bucket_answers_429_with_retry_after_before_the_engine_is_called(sim, database):
    async def go():
        config = relay_config(sim.url, database, pacing={"rate": 0.2, "burst": 2, "max_wait": 0})
        async with running(config, deliver=False) as (parts, http):
            token = await parts.tokens.enrol("T01", "B01")
            statuses = []
            for _ in range(4):
                answer = await http.get("/v1/users/1000001", headers=bearer(token))
                statuses.append(answer.status_code)
                if answer.status_code == 429:
                    assert int(answer.headers["Retry-After"]) >= 1
                    assert answer.json()["data"]["code"] == "rate_limited"
            assert 429 in statuses
            assert parts.transport.engine_429s == 0

    run(go())


def test_a_member_looked_up_long_ago_is_no_longer_this_tills_and_is_pruned(sim, database):
    async def go():
        async with running(relay_config(sim.url, database), deliver=False) as (parts, http):
            token = await parts.tokens.enrol("T01", "B01")
            assert (await http.get(f"/v1/users/{ALICE}", headers=bearer(token))).status_code == 200
            assert (await http.get(f"/v1/users/{ALICE}/wallet", headers=bearer(token))).status_code == 200
            await parts.store.execute("UPDATE members_seen SET seen_at = seen_at - interval '13 hours'")
            assert (await http.get(f"/v1/users/{ALICE}/wallet", headers=bearer(token))).status_code == 403
            assert await parts.deliverer.prune() >= 1
            assert await parts.store.fetchall("SELECT * FROM members_seen") == []

    run(go())
