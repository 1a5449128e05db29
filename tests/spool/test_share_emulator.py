"""The share port against a printer nobody here wrote (emupos), over TCP and over a pty.

A till's receipt whose raster image holds ``1B 69``, ``1D 56`` and ``10 04 01`` must come out of the
printer as one receipt, drawn exactly as the same bytes sent straight to the printer are drawn.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulator import Emulator, free_port
from tests.spool.test_share_port import BROWSER_POST
from tests.spool.test_share_stream import raster, till_receipt
from tillplug.commands.virtual.printer import FakeNetworkPrinter
from tillplug.commands.virtual.till import VirtualTill


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    emu = Emulator(tmp_path / "emupos", idle_ms=60_000)  # only a cut or a disconnect ends its receipts
    try:
        yield emu
    finally:
        emu.close()


def direct(emu: Emulator, data: bytes) -> dict[str, object]:
    """``data`` sent straight to the emulator: its receipt, to compare with."""
    before = len(emu.receipts())
    with socket.create_connection(("127.0.0.1", emu.tcp_port), timeout=5) as s:
        s.sendall(data)
    found = emu.wait_receipts(before + 1)
    assert len(found) == before + 1
    return newest(found)


def newest(receipts: list[dict[str, object]]) -> dict[str, object]:
    return max(receipts, key=lambda r: str(r["completed_at"]))


def till_with(tmp_path: Path, connection: str, share: int) -> VirtualTill:
    printers = [{"name": "p1", "connection": connection, "lane": 1, "profile": "TM-T20II", "share_port": share}]
    return VirtualTill(tmp_path / "till", printers=printers)


def through_share(share: int, data: bytes) -> bytes:
    """``data`` sent as a slow driver writes; what came back (b"" if the port closed on it)."""
    with socket.create_connection(("127.0.0.1", share), timeout=5) as s:
        try:
            for k in range(0, len(data), 61):
                s.sendall(data[k : k + 61])
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            return s.recv(100)
        except (BrokenPipeError, ConnectionResetError):
            return b""
        except OSError as exc:  # the port closed it before our shutdown: ENOTCONN, the same answer
            if exc.errno != errno.ENOTCONN:
                raise
            return b""


def jobs(till: VirtualTill) -> list[dict[str, object]]:
    return list(till.api.get("/v1/print/jobs", params={"limit": 50}).json()["jobs"])


@pytest.mark.parametrize("over", ["tcp", "pty"])
def test_a_till_receipt_with_trap_bytes_in_its_image_reaches_the_printer_whole(tmp_path, emulator, over):
    receipt = till_receipt(user_characters=False)
    share = free_port()
    connection = emulator.url if over == "tcp" else f"serial://{emulator.pty}"
    with till_with(tmp_path, connection, share) as till:
        assert till.wait_for(lambda: till.api.get("/v1/health").json()["status"] == "ok", timeout=15)
        assert through_share(share, receipt) == b""  # nothing inside the image was answered
        assert till.wait_for(lambda: [j["state"] for j in jobs(till)] == ["printed"], timeout=15), jobs(till)
        printed = emulator.wait_receipts(1)
    assert len(printed) == 1 and printed[0]["boundary"] == "cut", [(r, emulator.text(str(r["id"]))) for r in printed]
    same = direct(emulator, receipt)
    assert emulator.image(str(printed[0]["id"])) == emulator.image(str(same["id"]))
    assert emulator.text(str(printed[0]["id"])) == emulator.text(str(same["id"]))


def test_a_web_pages_post_to_the_share_port_prints_nothing_and_is_counted(tmp_path, emulator):
    share = free_port()
    with till_with(tmp_path, emulator.url, share) as till:
        assert till.wait_for(lambda: till.api.get("/v1/health").json()["status"] == "ok", timeout=15)
        through_share(share, BROWSER_POST)
        time.sleep(0.5)
        assert jobs(till) == []
        metrics = till.api.get("/metrics").text
        assert 'tillplug_share_refused_total{printer="p1",protocol="http"} 1.0' in metrics
    assert emulator.receipts() == []


@pytest.mark.parametrize(
    ("fault", "query", "answer"),
    [("paper-out", b"\x10\x04\x04", b"\x72"), ("cover-open", b"\x10\x04\x02", b"\x16")],
)
def test_a_till_receipt_sent_during_a_fault_prints_once_when_it_is_cleared(tmp_path, emulator, fault, query, answer):
    receipt = till_receipt(user_characters=False)
    share = free_port()
    with till_with(tmp_path, emulator.url, share) as till:
        assert till.wait_for(lambda: till.api.get("/v1/health").json()["status"] == "ok", timeout=15)
        emulator.fault(fault, True)
        through_share(share, receipt)
        assert till.wait_for(lambda: [j["state"] for j in jobs(till)] == ["held"], timeout=15), jobs(till)
        assert through_share(share, query) == answer  # the till's driver hears what the printer said
        emulator.fault(fault, False)
        assert till.wait_for(lambda: [j["state"] for j in jobs(till)] == ["printed"], timeout=15), jobs(till)
        printed = emulator.wait_receipts(1)
        time.sleep(0.5)
        assert len(emulator.receipts()) == 1
    same = direct(emulator, receipt)
    assert emulator.image(str(printed[0]["id"])) == emulator.image(str(same["id"]))


def test_a_receipt_past_the_size_bound_prints_whole_with_a_slip_queued_meanwhile_after_it(tmp_path):
    """5 MiB with no cut: two jobs, and the balance slip asked for between them prints after both."""
    image = raster(640, (5 << 20) // 640, b"\x55")
    share = free_port()
    with FakeNetworkPrinter("ok") as fake:
        with till_with(tmp_path, fake.url, share) as till:
            assert till.wait_for(lambda: till.api.get("/v1/health").json()["status"] == "ok", timeout=15)
            with socket.create_connection(("127.0.0.1", share), timeout=30) as s:
                s.sendall(image)
                assert till.wait_for(lambda: len(jobs(till)) == 1, timeout=30)  # the first 4 MiB
                slip = till.api.post("/v1/print/balance", json={"code": "1000001"}).json()  # {job, state, …member}
                s.sendall(b"\n\x1dV\x00")
            assert till.wait_for(lambda: job_state(till, slip["job"]) == "printed", timeout=30), jobs(till)
            till_jobs = [j for j in jobs(till) if j["source"] == "till"]
            assert [j["state"] for j in till_jobs] == ["printed", "printed"]
        printed = fake.printed()
    whole = printed.find(image + b"\n\x1dV\x00")
    assert whole >= 0, (len(printed), printed.find(image[:100]), printed.find(b"1,250 pts"), len(image), till_jobs)
    assert printed.find(b"1,250 pts") > whole


def job_state(till: VirtualTill, job: int) -> str:
    return str(till.api.get(f"/v1/print/jobs/{job}").json()["state"])


def test_the_loyalty_block_goes_before_a_real_cut_only_never_into_an_image(tmp_path):
    """With a member on the lane: a receipt whose only "cut" is inside its image prints byte for byte;
    the block waits for the receipt with a real cut and goes just before that cut."""
    cuts = b"\x1bi\x1dV\x00\x1dVA\x03\x1bm"  # (the project's own fake printer eats DLE EOT anywhere)
    no_cut = b"\x1b@SHOP\n" + raster(6, 4, cuts) + b"TOTAL 25.50\n"
    with_cut = b"\x1b@SHOP\n" + raster(6, 4, cuts) + b"TOTAL 25.50\n\x1dV\x00"
    share = free_port()
    with FakeNetworkPrinter("ok") as fake:
        printers = [{"name": "p1", "connection": fake.url, "lane": 1, "profile": "TM-T20II", "share_port": share}]
        receipts = {"append_to_till_receipt": True, "sale_summary": False, "points_slip": False}
        with VirtualTill(tmp_path / "t", printers=printers, receipts=receipts) as till:
            assert till.api.post("/v1/checkouts", json={"transactionId": "R1", "lane": 1}).status_code == 201
            assert till.api.put("/v1/checkouts/R1/member", json={"code": "1000001"}).status_code == 200
            through_share(share, no_cut)
            assert till.wait_for(lambda: [j["state"] for j in jobs(till)] == ["printed"], timeout=15)
            through_share(share, with_cut)
            assert till.wait_for(lambda: [j["state"] for j in jobs(till)] == ["printed"] * 2, timeout=15)
        printed = fake.printed()
    assert printed.startswith(no_cut + with_cut[:-3])
    block = printed[len(no_cut) + len(with_cut) - 3 :]
    assert block.endswith(b"\x1dV\x00") and b"Loyalty" in block and b"****" in block
