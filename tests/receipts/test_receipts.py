"""Receipts: layout on every paper width, code pages, real barcode/QR decoding, golden bytes, status."""

import os
import socket
import threading
from datetime import datetime
from pathlib import Path

import pytest
import zxingcpp
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from tillplug.drivers.escpos_printer import EscposPrinter, parse_status

from tillplug.config.model import PrinterConfig
from tillplug.devices.base import PrinterState
from tillplug.engine.models import Benefit, Wallet
from tillplug.money import Money
from tillplug.receipts import layout as L
from tillplug.receipts import templates as T
from tillplug.receipts.layout import wrap
from tillplug.receipts.preview import interpret, render_png

GOLDEN = Path(__file__).parents[1] / "golden"
WHEN = datetime(2026, 11, 26, 9, 30)
CTX = T.SlipContext(
    "till-01", "branch-0001", "GBP", ("Corner Shop", "12 High Street"), ("Thank you for shopping with us",)
)
BENEFIT = Benefit.model_validate(
    {
        "id": "b1",
        "createdAt": "2026-11-01T00:00:00.000Z",
        "redeemedAt": "2026-11-02T00:00:00.000Z",
        "expiresAt": "2026-12-31T00:00:00.000Z",
        "code": {"value": "ALICE-5OFF-0001"},
        "reward": {
            "id": "r1",
            "name": "£5 off your weekly shop at any of our stores nationwide",
            "discounts": [{"type": "ABSOLUTE", "value": 500}, {"type": "PERCENTAGE", "value": 10, "sku": "COFFEE"}],
        },
    }
)
WALLET = Wallet.model_validate(
    {
        "pointsBalance": 1250,
        "lifetimeEarn": 4000,
        "tier": {"name": "Gold"},
        "vouchers": [BENEFIT.model_dump(by_alias=True)],
    }
)


def all_slips():
    return {
        "balance": T.balance_slip(CTX, "…0001", WALLET, WHEN),
        "voucher": T.voucher_receipt(CTX, BENEFIT, burned=True, when=WHEN),
        "checked": T.voucher_receipt(CTX, BENEFIT, burned=False, when=WHEN),
        "points": T.points_slip(CTX, 500, Money(500, "GBP"), 750, WHEN, member="…0001", sale="TX-1001"),
        "refund": T.refund_slip(CTX, "TX-1001", 500, WHEN, not_reinstated=["£5 off your weekly shop"]),
        "sale": T.sale_summary(
            CTX,
            "TX-1001",
            Money(2550, "GBP"),
            25,
            WHEN,
            member="…0001",
            redeemed=T.Redeemed(500, ["£5 off your weekly shop"]),
            balance_after=775,
        ),
        "test": T.test_page(CTX, "printer0", "TM-T20II", 48, "CP858", WHEN),
    }


def printer(columns=None, width=80, profile="TM-T20II"):
    return EscposPrinter(
        PrinterConfig(name="p", connection="capture://memory", profile=profile, paper_width_mm=width, columns=columns)
    )


@pytest.mark.parametrize("columns", [32, 42, 48])
@pytest.mark.parametrize("name", sorted(all_slips()))
def test_every_template_fits_the_paper_and_its_codes_scan(tmp_path, columns, name):
    receipt = all_slips()[name]
    p = printer(columns=columns, width=58 if columns == 32 else 80)
    data = p.render(receipt)
    preview = interpret(data)
    assert preview.unknown == []
    for item in preview.items:
        if item.kind == "text":
            cap = p.small_columns if item.style.small else columns
            assert len(item.text) * item.style.width <= cap, item.text
    png = render_png(preview, tmp_path / f"{name}.png", columns=columns, width_px=p.dots)
    decoded = {(r.format.name, r.text) for r in zxingcpp.read_barcodes(Image.open(png))}
    expected = {("Code128", i.text) for i in preview.items if i.kind == "barcode"} | {
        ("QRCode", i.text) for i in preview.items if i.kind == "qr"
    }
    assert expected <= decoded


