"""POST /v1/returns through a whole virtual till (issue 25, part 1), as a POS developer would call it."""

from __future__ import annotations

from typing import Any

from tillplug.commands.virtual.till import VirtualTill

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"  # card 1000001, 1250 points


def sale(till: VirtualTill, tx: str) -> None:
    """30.00 of goods, 500 points (5.00) off, 25.00 paid: it earns 25 points."""
    assert till.api.post("/v1/checkouts", json={"transactionId": tx, "lane": 1}).status_code == 201
    assert till.api.put(f"/v1/checkouts/{tx}/member", json={"code": "1000001"}).status_code == 200
    assert till.api.post(f"/v1/checkouts/{tx}/points", json={"points": 500}).status_code == 200
    assert till.api.post(f"/v1/checkouts/{tx}/tender", json={}).status_code == 200
    basket = [{"sku": "SHIRT", "quantity": 2, "amount": 1500}, {"sku": "SOCKS", "quantity": 2, "amount": 1500}]
    completion = {"total": 2500, "basket": basket, "paymentConfirmed": True}
    done = till.api.post(f"/v1/checkouts/{tx}/complete", json=completion)
    assert done.status_code == 200, done.text
    assert till.settle()


def test_a_return_through_the_api_moves_the_points_once_prints_the_slip_and_tells_the_stream(tmp_path):
    with VirtualTill(tmp_path) as till:
        sale(till, "S1")
        body: dict[str, Any] = {
            "returnId": "RET-1",
            "transactionId": "S1",
            "lane": 1,
            "amount": 1500,
            "lines": [{"sku": "SHIRT", "quantity": 2, "amount": 1500}],
        }
        first = till.api.post("/v1/returns", json=body)
        assert first.status_code == 201, first.text
        answer = first.json()
        assert answer["giveBack"] == {"state": "applied", "policy": "proportion", "points": 250}
        assert answer["takeBack"]["state"] == "applied" and answer["takeBack"]["points"] == 15
        assert answer["balanceAfter"] == 1250 - 500 + 25 + 250 - 15
        assert till.wait_for(lambda: b"Points taken back" in till.printed(1))
        assert b"1,010 pts" in till.printed(1)

        again = till.api.post("/v1/returns", json=body)
        assert again.status_code == 201 and again.json() == answer
        keyed = {"Idempotency-Key": "k-1"}
        assert till.api.post("/v1/returns", json=body, headers=keyed).json() == answer
        replayed = till.api.post("/v1/returns", json=body, headers=keyed)
        assert replayed.headers["Idempotent-Replayed"] == "true"

        reused = till.api.post("/v1/returns", json={**body, "amount": 100, "lines": []})
        assert reused.status_code == 422 and reused.json()["error"]["code"] == "return_id_reused"
        past = till.api.post("/v1/returns", json={**body, "returnId": "RET-2", "amount": 1501, "lines": []})
        assert past.status_code == 409 and past.json()["error"]["code"] == "return_exceeds_sale"
        assert "at most £15.00" in past.json()["error"]["message"]
        unknown = till.api.post("/v1/returns", json={**body, "returnId": "RET-3", "transactionId": "NOPE"})
        assert unknown.status_code == 404 and "relay" in unknown.json()["error"]["message"]

        assert till.settle()
        ledger = till.ledger()
        moved = [e for e in ledger["events"] if e["type"] in ("POINTS_TAKEN_BACK", "POINTS_REFUND")]
        assert sorted((e["type"], e["points"]) for e in moved) == [("POINTS_REFUND", 250), ("POINTS_TAKEN_BACK", 15)]
        assert ledger["duplicates"] == {} and ledger["balances"][ALICE] == 1010
        [event] = [e for e in till.events() if e["type"] == "return"]
        assert event["data"]["returnId"] == "RET-1" and ALICE not in str(event) and "member" not in event["data"]


def test_a_return_made_while_the_sales_earn_waits_in_the_outbox_is_settled_once_the_engine_is_back(tmp_path):
    with VirtualTill(tmp_path) as till:
        assert till.api.post("/v1/checkouts", json={"transactionId": "S2", "lane": 1}).status_code == 201
        assert till.api.put("/v1/checkouts/S2/member", json={"code": "1000001"}).status_code == 200
        till.sim.sim.faults.update({"down": True})
        completion = {"total": 2000, "basket": [], "paymentConfirmed": True}
        assert till.api.post("/v1/checkouts/S2/complete", json=completion).status_code == 200
        body = {"returnId": "RET-9", "transactionId": "S2", "lane": 1, "amount": 1000}
        first = till.api.post("/v1/returns", json=body)
        assert first.status_code == 201, first.text
        assert first.json()["takeBack"]["state"] == "waiting" and first.json()["pointsEarned"] is None
        till.sim.sim.faults.update({"down": False})
        till.daemon.deliverer.wake()

        def settled() -> list[dict[str, Any]]:
            return [e for e in till.events() if e["type"] == "return_settled"]

        assert till.wait_for(lambda: bool(settled()), timeout=20), [e["type"] for e in till.events()]
        [event] = settled()
        assert event["data"]["takeBack"]["points"] == 10 and event["data"]["pointsEarned"] == 20
        assert till.settle()
        moved = [e for e in till.ledger()["events"] if e["type"] == "POINTS_TAKEN_BACK"]
        assert [e["points"] for e in moved] == [10]
        assert till.ledger()["balances"][ALICE] == 1250 + 20 - 10
