"""End to end, exactly as a till drives it: pty scanner, capture printer, HTTP API, simulator."""

import json
import re
import threading

import httpx
import pytest

from tillplug.commands.virtual.till import VirtualTill, poll_until
from tillplug.sim import SimServer

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"
BOB = "5a1b2c3d-0000-4000-8000-000000000002"


@pytest.fixture
def till(tmp_path):
    with VirtualTill(tmp_path / "till", lanes=2) as t:
        yield t


def of_type(till, kind):
    return [e for e in till.events() if e["type"] == kind]


def open_with_member(till, tx, lane=1, member="1000001"):
    assert (
        till.api.post("/v1/checkouts", json={"transactionId": tx, "lane": lane, "cashierId": "c-7"}).status_code == 201
    )
    r = till.api.put(f"/v1/checkouts/{tx}/member", json={"code": member})
    assert r.status_code == 200, r.text
    return r.json()


def balance(till, member=ALICE):
    return till.sim.state.members[member]["pointsBalance"]


def test_member_scan_without_checkout_is_a_balance_lookup_with_a_slip(till):
    till.scan(1, "1000001")
    assert till.wait_for(lambda: of_type(till, "member_found"))
    found = of_type(till, "member_found")[0]
    assert found["lane"] == 1 and found["data"]["pointsBalance"] == 1250
    assert found["data"]["member"] == "…0001"  # masked, never the id
    assert ALICE not in json.dumps(till.events())
    assert till.wait_for(lambda: b"1,250 pts" in till.printed(1))
    assert till.printed(2) == b""  # the slip goes to the scanning lane's printer


def test_member_scan_with_an_open_checkout_attaches_the_member(till):
    till.api.post("/v1/checkouts", json={"transactionId": "T1", "lane": 2})
    till.scan(2, "MBR:auth-alice")
    assert till.wait_for(lambda: of_type(till, "member_attached"))
    assert till.api.get("/v1/checkouts/T1").json()["member"] == "…0001"


def test_other_scans_go_to_the_till_on_the_event_stream(till):
    with httpx.stream("GET", till.url + "/v1/events", timeout=10) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith(": tillplug")
        till.scan(1, "]E04006381333931")
        got = []
        for line in lines:
            if line.startswith("data: "):
                got.append(json.loads(line[6:]))
                break
    assert got[0]["type"] == "scan" and got[0]["data"]["kind"] == "other"
    assert got[0]["data"]["gtin"] == "4006381333931" and got[0]["data"]["symbology"] == "]E0"


def test_local_pool_codes_never_reach_the_engine(till):
    open_with_member(till, "T2")
    r = till.api.post("/v1/checkouts/T2/vouchers", json={"code": "LOCAL-AB12"})
    assert r.json() == {"transactionId": "T2", "kind": "local_pool", "code": "LOCAL-AB12"}
    till.scan(1, "LOCAL-ZZ99")
    assert till.wait_for(lambda: any(e["data"].get("kind") == "local_pool" for e in of_type(till, "scan")))
    assert till.sim.sim.requests_for("LOCAL") == 0


def test_earning_on_completion_sends_a_transaction_without_personal_data(till):
    open_with_member(till, "T3")
    r = till.api.post(
        "/v1/checkouts/T3/complete",
        json={
            "total": 2550,
            "paymentConfirmed": True,
            "basket": [
                {"sku": "MILK-1L", "quantity": 2, "amount": 250},
                {"sku": "BREAD", "quantity": 1, "amount": 2300},
            ],
        },
    )
    assert r.status_code == 200 and r.json()["expectedPoints"] == 25
    assert till.settle()
    [event] = [e for e in till.sim.state.ledger.events if e["type"] == "TRANSACTION"]
    p = event["payload"]
    assert (p["transactionId"], p["total"], p["currency"], p["tillId"], p["branchId"], p["cashierId"]) == (
        "T3",
        2550,
        "GBP",
        "till-01",
        "branch-0001",
        "c-7",
    )
    assert p["basket"][0] == {"sku": "MILK-1L", "quantity": 2, "amount": 250}
    text = json.dumps(p)
    for pii in ("Sam", "Member", "example.invalid", "auth-alice"):
        assert pii not in text
    assert balance(till) == 1275
    assert till.wait_for(lambda: b"25 pts" in till.printed(1))  # the sale summary slip, printed by the spool