@pytest.mark.parametrize("columns", [32, 42, 48])
def test_no_word_or_number_is_cut_in_half(columns):
    text = interpret(printer(columns=columns).render(all_slips()["voucher"])).text(columns)
    assert "nationwide" in text.split() and "£5.00" in text
    assert "1,250 pts" in interpret(printer(columns=columns).render(all_slips()["balance"])).text(columns)


@given(
    st.text(
        alphabet=st.characters(
            blacklist_categories=["Cs"], blacklist_characters="\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
        ),
        max_size=300,
    ),
    st.integers(1, 64),
)
def test_wrap_keeps_every_word_and_never_exceeds_the_width(text, width):
    lines = wrap(text, width)
    assert all(len(line) <= width for line in lines)
    if all(len(w) <= width for w in text.split()):
        assert " ".join(" ".join(lines).split()) == " ".join(text.split())


def test_pound_euro_and_accents_go_through_one_pinned_code_page():
    data = printer().render(T.test_page(CTX, "p", "TM-T20II", 48, "CP858", WHEN))
    assert data.count(b"\x1bt") == 1 and b"\x1bt\x13" in data  # ESC t 19 = CP858, once
    for ch, byte in (("£", b"\x9c"), ("€", b"\xd5"), ("é", b"\x82"), ("ß", b"\xe1")):
        assert byte in data, ch
    assert "£ € é è à ç ü ö ä ß ñ" in interpret(data).text()


@pytest.mark.parametrize("name", sorted(all_slips()))
def test_golden_bytes_for_the_tm_t20ii_profile(name):
    data = printer().render(all_slips()[name])
    golden = GOLDEN / f"TM-T20II-{name}.bin"
    if os.environ.get("TILLPLUG_UPDATE_GOLDEN"):
        golden.write_bytes(data)
    assert data == golden.read_bytes(), f"{name} changed; inspect with tillplug preview, then TILLPLUG_UPDATE_GOLDEN=1"


def test_capture_printer_writes_the_exact_byte_stream(tmp_path):
    out = tmp_path / "capture.bin"
    p = EscposPrinter(PrinterConfig(name="p", connection=f"capture://{out}", profile="TM-T20II"))
    p.open()
    data = p.render(all_slips()["sale"])
    p.write(data)
    p.close()
    assert out.read_bytes() == data


def test_preview_lists_bytes_it_does_not_understand():
    preview = interpret(b"\x1b@hello\n\x1bZ\x01\x07world\n")
    assert [i.text for i in preview.items if i.kind == "text"] == ["hello", "world"]
    assert [u[1] for u in preview.unknown] == ["1b 5a", "01", "07"]


@given(st.dictionaries(st.sampled_from([1, 2, 4]), st.one_of(st.none(), st.binary(max_size=3))))
def test_status_is_never_paper_out_when_the_printer_did_not_answer(replies):
    status = parse_status(replies)
    if replies.get(1) is None or len(replies.get(1) or b"") != 1:
        assert status.state is PrinterState.UNKNOWN


@pytest.mark.parametrize(
    "replies, state, reason",
    [
        ({1: b"\x16", 2: b"\x12", 4: b"\x12"}, PrinterState.OK, ""),
        ({1: b"\x16", 2: b"\x12", 4: b"\x1e"}, PrinterState.WARNING, "paper near end"),
        ({1: b"\x1e", 2: b"\x32", 4: b"\x72"}, PrinterState.ERROR, "paper out"),
        ({1: b"\x1e", 2: b"\x16", 4: b"\x12"}, PrinterState.ERROR, "cover open"),
        ({1: None}, PrinterState.UNKNOWN, "the printer did not answer"),
        ({1: b"\x11\x16"}, PrinterState.UNKNOWN, "the printer did not answer"),  # XON mixed in: not a valid reply
    ],
)
def test_status_bytes_are_read_as_epson_documents_them(replies, state, reason):
    status = parse_status(replies)
    assert (status.state, status.reason) == (state, reason)


