"""The print spool through the till API: jobs, reprints, cancels, raw bytes, the drawer; paper out made visible."""

import base64
import socket
import threading

from tillplug.commands.cli import main
from tillplug.commands.virtual.printer import FakeNetworkPrinter
from tillplug.commands.virtual.till import VirtualTill


def of_type(till, kind):
    return [e for e in till.events() if e["type"] == kind]


def job_state(till, job_id):
    return till.api.get(f"/v1/print/jobs/{job_id}").json()["state"]


def network_till(tmp_path, fake):
    printers = [{"name": "p1", "connection": fake.url, "lane": 1, "profile": "TM-T20II"}]
    return VirtualTill(tmp_path / "t", printers=printers, printing={"hold_minutes": 1})


def test_paper_out_holds_the_slip_and_makes_the_till_degraded_everywhere(tmp_path, capsys):
    with FakeNetworkPrinter("paper_out") as fake, network_till(tmp_path, fake) as till:
        r = till.api.post("/v1/print/balance", json={"code": "1000001", "lane": 1})
        job = r.json()
        assert job["state"] == "queued"
        assert till.wait_for(lambda: job_state(till, job["job"]) == "held")
        shown = till.api.get(f"/v1/print/jobs/{job['job']}").json()
        assert shown["reason"] == "paper out" and shown["kind"] == "balance" and shown["printer"] == "p1"
        health = till.api.get("/v1/health").json()
        [printer] = [d for d in health["devices"] if d["kind"] == "printer"]
        assert health["status"] == "degraded" and printer["state"] == "error" and printer["reason"] == "paper out"
        assert printer["paper"]["state"] == "error"
        assert any(e["data"]["name"] == "p1" and e["data"]["state"] == "error" for e in of_type(till, "device_state"))
        states = [e["data"]["state"] for e in of_type(till, "print_job") if e["data"]["job"] == job["job"]]
        assert states[:2] == ["queued", "held"]  # the breaker is open: held at once, the printer not asked again
        metrics = till.api.get("/metrics").text
        assert 'tillplug_printer_status{printer="p1",state="error"} 1.0' in metrics
        assert 'tillplug_print_jobs_total{printer="p1",state="held"} 1.0' in metrics
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'till_id="t"\nbranch_id="b"\n[engine]\npreset="simulator"\n'
            f'[api]\nlisten="127.0.0.1:{till.daemon.api_port}"\n'
        )
        assert main(["status", "--config", str(cfg)]) == 1
        assert "paper out" in capsys.readouterr().out
        fake.mood = "ok"
        assert till.wait_for(lambda: job_state(till, job["job"]) == "printed", timeout=5)
        assert till.wait_for(lambda: till.api.get("/v1/health").json()["status"] == "ok", timeout=5)


