"""The customer's pole display: a sale walked through, read back from a pty display that interprets
the bytes the daemon writes (Epson DM-D and CD5220 command sets)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tillplug.drivers.pole_display import fit_line, render, reset

from tillplug.commands.virtual.display import VirtualPoleDisplay
from tillplug.commands.virtual.till import VirtualTill
from tillplug.display.screen import ScreenBook, pole_lines
from tillplug.receipts.templates import SlipContext

# -- the bytes ---------------------------------------------------------------------------


def test_epson_writes_each_line_whole_at_its_position():
    data = render(("Balance 1,250", "Thank you"), columns=20, code_page="cp437", command_set="epson")
    assert data == b"\x1f$\x01\x01Balance 1,250       \x1f$\x01\x02Thank you           "
    assert reset(code_page="cp858", command_set="epson") == b"\x1b@\x1bt\x13\x1fC\x00\x0c"


def test_cd5220_writes_the_upper_and_lower_lines():
    data = render(("Hello",), columns=20, code_page="cp437", command_set="cd5220")
    assert data == b"\x1bQAHello               \r\x1bQB                    \r"


def test_characters_the_display_lacks_are_transliterated_never_question_marks():
    assert fit_line("Łukasz: €5 off", 20, "cp437") == b"Lukasz: EUR5 off    "
    assert fit_line("Zoë ½", 20, "cp437") == "Zoë ½".ljust(20).encode("cp437")  # the table has them
    assert fit_line("a\x1b@b\x0cc", 8, "cp437") == b"a @b c  "  # no command from a name reaches the display


@given(text=st.text(max_size=60), columns=st.integers(8, 40), code_page=st.sampled_from(["cp437", "cp858"]))
def test_any_text_is_one_line_of_exactly_the_displays_width_with_no_control_bytes(text, columns, code_page):
    line = fit_line(text, columns, code_page)
    assert len(line) == columns
    assert all(b >= 0x20 for b in line)
    assert b"?" not in line or "?" in text


# -- what the customer sees --------------------------------------------------------------


def screen_lines(book: ScreenBook, events: list[tuple[str, dict, int | None]], lane: int = 1) -> tuple[str, str]:
    async def run() -> None:
        for type_, data, event_lane in events:
            await book.see(type_, data, event_lane)

    asyncio.run(run())
    return pole_lines(book.screen(lane), ctx=SlipContext("t", "b", "GBP"), idle_text=["Welcome"])


NOISE = st.sampled_from(["scan", "device_state", "print_job", "error", "drawer_state", "checkout_tendered"])


@given(noise=st.lists(st.tuples(NOISE, st.just({"code": "5012345678900", "member": "…0001"}), st.integers(1, 3))))
def test_scans_device_news_and_other_lanes_never_reach_the_lanes_display(noise):
    sale = [
        ("checkout_opened", {"transactionId": "T1"}, 1),
        ("member_attached", {"transactionId": "T1", "member": "…0001", "pointsBalance": 1250}, 1),
    ]
    other_lane = [
        ("checkout_opened", {"transactionId": "T2"}, 2),
        ("member_attached", {"transactionId": "T2", "member": "…0002", "pointsBalance": 9}, 2),
        ("redemption", {"transactionId": "T2", "points": 5, "balanceAfter": 4}, 2),
    ]
    book = ScreenBook(20)
    assert screen_lines(book, [*sale, *noise, *other_lane, *noise]) == ("****0001", "Balance 1,250")


# -- through the daemon ------------------------------------------------------------------


@pytest.mark.parametrize("command_set", ["epson", "cd5220"])
def test_a_sale_walked_through_shows_on_the_pole_display(tmp_path: Path, command_set: str):
    with VirtualPoleDisplay(tmp_path / "display1") as display:
        displays = [{"name": "pole1", "port": str(display.link), "lane": 1, "command_set": command_set}]
        shown = {"idle_text": ["Zażółć \u2013 welcome", "Open 8-20"], "idle_after_seconds": 1}
        with VirtualTill(tmp_path / "till", displays=displays, customer_display=shown) as till:
            assert till.wait_for(lambda: display.text() == "Zazólc - welcome\nOpen 8-20"), display.lines
            assert till.api.post("/v1/checkouts", json={"transactionId": "S1", "lane": 1}).status_code == 201
            assert till.api.put("/v1/checkouts/S1/member", json={"code": "1000001"}).status_code == 200
            assert till.wait_for(lambda: display.text() == "****0001\nBalance 1,250"), display.lines
            assert till.api.post("/v1/checkouts/S1/points", json={"points": 500}).status_code == 200
            assert till.wait_for(lambda: display.text() == "Points used 500\nBalance 750"), display.lines
            done = till.api.post("/v1/checkouts/S1/complete", json={"total": 2500, "paymentConfirmed": True})
            assert done.status_code == 200, done.text
            earned = done.json()["expectedPoints"]
            expected = f"Points earned +{earned}\nBalance {750 + earned:,}"
            assert till.wait_for(lambda: display.text() == expected), (display.lines, expected)
            assert till.wait_for(lambda: display.text().startswith("Zazólc"), timeout=5), display.lines  # idle again
            health = [e["data"] for e in till.events() if e["type"] == "device_state"]
            assert [h["state"] for h in health if h["kind"] == "display"][-1] == "ready"
            devices = till.api.get("/v1/health").json()["devices"]
            assert {"name": "pole1", "kind": "display", "state": "ready"}.items() <= devices[-1].items()
    assert display.unknown == []
    assert re.search(rb"[\x00-\x1f]", display.received.replace(b"\r", b"")) is not None  # commands, not text only


def test_a_display_unplugged_and_back_shows_the_current_screen(tmp_path: Path):
    link = tmp_path / "display1"
    first = VirtualPoleDisplay(link)
    displays = [{"name": "pole1", "port": str(link), "lane": 1}]
    with VirtualTill(tmp_path / "till", displays=displays) as till:
        assert till.wait_for(lambda: first.text() == "Welcome"), first.lines
        first.close()  # unplugged
        assert till.api.post("/v1/checkouts", json={"transactionId": "S2", "lane": 1}).status_code == 201
        assert till.api.put("/v1/checkouts/S2/member", json={"code": "1000001"}).status_code == 200
        with VirtualPoleDisplay(link) as second:  # plugged back in
            assert till.wait_for(lambda: second.text() == "****0001\nBalance 1,250", timeout=15), second.lines
            assert second.resets >= 1


def test_with_first_names_configured_the_display_shows_the_first_name_and_the_event_stream_does_not(tmp_path):
    with VirtualPoleDisplay(tmp_path / "display1") as display:
        displays = [{"name": "pole1", "port": str(display.link), "lane": 1}]
        shown = {"member": "first_name"}
        with VirtualTill(tmp_path / "till", displays=displays, customer_display=shown) as till:
            assert till.api.post("/v1/checkouts", json={"transactionId": "F1", "lane": 1}).status_code == 201
            assert till.api.put("/v1/checkouts/F1/member", json={"code": "1000001"}).status_code == 200
            assert till.wait_for(lambda: display.text() == "Sam\nBalance 1,250"), display.lines
            assert "Sam" not in json.dumps(till.events())  # personal data stays out of events
            assert "Member" not in display.text()  # the simulator's family name is never shown


def test_check_config_names_a_display_driver_that_is_not_installed(tmp_path):
    from tillplug.config.loader import validate
    from tillplug.devices.registry import driver_names

    data = {
        "till_id": "t1",
        "branch_id": "b1",
        "engine": {"preset": "simulator"},
        "displays": [{"name": "pole1", "port": "/dev/ttyUSB3", "driver": "pole-dispaly"}],
    }
    report = validate(data, known_drivers=driver_names(), check_secrets=False)
    assert [p.path for p in report.errors] == ["displays[0].driver"]
    assert "did you mean 'pole-display'" in report.errors[0].message


def test_a_void_clears_the_screen_and_a_completed_sale_goes_idle_after_its_time():
    book = ScreenBook(idle_after=20)
    opened = ("checkout_opened", {"transactionId": "V1"}, 1)
    attached = ("member_attached", {"transactionId": "V1", "member": "…0001", "pointsBalance": 100}, 1)
    assert screen_lines(book, [opened, attached, ("checkout_voided", {"transactionId": "V1"}, 1)]) == ("Welcome", "")
    done = ("checkout_completed", {"transactionId": "V2", "expectedPoints": 7}, 1)
    sale = [
        ("checkout_opened", {"transactionId": "V2"}, 1),
        ("member_attached", {"transactionId": "V2", "member": "…0001", "pointsBalance": 100}, 1),
        done,
    ]
    assert screen_lines(book, sale) == ("Points earned +7", "Balance 107")
    changed = book.screen(1).changed_at
    assert book.expire(changed + 19.9) == []
    assert [s.state for s in book.expire(changed + 20)] == ["idle"]
    late = ("voucher_result", {"transactionId": "OTHER", "ok": True, "name": "x"}, 1)
    assert screen_lines(book, [late]) == ("Welcome", "")  # news of another sale never shows