class FakeNetworkPrinter:
    """A TCP 9100 printer on 127.0.0.1 that answers DLE EOT n as told (or not at all)."""

    def __init__(self, answers):
        self.answers = answers
        self.received = bytearray()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(10)
        conn, _ = self.sock.accept()
        conn.settimeout(10)  # bounded: a test that hangs fails instead
        with conn:
            seen = 0
            while chunk := conn.recv(4096):
                self.received += chunk
                # A query may arrive glued to the receipt before it: look for every DLE EOT n.
                while (at := self.received.find(b"\x10\x04", seen)) >= 0 and at + 2 < len(self.received):
                    n = self.received[at + 2]
                    seen = at + 3
                    if n in self.answers:
                        conn.sendall(self.answers[n])

    def close(self):
        self.sock.close()
        self.thread.join(5)


@pytest.mark.parametrize(
    "answers, state",
    [
        ({1: b"\x16", 2: b"\x12", 4: b"\x12"}, PrinterState.OK),
        ({1: b"\x1e", 2: b"\x32", 4: b"\x72"}, PrinterState.ERROR),
        ({}, PrinterState.UNKNOWN),
    ],
)
def test_network_printer_prints_and_reports_status(answers, state):
    fake = FakeNetworkPrinter(answers)
    p = EscposPrinter(
        PrinterConfig(name="p", connection=f"tcp://127.0.0.1:{fake.port}", profile="TM-T20II", status_timeout=0.2)
    )
    p.open()
    data = p.render(all_slips()["points"])
    p.write(data)
    try:
        assert p.status().state is state
    finally:
        p.close()
        fake.close()
    assert fake.received.startswith(data)


def test_unknown_profile_is_a_clear_driver_error():
    from tillplug.errors import DriverError

    with pytest.raises(DriverError, match="unknown printer profile"):
        printer(profile="TM-NOPE")


def test_escpos_capabilities_cache_lives_in_the_cache_directory(tmp_path):
    import subprocess
    import sys

    code = (
        "from tillplug.config.model import PrinterConfig;"
        "from tillplug.drivers.escpos_printer import EscposPrinter, escpos_printer_module;"
        f"EscposPrinter(PrinterConfig(name='p', connection='capture://memory'), cache_dir={str(tmp_path)!r});"
        "escpos_printer_module()"
    )
    env = {k: v for k, v in os.environ.items() if k != "ESCPOS_CAPABILITIES_PICKLE_DIR"}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)
    assert list(tmp_path.glob("*.pickle")), "python-escpos re-parses its capabilities at every start"