def test_jobs_can_be_listed_reprinted_and_cancelled(tmp_path):
    with FakeNetworkPrinter("ok") as fake, network_till(tmp_path, fake) as till:
        first = till.api.post("/v1/print/balance", json={"code": "1000001", "lane": 1}).json()
        assert till.wait_for(lambda: job_state(till, first["job"]) == "printed")
        again = till.api.post(f"/v1/print/jobs/{first['job']}/reprint")
        assert again.status_code == 202 and again.json()["state"] == "queued"
        assert till.wait_for(lambda: job_state(till, again.json()["job"]) == "printed")
        assert fake.printed().count(b"1,250 pts") == 2
        listed = till.api.get("/v1/print/jobs", params={"state": "printed"}).json()["jobs"]
        assert [j["job"] for j in listed] == [again.json()["job"], first["job"]]
        assert listed[0]["reprintOf"] == first["job"]
        gone = till.api.delete(f"/v1/print/jobs/{first['job']}")
        assert gone.status_code == 409 and gone.json()["error"]["code"] == "print_job_conflict"
        assert till.api.get("/v1/print/jobs/999999").json()["error"]["code"] == "print_job_not_found"
        # Schemathesis sent an id past SQLite's integers: a 500 with a traceback (OverflowError).
        for path in ("/v1/print/jobs/{}", "/v1/print/jobs/{}/reprint"):
            for huge in (2**63, 10**30, 0):
                method = till.api.post if path.endswith("reprint") else till.api.get
                refused = method(path.format(huge))
                assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_request", huge
        fake.mood = "paper_out"
        held = till.api.post("/v1/print/balance", json={"code": "1000001", "lane": 1}).json()
        assert till.wait_for(lambda: job_state(till, held["job"]) == "held")
        cancelled = till.api.delete(f"/v1/print/jobs/{held['job']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        fake.mood = "ok"
        marker = till.api.post("/v1/print/raw", json={"data": base64.b64encode(b"MARKER\n\x1dV\x00").decode()})
        assert till.wait_for(lambda: job_state(till, marker.json()["job"]) == "printed")
        assert fake.printed().count(b"1,250 pts") == 2  # the cancelled slip never printed


def test_the_tills_own_bytes_and_tillplugs_slips_never_mix_inside_a_job(tmp_path):
    till_receipt = b"\x1b@" + b"".join(b"TILL LINE %02d\n" % i for i in range(40)) + b"\x1dV\x00"
    with FakeNetworkPrinter("ok") as fake, network_till(tmp_path, fake) as till:
        jobs = []
        for _ in range(5):
            raw = till.api.post("/v1/print/raw", json={"data": base64.b64encode(till_receipt).decode()})
            assert raw.status_code == 202
            jobs.append(raw.json()["job"])
            jobs.append(till.api.post("/v1/print/balance", json={"code": "1000001"}).json()["job"])
        assert till.wait_for(lambda: all(job_state(till, j) == "printed" for j in jobs), timeout=15)
        printed = fake.printed()
    assert printed.count(till_receipt) == 5  # each till receipt arrived whole, nothing inside it
    assert printed.count(b"1,250 pts") == 5


def test_the_cash_drawer_opens_through_the_spool_and_a_late_kick_is_dropped(tmp_path):
    with FakeNetworkPrinter("ok") as fake, network_till(tmp_path, fake) as till:
        r = till.api.post("/v1/drawer/open", json={"pin": 2})
        assert r.status_code == 202
        assert till.wait_for(lambda: job_state(till, r.json()["job"]) == "printed")
        assert fake.printed() == b"\x1bp\x0022"  # python-escpos CD_KICK_2, nothing else
        fake.mood = "cover_open"
        late = till.api.post("/v1/drawer/open", json={}).json()
        assert till.wait_for(lambda: job_state(till, late["job"]) == "held")
        assert till.wait_for(lambda: job_state(till, late["job"]) == "expired", timeout=10)  # a few seconds
        fake.mood = "ok"
        assert till.wait_for(lambda: till.api.get("/v1/health").json()["status"] == "ok", timeout=5)
        assert fake.printed() == b"\x1bp\x0022"  # the late kick never opened the drawer
        assert till.api.post("/v1/drawer/open", json={"pin": 3}).status_code == 400


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_till_driver_pointed_at_the_virtual_port_shares_the_printer_job_by_job(tmp_path):
    share = free_port()
    receipts = [
        b"\x1b@" + b"".join(b"TILL %d LINE %02d\n" % (n, i) for i in range(30)) + b"\x1dVA\x03" for n in range(6)
    ]
    with FakeNetworkPrinter("ok") as fake:
        printers = [{"name": "p1", "connection": fake.url, "lane": 1, "profile": "TM-T20II", "share_port": share}]
        with VirtualTill(tmp_path / "t", printers=printers) as till:
            assert till.wait_for(lambda: till.api.get("/v1/health").json()["status"] == "ok")
            answers = []

            def the_tills_driver():
                with socket.create_connection(("127.0.0.1", share), timeout=5) as s:
                    s.sendall(b"\x10\x04\x01")  # is the printer there?
                    answers.append(s.recv(1))
                    for receipt in receipts:
                        for k in range(0, len(receipt), 97):  # in small pieces, as a slow driver writes
                            s.sendall(receipt[k : k + 97])

            driver = threading.Thread(target=the_tills_driver)
            driver.start()
            slips = [till.api.post("/v1/print/balance", json={"code": "1000001"}).json() for _ in range(6)]
            driver.join(10)
            assert answers == [b"\x16"]
            assert till.wait_for(lambda: fake.printed().count(b"1,250 pts") == 6, timeout=10)
            assert till.wait_for(lambda: sum(fake.printed().count(r) for r in receipts) == 6, timeout=10)
            assert all(job_state(till, s["job"]) == "printed" for s in slips)
            till_jobs = till.api.get("/v1/print/jobs", params={"limit": 50}).json()["jobs"]
            assert sum(j["source"] == "till" for j in till_jobs) == 6


def test_the_loyalty_block_goes_into_the_tills_own_receipt_before_its_cut(tmp_path):
    receipt = b"\x1b@SHOP RECEIPT\nTOTAL 25.50\n\x1dV\x00"
    with FakeNetworkPrinter("ok") as fake:
        printers = [{"name": "p1", "connection": fake.url, "lane": 1, "profile": "TM-T20II"}]
        receipts = {"append_to_till_receipt": True, "sale_summary": False, "points_slip": False}
        with VirtualTill(tmp_path / "t", printers=printers, receipts=receipts) as till:
            assert till.api.post("/v1/checkouts", json={"transactionId": "R1", "lane": 1}).status_code == 201
            assert till.api.put("/v1/checkouts/R1/member", json={"code": "1000001"}).status_code == 200
            assert till.api.post("/v1/checkouts/R1/points", json={"points": 100}).status_code == 200
            done = till.api.post("/v1/checkouts/R1/complete", json={"total": 2550, "paymentConfirmed": True})
            assert done.status_code == 200
            first = till.api.post("/v1/print/raw", json={"data": base64.b64encode(receipt).decode()}).json()
            copy = till.api.post("/v1/print/raw", json={"data": base64.b64encode(receipt).decode()}).json()
            assert till.wait_for(lambda: job_state(till, copy["job"]) == "printed")
            assert job_state(till, first["job"]) == "printed"
        printed = fake.printed()
    with_block, plain = printed.split(b"\x1dV\x00")[:2]
    assert with_block.startswith(b"\x1b@SHOP RECEIPT\nTOTAL 25.50\n")
    assert b"Loyalty" in with_block and b"****" in with_block and b"100 pts" in with_block
    assert plain == b"\x1b@SHOP RECEIPT\nTOTAL 25.50\n"  # once per sale: a copy is printed as sent