def test_spending_points_reports_before_completion_and_void_refunds_exactly_once(till):
    open_with_member(till, "T4")
    r = till.api.post("/v1/checkouts/T4/points", json={"points": 500})
    assert r.status_code == 200
    body = r.json()
    assert body["discount"] == {"amount": 500, "currency": "GBP"} and body["balanceAfter"] == 750
    assert balance(till) == 750  # taken before the sale completes
    assert till.api.post("/v1/checkouts/T4/void").json()["pointsRefunded"] == 500
    assert till.api.post("/v1/checkouts/T4/void").status_code == 409  # a second void changes nothing
    assert till.settle()
    assert balance(till) == 1250
    refunds = [e for e in till.sim.state.ledger.events if e["type"] == "POINTS_REFUND"]
    assert len(refunds) == 1 and refunds[0]["payload"]["points"] == 500


def test_redeeming_more_points_than_the_balance_is_refused(till):
    open_with_member(till, "T5", member="1000002")  # Bob has 300
    r = till.api.post("/v1/checkouts/T5/points", json={"points": 301})
    assert r.status_code == 409 and r.json()["error"]["code"] == "insufficient_points"
    assert [e for e in till.sim.state.ledger.events if e["type"] == "REDEEMED_POINTS"] == []


def test_user_led_voucher_burns_and_prints_a_receipt(till):
    open_with_member(till, "T6")
    r = till.api.post("/v1/checkouts/T6/vouchers", json={"code": "ALICE-5OFF-0001"})
    assert r.status_code == 200
    assert r.json()["discounts"] == [{"type": "ABSOLUTE", "value": 500.0}] and r.json()["burned"] is True
    assert till.wait_for(lambda: b"ALICE-5OFF-0001" in till.printed(1))
    r = till.api.post("/v1/checkouts/T6/vouchers", json={"code": "ALICE-OLD-0004"})
    assert r.status_code == 410 and r.json()["error"]["code"] == "voucher_expired"


def test_check_then_burn_burns_at_tender_before_payment_never_after(tmp_path):
    """Observation 10: a checked voucher is burned by tender (before payment); completion refuses without it."""
    with VirtualTill(tmp_path / "t", voucher_mode="check_then_burn") as till:
        open_with_member(till, "T7")
        r = till.api.post("/v1/checkouts/T7/vouchers", json={"code": "ALICE-5OFF-0001"})
        assert r.json()["burned"] is False and till.sim.state.ledger.burns == []
        r = till.api.post("/v1/checkouts/T7/complete", json={"total": 100, "paymentConfirmed": True})
        assert r.status_code == 409 and r.json()["error"]["code"] == "vouchers_not_tendered"
        assert till.sim.state.ledger.burns == []  # never burned after payment
        r = till.api.post("/v1/checkouts/T7/tender")
        assert r.status_code == 200 and r.json()["burned"] == ["ALICE-5OFF-0001"] and r.json()["ready"]
        till.api.post("/v1/checkouts/T7/complete", json={"total": 100, "paymentConfirmed": True})
        assert [b["code"] for b in till.sim.state.ledger.burns] == ["ALICE-5OFF-0001"]


def test_cashier_led_voucher_list_pick_redeem(till):
    open_with_member(till, "T8")
    benefits = till.api.get("/v1/checkouts/T8/benefits").json()["benefits"]
    pick = next(b for b in benefits if b["name"] == "10% off everything")
    assert pick["state"] == "created" and pick["code"] is None
    r = till.api.post(f"/v1/checkouts/T8/benefits/{pick['id']}/redeem", json={})
    assert r.status_code == 200, r.text
    assert r.json()["discounts"] == [{"type": "PERCENTAGE", "value": 10.0}] and r.json()["burned"]
    assert till.sim.state.benefits[pick["id"]]["burnedAt"] is not None