def test_a_fresh_cache_directory_gets_the_capabilities_pickle_without_yaml(tmp_path):
    """#27: python-escpos parsed its JSON capabilities with PyYAML's pure-Python reader (0.2 s, 3 MB of
    garbage) whenever it found no pickle; the driver writes the pickle from the JSON before it imports
    python-escpos's printer module (a logo, a usb:// printer)."""
    import subprocess
    import sys

    code = (
        "import yaml\n"
        "def refuse(*a, **k): raise AssertionError('capabilities parsed with yaml')\n"
        "yaml.safe_load = refuse\n"
        "from tillplug.config.model import PrinterConfig\n"
        "from tillplug.drivers.escpos_printer import EscposPrinter, escpos_printer_module\n"
        f"p = EscposPrinter(PrinterConfig(name='p', connection='capture://memory'), cache_dir={str(tmp_path)!r})\n"
        "assert p.code_page and p.columns == 48, (p.code_page, p.columns)\n"
        "escpos_printer_module().Dummy(profile='TM-T20II')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ESCPOS_CAPABILITIES_PICKLE_DIR"}
    run = subprocess.run([sys.executable, "-c", code], timeout=60, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert not list(tmp_path.glob(".*")), "a partial pickle was left behind"


def test_the_capabilities_pickle_holds_what_python_escpos_would_have_parsed(tmp_path, monkeypatch):
    import pickle
    import platform
    from importlib import resources

    import yaml
    from tillplug.drivers.escpos_printer import write_capabilities_pickle

    monkeypatch.delenv("ESCPOS_CAPABILITIES_FILE", raising=False)
    source = resources.files("escpos") / "capabilities.json"
    target = tmp_path / f"{platform.python_version()}.capabilities.pickle"
    write_capabilities_pickle(tmp_path)
    assert pickle.loads(target.read_bytes()) == yaml.safe_load(source.read_text())
    target.write_bytes(b"current")  # newer than the capabilities file: left alone
    write_capabilities_pickle(tmp_path)
    assert target.read_bytes() == b"current"
    os.utime(target, (0, 0))  # older than the capabilities file (python-escpos would re-parse): written again
    write_capabilities_pickle(tmp_path)
    assert pickle.loads(target.read_bytes()) == yaml.safe_load(source.read_text())


# -- #27: slips without python-escpos's printer module (Pillow, qrcode, python-barcode) -----------------

PROFILES = ("TM-T20II", "TM-T88V", "POS-5890", "TM-U220B", "ZJ-5870", "RP326", "simple")
SLIP_TEXT = st.text(st.sampled_from("Aa Zz09 £€éèàçüöäßñ-:*/.Ωжあ\u0301\t"), max_size=70)
BLOCKS = st.one_of(
    st.builds(
        L.Text,
        SLIP_TEXT,
        bold=st.booleans(),
        double=st.booleans(),
        align=st.sampled_from(["left", "center", "right"]),
        whole=st.booleans(),
        fallback=st.none() | st.just("Voucher"),
    ),
    st.builds(L.Columns, SLIP_TEXT, SLIP_TEXT, bold=st.booleans()),
    st.builds(L.Rule, st.sampled_from("-=*")),
    st.builds(L.Barcode, st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)),
    st.builds(L.QR, st.text(max_size=60)),
    st.builds(L.Feed, st.integers(0, 5)),
    st.builds(L.Cut),
)


@given(
    blocks=st.lists(BLOCKS, max_size=12),
    profile=st.sampled_from(PROFILES),
    columns=st.sampled_from([None, 32, 42]),
)
def test_a_slip_is_the_same_bytes_without_python_escpos_printer_module(blocks, profile, columns):
    from escpos.printer import Dummy

    p = printer(columns=columns, profile=profile)
    receipt = L.Receipt("balance", blocks)
    assert p.render(receipt) == p.render_with(Dummy(profile=profile), receipt)


@pytest.mark.parametrize("name", sorted(all_slips()))
def test_every_template_is_the_same_bytes_without_python_escpos_printer_module(name):
    from escpos.printer import Dummy

    for profile in PROFILES:
        p = printer(profile=profile)
        assert p.render(all_slips()[name]) == p.render_with(Dummy(profile=profile), all_slips()[name]), profile


@pytest.mark.parametrize("pin", [2, 5])
def test_a_drawer_kick_is_the_same_bytes_without_python_escpos_printer_module(pin):
    from escpos.printer import Dummy

    out = Dummy(profile="TM-T20II")
    out.cashdraw(pin)
    assert printer().drawer_kick(pin) == bytes(out.output)


def test_a_slip_renders_without_pillow_qrcode_or_python_barcode():
    """Rendered in a fresh interpreter: none of python-escpos's image libraries is imported by a slip with
    a barcode, a QR code and a drawer kick (a logo still brings them, with python-escpos's printer module),
    nor anyascii when the code page holds every character (1.3 MB)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from tillplug.config.model import PrinterConfig\n"
        "from tillplug.drivers.escpos_printer import EscposPrinter\n"
        "from tillplug.receipts.layout import QR, Barcode, Cut, Receipt, Text\n"
        "p = EscposPrinter(PrinterConfig(name='p', connection='capture://memory'))\n"
        "data = p.render(Receipt('voucher', [Text('£5 off', double=True), Barcode('V-123'), QR('V-123'), Cut()]))\n"
        "p.drawer_kick(2)\n"
        "assert b'V-123' in data\n"
        "heavy = ('PIL', 'qrcode', 'barcode', 'escpos.printer', 'escpos.escpos', 'anyascii')\n"
        "held = sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy)\n"
        "assert held == [], held\n"
    )
    run = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
