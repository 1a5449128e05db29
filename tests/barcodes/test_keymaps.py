"""Keyboard-mode scanners: the layout decoder over key events, its tables, and framing into scans."""

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillplug.barcodes import keymaps
from tillplug.barcodes.keymaps import (
    KEY_ENTER,
    KEY_LEFTALT,
    KEY_LEFTSHIFT,
    KEY_RIGHTBRACE_US,
    KeyFramer,
    alt_code,
    decode,
    encode,
)
from tillplug.barcodes.keymaps_data import LAYOUTS
from tools import xkb

FIXTURES = json.loads((Path(__file__).parents[1] / "fixtures" / "hid_scans.json").read_text())["scans"]
EV_KEY = 1
ASCII_PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]
printable = st.characters(codec="utf-8").filter(str.isprintable)


def key_events(recorded):
    """What the driver keeps of an evdev recording: EV_KEY events as (code, value)."""
    return [(code, value) for _, type_, code, value in recorded if type_ == EV_KEY]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@given(text=st.text(printable | st.just("\x1d"), max_size=40))
def test_any_printable_string_typed_under_a_layout_decodes_back_under_it(layout, text):
    assert decode(encode(text, layout), layout) == text


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@given(text=st.text(st.sampled_from(ASCII_PRINTABLE), min_size=1, max_size=40))
def test_every_ascii_character_is_typed_with_the_layout_not_alt_codes(layout, text):
    """The tables cover what barcodes carry: no printable ASCII needs the Alt-code fallback."""
    events = encode(text, layout)
    assert KEY_LEFTALT not in {code for code, _ in events}
    assert decode(events, layout) == text


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_recorded_scans_decode_to_what_was_scanned(name):
    fixture = FIXTURES[name]
    events = key_events(fixture["events"])
    assert decode(events, fixture["layout"]) == fixture["text"] + "\r"
    for other, garbled in fixture.get("read_as", {}).items():
        assert decode(events, other) == garbled + "\r"


def test_the_azerty_case():
    """An AZERTY scanner types digits with Shift: read as fr they are digits, as us they are symbols."""
    events = key_events(FIXTURES["fr_azerty_digits"]["events"])
    assert decode(events, "fr") == "0013748911\r"
    assert decode(events, "us") == "))!#&$*(!!\r"
    assert decode(key_events(FIXTURES["us_digits"]["events"]), "fr") == "àà&\"è'_ç&&\r"


def test_qwertz_swaps_y_and_z_and_dead_keys_compose():
    assert decode(encode("Zy", "us"), "de") == "Yz"
    assert encode("ü", "de") == [(26, 1), (26, 0)]  # a key of its own on de
    assert decode([(41, 1), (41, 0), (18, 1), (18, 0)], "de") == "ê"  # dead ^ then e
    assert decode([(41, 1), (41, 0), (57, 1), (57, 0)], "de") == "^"  # dead ^ then space
    assert decode([(41, 1), (41, 0), (41, 1), (41, 0)], "de") == "^"  # dead ^ twice
    assert decode([(41, 1), (41, 0), (45, 1), (45, 0)], "de") == "^x"  # no x with circumflex


def test_alt_codes_and_control_characters():
    assert alt_code("029") == "\x1d" and alt_code("0029") == "\x1d"  # GS, the GS1 separator
    assert alt_code("0128") == "€" and alt_code("128") == "Ç" and alt_code("8364") == "€"
    assert alt_code("") == ""
    ctrl_bracket = [(29, 1), (KEY_RIGHTBRACE_US, 1), (KEY_RIGHTBRACE_US, 0), (29, 0)]
    assert decode(ctrl_bracket, "us") == "\x1d"


def test_caps_lock_during_a_scan_swaps_letters_only():
    events = [(58, 1), (58, 0), *encode("ab1", "us")]
    assert decode(events, "us") == "AB1"


def test_key_framer_splits_at_enter_and_each_frame_retypes_itself():
    framer = KeyFramer("fr")
    stream = encode("0013748911\r", "fr") + encode("ABC\r", "fr")
    frames = framer.feed(stream[:7]) + framer.feed(stream[7:])
    assert [(f.data, f.raw) for f in frames] == [(b"0013748911", b"0013748911\r"), (b"ABC", b"ABC\r")]
    for frame in frames:
        assert decode(frame.keys, "fr") == frame.raw.decode()
        presses = sorted(c for c, v in frame.keys if v == 1)
        assert presses == sorted(c for c, v in frame.keys if v == 0)  # balanced: nothing left held


def test_key_framer_balances_a_scan_whose_enter_is_released_later():
    framer = KeyFramer("us")
    first = framer.feed([(KEY_LEFTSHIFT, 1), (30, 1), (30, 0), (KEY_ENTER, 1)])
    assert [f.data for f in first] == [b"A"]
    assert first[0].keys[-2:] == ((KEY_ENTER, 0), (KEY_LEFTSHIFT, 0))  # released for the re-typing
    # Shift still held, Enter released, then "b" with Shift: the next scan presses Shift again itself.
    second = framer.feed([(KEY_ENTER, 0), (48, 1), (48, 0), (KEY_LEFTSHIFT, 0), (KEY_ENTER, 1), (KEY_ENTER, 0)])
    assert [f.data for f in second] == [b"B"]
    assert second[0].keys[0] == (KEY_LEFTSHIFT, 1)
    assert decode(second[0].keys, "us") == "B\r"


def test_tab_terminator():
    framer = KeyFramer("us", terminator="tab")
    frames = framer.feed(encode("12\t34\t", "us"))
    assert [(f.data, f.raw) for f in frames] == [(b"12", b"12\t"), (b"34", b"34\t")]


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="unknown keyboard layout 'xx'"):
        decode([], "xx")


@pytest.mark.skipif(xkb.available() is not None, reason=f"cannot read xkb layouts here: {xkb.available()}")
def test_the_shipped_tables_are_what_xkeyboard_config_says():
    """keymaps_data.py is generated from xkeyboard-config; regenerate with
    `python -m tools.xkb > tillplug/barcodes/keymaps_data.py` when this fails."""
    shipped = Path(keymaps.__file__).with_name("keymaps_data.py").read_text()
    assert shipped == xkb.generate()