def race(tills, path, body):
    """The same request from several tills at the same moment."""
    results = {}

    def go(name, t):
        results[name] = t.api.post(path, json=body)

    threads = [threading.Thread(target=go, args=(n, t)) for n, t in enumerate(tills)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    return results


def test_the_same_voucher_on_two_tills_at_once_one_wins(tmp_path):
    with (
        SimServer() as sim,
        VirtualTill(tmp_path / "a", sim=sim) as a,
        VirtualTill(tmp_path / "b", sim=sim, till_id="till-02") as b,
    ):
        for t in (a, b):
            open_with_member(t, "TX")
        results = race((a, b), "/v1/checkouts/TX/vouchers", {"code": "ALICE-5OFF-0001"})
        codes = sorted(r.status_code for r in results.values())
        assert codes == [200, 409]
        loser = next(r for r in results.values() if r.status_code == 409)
        assert loser.json()["error"]["code"] == "voucher_already_used"


def test_the_same_points_on_two_tills_at_once_never_exceed_the_balance(tmp_path):
    with (
        SimServer() as sim,
        VirtualTill(tmp_path / "a", sim=sim) as a,
        VirtualTill(tmp_path / "b", sim=sim, till_id="till-02") as b,
    ):
        for t in (a, b):
            open_with_member(t, "TP")
        results = race((a, b), "/v1/checkouts/TP/points", {"points": 1000})
        granted = [r for r in results.values() if r.status_code == 200]
        refused = [r for r in results.values() if r.status_code != 200]
        assert all(r.json()["error"]["code"] == "insufficient_points" for r in refused)
        assert sum(r.json()["points"] for r in granted) <= 1250
        assert a.settle() and b.settle()
        assert sim.state.members[ALICE]["pointsBalance"] == 1250 - 1000 * len(granted)
        assert sim.state.members[ALICE]["pointsBalance"] >= 0


@pytest.mark.parametrize(
    "method, path, body, status, code",
    [
        ("post", "/v1/checkouts", {"transactionId": 5}, 400, "invalid_request"),
        ("post", "/v1/checkouts", {"transactionId": "has space"}, 400, "invalid_request"),
        ("post", "/v1/checkouts/OPEN/points", {"points": -5}, 400, "invalid_request"),
        ("post", "/v1/checkouts/OPEN/points", {"points": "500"}, 400, "invalid_request"),
        ("post", "/v1/checkouts/OPEN/points", {"points": 10, "extra": 1}, 400, "invalid_request"),
        ("post", "/v1/checkouts/NOPE/points", {"points": 10}, 404, "checkout_not_found"),
        ("post", "/v1/checkouts/OPEN/complete", {"total": 100, "paymentConfirmed": False}, 400, "invalid_request"),
        ("post", "/v1/checkouts/DONE/complete", {"total": 100, "paymentConfirmed": True}, 409, "checkout_conflict"),
        ("post", "/v1/checkouts/DONE/void", None, 409, "checkout_conflict"),
        ("get", "/v1/checkouts/NOPE", None, 404, "checkout_not_found"),
        ("get", "/v1/members/9999999", None, 404, "member_not_found"),
        ("get", "/v1/no-such-path", None, 404, "not_found"),
        ("delete", "/v1/checkouts/OPEN", None, 405, "method_not_allowed"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_stable_code_and_change_nothing(till, method, path, body, status, code):
    open_with_member(till, "OPEN")
    open_with_member(till, "DONE")
    assert till.api.post("/v1/checkouts/DONE/complete", json={"total": 1, "paymentConfirmed": True}).status_code == 200
    assert till.settle()
    ledger_before = len(till.sim.state.ledger.events)
    outbox_before = till.daemon.store.stats().to_dict()
    r = till.api.request(
        method.upper(),
        path,
        content=json.dumps(body) if body is not None else None,
        headers={"Content-Type": "application/json"} if body is not None else None,
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    assert len(till.sim.state.ledger.events) == ledger_before
    assert till.daemon.store.stats().to_dict()["pending"] == outbox_before["pending"]


def test_garbage_on_the_serial_line_does_not_stop_the_scanner(till):
    till.scanners[1].scan("\x00\xff\x1b[2J", terminator=b"\r\n")
    till.scan(1, "1000001")
    assert till.wait_for(lambda: of_type(till, "member_found"))


def test_engine_down_during_lookup_gives_a_clear_error(till):
    till.sim.sim.faults.update({"down": True})
    r = till.api.get("/v1/members/1000001")
    assert r.status_code == 502 and r.json()["error"]["code"] == "engine_error"


def test_health_and_openapi(till):
    health = till.api.get("/v1/health").json()
    assert health["status"] == "ok"
    assert {d["name"] for d in health["devices"]} == {"scanner1", "scanner2", "printer1", "printer2"}
    doc = till.api.get("/v1/openapi.json").json()
    assert "/v1/checkouts/{tx}/points" in doc["paths"]


def test_outbox_over_its_bounds_tells_the_till_loudly_and_still_queues_sales(tmp_path, caplog):
    with VirtualTill(tmp_path / "t", outbox={"max_rows": 100, "rate_per_second": 50, "burst": 50}) as till:
        till.sim.sim.faults.update({"down": True})
        from tillplug.engine.models import new_event_key

        for i in range(100):
            key = new_event_key()
            till.daemon.store.add(
                kind="event",
                stream=f"old-{i}",
                event_key=key,
                body={"type": "TRANSACTION", "payload": {"eventKey": key, "total": 1}},
            )
        assert till.call(till.daemon.check_outbox_limits()) is True
        assert till.api.get("/v1/health").json()["outbox"]["overLimit"] is True
        assert any(e["data"].get("code") == "outbox_over_limit" for e in of_type(till, "error"))
        assert "outbox over its limits" in caplog.text
        till.api.post("/v1/checkouts", json={"transactionId": "NEW"})
        assert (
            till.api.post("/v1/checkouts/NEW/complete", json={"total": 5, "paymentConfirmed": True}).status_code == 200
        )
        assert till.daemon.store.stats().depth == 101  # nothing dropped
        till.sim.sim.faults.update({"down": False})
        till.daemon.deliverer.wake()
        assert till.settle(timeout=30)
        assert len(till.sim.state.ledger.events) == 101


def test_a_void_queued_during_an_outage_is_delivered_after_recovery_after_its_deduction(till):
    open_with_member(till, "TV")
    assert till.api.post("/v1/checkouts/TV/points", json={"points": 300}).status_code == 200
    till.sim.sim.faults.update({"down": True})
    r = till.api.post("/v1/checkouts/TV/void")
    assert r.status_code == 200 and r.json()["pointsRefunded"] == 300  # durable now, delivered later
    # The refund was tried against the dead engine (and kept), not merely not tried yet.
    assert till.wait_for(lambda: any(row.attempts > 0 for row in till.daemon.store.rows("pending")), 10)
    assert [e["type"] for e in till.sim.state.ledger.events] == ["REDEEMED_POINTS"]
    till.sim.sim.faults.update({"down": False})
    till.daemon.deliverer.wake()
    assert till.settle(timeout=30)
    assert [e["type"] for e in till.sim.state.ledger.events] == ["REDEEMED_POINTS", "POINTS_REFUND"]
    assert balance(till) == 1250


def test_a_deduction_interrupted_by_a_crash_is_settled_at_restart(tmp_path):
    """Power cut mid-spend: at restart, the deduction is refunded if it reached the engine, and only then."""
    import asyncio

    from tests.engine_helpers import sim_client
    from tillplug.engine.models import EventDefinition
    from tillplug.flows.checkouts import Deduction

    with SimServer() as sim:
        with VirtualTill(tmp_path / "t", sim=sim) as till:
            open_with_member(till, "TC")
            store = till.daemon.loyalty.checkouts
            with store.transaction() as tx:  # the rows a crash leaves behind
                store.add_deduction(tx, Deduction("landed-key", "TC", 200, 200, "sending"))
                store.add_deduction(tx, Deduction("lost-key", "TC", 100, 100, "sending"))

            async def landed():
                async with sim_client(sim.url) as c:
                    await c.report_event(
                        EventDefinition(
                            type="REDEEMED_POINTS", subject=ALICE, payload={"points": 200, "eventKey": "landed-key"}
                        )
                    )

            asyncio.run(landed())
        assert poll_until(lambda: sim.state.reactions_due == 0, 10)
        assert sim.state.members[ALICE]["pointsBalance"] == 1050
        with VirtualTill(tmp_path / "t", sim=sim) as till:  # restart on the same state directory
            assert till.settle(timeout=30)
            refunds = [e for e in sim.state.ledger.events if e["type"] == "POINTS_REFUND"]
            assert [r["payload"]["reverses"] for r in refunds] == ["landed-key"]
            assert sim.state.members[ALICE]["pointsBalance"] == 1250
            states = {d.event_key: d.state for d in till.daemon.loyalty.checkouts.deductions("TC")}
            assert states == {"landed-key": "unknown", "lost-key": "unknown"}


def test_a_voucher_scanned_with_no_sale_open_is_only_checked_and_the_till_is_told(till):
    till.scan(1, "ALICE-5OFF-0001")
    till.scan(1, "ALICE-USED-0003")
    assert till.wait_for(lambda: len(of_type(till, "voucher_result")) == 2)
    ok, used = (e["data"] for e in of_type(till, "voucher_result"))
    assert ok["ok"] is True and ok["checkOnly"] is True
    assert used["ok"] is False and used["error"] == "voucher_already_used"
    assert till.sim.state.ledger.burns == []  # nothing burned without a sale


def test_the_member_cannot_change_after_points_were_spent(till):
    open_with_member(till, "TM")
    assert till.api.post("/v1/checkouts/TM/points", json={"points": 100}).status_code == 200
    r = till.api.put("/v1/checkouts/TM/member", json={"code": "1000002"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "checkout_conflict"
    assert till.api.put("/v1/checkouts/TM/member", json={"code": "1000001"}).status_code == 200  # same member: fine


def read_events(till, until, last_event_id=None):
    """(SSE id, data) pairs from /v1/events until ``until(pairs)`` holds."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    pairs, current = [], None
    with httpx.stream("GET", till.url + "/v1/events", headers=headers, timeout=10) as stream:
        for line in stream.iter_lines():
            if line.startswith("id: "):
                current = line[4:]
            elif line.startswith("data: "):
                pairs.append((current, json.loads(line[6:])))
                if until(pairs):
                    break
    return pairs


def test_the_event_stream_resumes_after_last_event_id(till):
    till.scan(1, "4006381333931")
    till.scan(1, "5901234123457")
    assert till.wait_for(lambda: len(of_type(till, "scan")) == 2)
    first = of_type(till, "scan")[0]["id"]
    history = read_events(till, lambda p: any(d["id"] == first for _, d in p), last_event_id="another-run")
    first_sse_id = next(i for i, d in history if d["id"] == first)
    assert first_sse_id.endswith(f"-{first}")  # EPOCH-N: ids do not repeat across restarts
    data = [d for _, d in read_events(till, lambda p: any(d["type"] == "scan" for _, d in p), first_sse_id)]
    assert [d["data"]["text"] for d in data if d["type"] == "scan"] == ["5901234123457"]


def test_an_unplugged_scanner_is_told_to_the_till_and_comes_back(till):
    till.scanners[1].unplug()
    assert till.wait_for(
        lambda: any(
            e["data"]["name"] == "scanner1" and e["data"]["state"] == "stale" for e in of_type(till, "device_state")
        )
    )
    assert till.api.get("/v1/health").json()["status"] == "degraded"
    till.scanners[1].plug()
    assert till.wait_for(lambda: till.api.get("/v1/health").json()["status"] == "ok", timeout=5)
    till.scan(1, "1000001")
    assert till.wait_for(lambda: of_type(till, "member_found"))


def test_a_printer_that_is_gone_does_not_stop_the_sale(tmp_path):
    dead_port = closed_port()
    with VirtualTill(
        tmp_path / "t",
        printers=[{"name": "p1", "connection": f"tcp://127.0.0.1:{dead_port}", "lane": 1, "profile": "TM-T20II"}],
    ) as till:
        assert till.api.get("/v1/health").json()["status"] == "degraded"
        r = till.api.post("/v1/print/balance", json={"code": "1000001", "lane": 1})
        assert r.status_code == 200 and r.json()["pointsBalance"] == 1250
        job = r.json()  # {job, state}, like every print call
        assert job["state"] == "queued"  # answered at once; the spool holds the slip while the printer is away
        assert till.wait_for(lambda: till.api.get(f"/v1/print/jobs/{job['job']}").json()["state"] == "held")


def closed_port():
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_spend_with_an_unknown_outcome_answers_202_pending_and_the_verdict_comes_on_the_stream(till):
    """The till is told exactly what is known: pending now (no discount), landed later, by the daemon's settler."""
    open_with_member(till, "TU")
    till.sim.sim.faults.update({"reset_rate": 1.0})  # the engine takes the write; the answer is cut off
    r = till.api.post("/v1/checkouts/TU/points", json={"points": 300})
    till.sim.sim.faults.update({"reset_rate": 0.0})
    assert r.status_code == 202, r.text
    assert r.json()["pending"] is True and r.json()["discount"]["amount"] == 0
    assert r.json()["pendingDiscount"] == {"amount": 300, "currency": "GBP"}
    assert till.wait_for(lambda: of_type(till, "points_settled"), timeout=15)
    [settled] = of_type(till, "points_settled")
    assert settled["data"]["outcome"] == "landed" and settled["data"]["discount"]["amount"] == 300
    assert till.api.get("/v1/checkouts/TU").json()["pointsSpent"] == 300
    assert till.api.post("/v1/checkouts/TU/void").json()["pointsRefunded"] == 300
    assert till.settle()
    assert balance(till) == 1250


def test_the_sale_summary_shows_points_spent_and_the_new_balance(till):
    """The sale summary a manager signs off: points spent, points earned, and the new balance
    (attached at 1,250, 300 spent, 25 earned: 975)."""
    open_with_member(till, "TS")
    assert till.api.post("/v1/checkouts/TS/points", json={"points": 300}).status_code == 200
    r = till.api.post("/v1/checkouts/TS/complete", json={"total": 2550, "paymentConfirmed": True, "basket": []})
    assert r.status_code == 200 and r.json()["expectedPoints"] == 25
    assert till.wait_for(lambda: b"New balance" in till.printed(1))
    text = till.printed(1).decode("cp437", "replace")
    summary = text[text.rindex("Sale") :]
    assert "Points spent" in summary and "300 pts" in summary
    assert re.search(r"New balance +975 pts", summary), summary
