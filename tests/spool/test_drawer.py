"""The cash drawer's state: the sensor on pin 3 of the printer's drawer connector (DLE EOT 1, bit 2).

Against the project's fake network printer (which has a drawer) and against emupos, a printer
nobody here wrote: opening and closing the drawer produce ``drawer_state`` events, ``GET /v1/drawer``
says the state, and ``POST /v1/drawer/open`` can wait for the close.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from tillplug.drivers.escpos_printer import drawer_pin3, parse_status

from tests.emulator import Emulator, free_port
from tillplug.commands.virtual.printer import FakeNetworkPrinter
from tillplug.commands.virtual.till import VirtualTill
from tillplug.config.model import PrinterConfig
from tillplug.spool.drawer import DrawerState, DrawerWatch

# -- the reading ------------------------------------------------------------------


def test_dle_eot_1_bit_2_is_the_drawer_pin_and_a_malformed_reply_is_no_reading():
    assert drawer_pin3(b"\x16") is True  # 0x12 fixed bits, 0x04 pin 3 high
    assert drawer_pin3(b"\x12") is False
    assert drawer_pin3(b"\x1e") is True  # offline too: the sensor is still read
    assert drawer_pin3(None) is None
    assert drawer_pin3(b"\x16\x16") is None
    assert drawer_pin3(b"\x04") is None  # fixed bits missing: not a status byte
    assert parse_status({1: b"\x16", 2: b"\x12", 4: b"\x12"}).drawer_pin3 is True
    assert parse_status({1: b"\x1e", 2: b"\x32", 4: b"\x72"}).drawer_pin3 is True  # paper out
    assert parse_status({1: None}).drawer_pin3 is None


@given(level=st.sampled_from(["high", "low"]), readings=st.lists(st.sampled_from([True, False, None]), max_size=30))
def test_each_change_of_the_sensor_is_one_event_and_the_state_follows_the_open_level(level, readings):
    watch = DrawerWatch("p1", 1, level)
    told = [watch.saw(pin3) for pin3 in readings]
    expected: list[DrawerState] = []
    state = DrawerState.UNKNOWN
    for pin3 in readings:
        opened = pin3 == (level == "high")
        now = DrawerState.UNKNOWN if pin3 is None else DrawerState.OPEN if opened else DrawerState.CLOSED
        if now is not state:
            expected.append(now)
        state = now
    assert [c.state for c in told if c is not None] == expected
    assert watch.state is state
    assert watch.opened == expected.count(DrawerState.OPEN)


def test_without_a_sensor_the_drawer_is_unknown_and_says_why_whatever_the_pin_reads():
    watch = DrawerWatch("p1", 1, None)
    assert watch.saw(True) is None and watch.saw(False) is None
    view = watch.view()
    assert view["state"] == "unknown" and view["sensor"] is False
    assert "does not report the drawer sensor" in view["reason"]


def test_a_wait_for_the_close_needs_an_opening_first_and_is_bounded():
    async def run() -> tuple[bool, bool, bool]:
        watch = DrawerWatch("p1", 1, "high")
        watch.saw(False)  # closed before the kick: that is not "closed again"
        bounded = await watch.wait_for_close(0.05)

        async def cashier() -> None:
            await asyncio.sleep(0.01)
            watch.saw(True)
            await asyncio.sleep(0.01)
            watch.saw(False)

        task = asyncio.ensure_future(cashier())
        after_opening = await watch.wait_for_close(5)
        await task
        watch.saw(True)  # open when the wait starts: its close is the one waited for
        task = asyncio.ensure_future(asyncio.sleep(0.01))
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, watch.saw, False)
        already_open = await watch.wait_for_close(5)
        await task
        return bounded, after_opening, already_open

    assert asyncio.run(run()) == (False, True, True)


def test_the_sensor_and_its_level_are_config_and_a_missing_level_is_refused():
    base = {"name": "p1", "connection": "tcp://127.0.0.1:9100"}
    assert PrinterConfig.model_validate({**base, "drawer_sensor": True, "drawer_open_level": "low"}).drawer_sensor
    with pytest.raises(ValidationError, match="needs drawer_open_level"):
        PrinterConfig.model_validate({**base, "drawer_sensor": True})
    with pytest.raises(ValidationError, match="set drawer_sensor = true"):
        PrinterConfig.model_validate({**base, "drawer_open_level": "high"})
    with pytest.raises(ValidationError):
        PrinterConfig.model_validate({**base, "drawer_sensor": True, "drawer_open_level": "open"})


# -- through the daemon ------------------------------------------------------------


def drawer_till(tmp_path: Path, connection: str, **printer: Any) -> VirtualTill:
    printers = [{"name": "p1", "connection": connection, "lane": 1, "profile": "TM-T20II", **printer}]
    return VirtualTill(tmp_path / "till", printers=printers)


def drawer_events(till: VirtualTill) -> list[str]:
    return [e["data"]["state"] for e in till.events() if e["type"] == "drawer_state"]


@pytest.mark.parametrize("level", ["high", "low"])
def test_opening_and_closing_the_drawer_are_drawer_state_events(tmp_path, level):
    with (
        FakeNetworkPrinter("ok", drawer_open_level=level) as fake,
        drawer_till(tmp_path, fake.url, drawer_sensor=True, drawer_open_level=level) as till,
    ):
        assert till.wait_for(lambda: drawer_events(till) == ["closed"], timeout=15), till.events()
        assert till.api.get("/v1/drawer").json()["state"] == "closed"
        answer = till.api.post("/v1/drawer/open", json={})
        assert answer.status_code == 202, answer.text
        assert till.wait_for(lambda: drawer_events(till) == ["closed", "open"], timeout=10), till.events()
        assert till.api.get("/v1/drawer", params={"printer": "p1"}).json()["state"] == "open"
        fake.close_drawer()
        assert till.wait_for(lambda: drawer_events(till) == ["closed", "open", "closed"], timeout=10)
        view = till.api.get("/v1/drawer", params={"lane": 1}).json()
        assert view == {**view, "printer": "p1", "lane": 1, "sensor": True, "state": "closed", "reason": ""}
        metrics = till.api.get("/metrics").text
        assert 'tillplug_drawer_openings_total{printer="p1"} 1.0' in metrics
        assert 'tillplug_drawer_state{printer="p1",state="closed"} 1.0' in metrics
    event = next(e for e in till.events() if e["type"] == "drawer_state")
    assert event["lane"] == 1 and set(event["data"]) == {"printer", "state", "reason"}


def test_open_can_wait_for_the_close_and_answers_the_state_then(tmp_path):
    with (
        FakeNetworkPrinter("ok") as fake,
        drawer_till(tmp_path, fake.url, drawer_sensor=True, drawer_open_level="high") as till,
    ):
        assert till.wait_for(lambda: drawer_events(till) == ["closed"], timeout=15)

        def cashier() -> None:  # shuts the drawer a moment after it opened
            if till.wait_for(lambda: fake.drawer_open, timeout=10):
                time.sleep(0.3)
                fake.close_drawer()

        shutter = threading.Thread(target=cashier)
        shutter.start()
        answer = till.api.post("/v1/drawer/open", json={"waitForCloseSeconds": 20})
        shutter.join(15)
        assert answer.status_code == 202, answer.text
        assert answer.json()["drawer"]["state"] == "closed"
        assert drawer_events(till) == ["closed", "open", "closed"]
        # Left open: the wait ends at its bound, and says so.
        answer = till.api.post("/v1/drawer/open", json={"waitForCloseSeconds": 0.5})
        assert answer.status_code == 202 and answer.json()["drawer"]["state"] == "open", answer.text
        too_long = till.api.post("/v1/drawer/open", json={"waitForCloseSeconds": 31})
        assert too_long.status_code == 400 and "waitForCloseSeconds" in too_long.text


def test_a_wait_for_the_close_ends_when_the_kick_cannot_be_printed(tmp_path):
    """Paper out: the kick is held, then dropped after its 5 s; the wait ends then, not at its 30 s, and says why."""
    with (
        FakeNetworkPrinter("ok") as fake,
        drawer_till(tmp_path, fake.url, drawer_sensor=True, drawer_open_level="high") as till,
    ):
        assert till.wait_for(lambda: drawer_events(till) == ["closed"], timeout=15)
        fake.mood = "paper_out"
        assert till.wait_for(lambda: till.api.get("/v1/health").json()["status"] == "degraded", timeout=15)
        answer = till.api.post("/v1/drawer/open", json={"waitForCloseSeconds": 30})
        assert answer.status_code == 202, answer.text
        drawer = answer.json()["drawer"]
        assert drawer["state"] == "closed"
        assert drawer["reason"].startswith("the drawer did not open: its kick was expired"), drawer
        assert fake.kicks == 0 and drawer_events(till) == ["closed"]


def test_a_printer_without_the_sensor_says_so_rather_than_guessing(tmp_path):
    with FakeNetworkPrinter("ok") as fake, drawer_till(tmp_path, fake.url) as till:
        view = till.api.get("/v1/drawer").json()
        assert view["state"] == "unknown" and view["sensor"] is False
        assert "does not report the drawer sensor" in view["reason"]
        refused = till.api.post("/v1/drawer/open", json={"waitForCloseSeconds": 5})
        assert refused.status_code == 400 and "cannot tell when its drawer closes" in refused.text
        assert fake.kicks == 0  # refused before the kick: nothing happened
        assert till.api.get("/v1/drawer", params={"printer": "nope"}).status_code == 400
        assert till.api.get("/v1/drawer", params={"lane": "x"}).status_code == 400
        assert till.api.post("/v1/drawer/open", json={}).status_code == 202
        assert till.wait_for(lambda: fake.kicks == 1, timeout=10)
        time.sleep(0.5)
    assert drawer_events(till) == []


def test_a_printer_that_stops_answering_makes_the_drawer_unknown(tmp_path):
    with (
        FakeNetworkPrinter("ok") as fake,
        drawer_till(tmp_path, fake.url, drawer_sensor=True, drawer_open_level="high") as till,
    ):
        assert till.wait_for(lambda: drawer_events(till) == ["closed"], timeout=15)
        fake.vanish()
        assert till.wait_for(lambda: drawer_events(till) == ["closed", "unknown"], timeout=15), till.events()
        view = till.api.get("/v1/drawer").json()
        assert view["state"] == "unknown" and view["reason"].startswith("printer away")


# -- a printer nobody here wrote -------------------------------------------------------


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    emu = Emulator(tmp_path / "emupos")
    try:
        yield emu
    finally:
        emu.close()


@pytest.mark.parametrize("over", ["tcp", "pty"])
def test_the_emulated_printers_drawer_opening_and_closing_are_drawer_state_events(tmp_path, emulator, over):
    """emupos's TM-T20III reports its drawer's pin 3 high while open."""
    connection = emulator.url if over == "tcp" else f"serial://{emulator.pty}"
    with drawer_till(tmp_path, connection, drawer_sensor=True, drawer_open_level="high") as till:
        assert till.wait_for(lambda: drawer_events(till) == ["closed"], timeout=15), till.events()
        assert till.api.post("/v1/drawer/open", json={}).status_code == 202
        assert till.wait_for(lambda: drawer_events(till) == ["closed", "open"], timeout=10), till.events()
        assert emulator.api.get("/devices/front").json()["state"]["drawer"] == "open"
        closed = emulator.api.post("/devices/front/drawer/close")
        assert closed.status_code == 204, closed.text
        assert till.wait_for(lambda: drawer_events(till) == ["closed", "open", "closed"], timeout=10), till.events()
        assert till.api.get("/v1/drawer").json()["state"] == "closed"


def test_the_tills_own_driver_on_the_share_port_hears_the_drawer_sensor(tmp_path):
    share = free_port()

    def ask(query: bytes, size: int) -> bytes:
        with socket.create_connection(("127.0.0.1", share), timeout=5) as s:
            s.sendall(query)
            answer = b""
            while len(answer) < size and (chunk := s.recv(size - len(answer))):
                answer += chunk
            return answer

    with (
        FakeNetworkPrinter("ok") as fake,
        drawer_till(tmp_path, fake.url, drawer_sensor=True, drawer_open_level="high", share_port=share) as till,
    ):
        assert till.wait_for(lambda: drawer_events(till) == ["closed"], timeout=15)
        assert ask(b"\x10\x04\x01\x1dr\x02", 2) == b"\x12\x00"
        assert till.api.post("/v1/drawer/open", json={}).status_code == 202
        assert till.wait_for(lambda: drawer_events(till) == ["closed", "open"], timeout=10)
        assert ask(b"\x10\x04\x01\x1dr\x02", 2) == b"\x16\x01"
