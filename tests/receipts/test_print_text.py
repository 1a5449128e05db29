"""Text that prints: no '?', a printable mask, the profile's paper, 58 mm barcodes that scan; a fresh install."""

import os
import subprocess
import sys
from datetime import datetime

import pytest
import zxingcpp
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from tillplug.drivers.escpos_printer import EscposPrinter

from tillplug.commands.cli import main
from tillplug.config.model import PrinterConfig
from tillplug.engine.models import Benefit, Wallet
from tillplug.logs import mask
from tillplug.receipts import templates as T
from tillplug.receipts.code128 import escpos_payload, from_escpos_payload, symbol_count
from tillplug.receipts.layout import Receipt, Text
from tillplug.receipts.preview import interpret, render_png

WHEN = datetime(2026, 11, 26, 9, 30)
CTX = T.SlipContext("till-01", "branch-0001", "GBP", ("Corner Shop",), ("Thank you",))


def printer(**kw):
    return EscposPrinter(PrinterConfig(name="p", connection="capture://memory", **{"profile": "TM-T20II", **kw}))


def voucher(code, name="£5 off", state="redeemed"):
    times = {"redeemed": {"redeemedAt": "2026-11-02T00:00:00.000Z"}, "created": {}}[state]
    return Benefit.model_validate(
        {
            "id": "b1",
            "createdAt": "2026-11-01T00:00:00.000Z",
            "expiresAt": "2026-12-31T00:00:00.000Z",
            "code": {"value": code},
            "reward": {"id": "r1", "name": name, "discounts": [{"type": "ABSOLUTE", "value": 500}]},
            **times,
        }
    )


def wallet(reward_name, tier_name):
    return Wallet.model_validate(
        {
            "pointsBalance": 1250,
            "lifetimeEarn": 4000,
            "tier": {"name": tier_name},
            "vouchers": [voucher("X-1", reward_name).model_dump(by_alias=True)],
        }
    )


NAMES = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="?"), min_size=1, max_size=60)


@given(reward=NAMES, tier=NAMES, member_id=NAMES)
def test_any_unicode_name_prints_without_a_question_mark_or_a_stray_command(reward, tier, member_id):
    p = printer()
    data = p.render(T.balance_slip(CTX, mask(member_id), wallet(reward, tier), WHEN))
    preview = interpret(data)
    text = preview.text(p.columns)
    assert "?" not in text and "\ufffd" not in text
    assert preview.unknown == []  # a control character in a name never reaches the printer as a command


@pytest.mark.parametrize(
    "given_text, printed",
    [
        ("Ewa \u2013 \u017b\u00f3\u0142\u0107\u2019s caf\u00e9", "Ewa - Z\u00f3lc's caf\u00e9"),
        ("e\u0301clair", "\u00e9clair"),
        ("Bar \U0001f600", "Bar"),  # an emoji is left out, never printed as its name
    ],
)
def test_characters_the_code_page_lacks_are_transliterated_and_the_rest_kept(given_text, printed):
    p = printer()
    data = p.render(T.Receipt("test", [Text(given_text)]))
    assert printed in interpret(data).text()


def test_the_member_mask_prints_as_stars():
    data = printer().render(T.balance_slip(CTX, mask("8c1e5b3a-0000-4000-8000-000000000001"), wallet("R", "G"), WHEN))
    assert "****0001" in interpret(data).text()


def test_columns_and_dots_come_from_the_profile_unless_the_config_says_otherwise(capsys, tmp_path):
    assert (printer(profile="TM-T88V").columns, printer(profile="TM-T88V").dots) == (42, 512)
    assert (printer(profile="POS-5890").columns, printer(profile="POS-5890").dots) == (32, 384)
    assert printer(profile="TM-T88V", columns=48).columns == 48
    assert (printer(profile="default").columns, printer(profile="default").dots) == (48, 576)  # no paper in it
    data = printer(profile="TM-T88V").render(T.balance_slip(CTX, "…0001", wallet("R", "G"), WHEN))
    assert "Balance                          1,250 pts" in interpret(data).text(42)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'till_id="t"\nbranch_id="b"\n[engine]\npreset="simulator"\n'
        '[[printers]]\nname="p"\nconnection="capture://memory"\nprofile="TM-T88V"\ncolumns=48\n'
    )
    assert main(["check-config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "printers[0]: printer p: columns = 48 but profile TM-T88V prints 42 columns" in out


@given(st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=40))
def test_code128_payload_reads_back_as_the_code(code):
    text, values = from_escpos_payload(escpos_payload(code))
    assert text == code and len(values) + 1 == symbol_count(code)


@pytest.mark.parametrize("code", ["ALICE-5OFF-0001", "123456789012345", "LOCAL-AB12CD34", "0123456789012345678901"])
def test_on_58mm_the_barcode_is_kept_whenever_it_fits_and_it_scans(tmp_path, code):
    p = printer(profile="POS-5890")
    preview = interpret(p.render(T.voucher_receipt(CTX, voucher(code), burned=False, when=WHEN)))
    [bar] = [i for i in preview.items if i.kind == "barcode"]
    assert bar.text == code
    png = render_png(preview, tmp_path / "v.png", columns=p.columns, width_px=p.dots)
    decoded = {(r.format.name, r.text) for r in zxingcpp.read_barcodes(Image.open(png))}
    assert ("Code128", code) in decoded


def test_a_code_too_long_for_the_paper_is_never_split_the_qr_carries_it(tmp_path):
    code = "VOUCHER-ABCDEFGHIJKLMNOPQRSTUVWXYZ-0001"  # 38 characters: more than 32 columns of 58 mm paper
    p = printer(profile="POS-5890")
    preview = interpret(p.render(T.voucher_receipt(CTX, voucher(code), burned=False, when=WHEN)))
    assert [i for i in preview.items if i.kind == "barcode"] == []
    assert [i.text for i in preview.items if i.kind == "qr"] == [code]
    [line] = [i for i in preview.items if i.kind == "text" and code in i.text]  # one line, in the small font
    assert line.style.small and len(line.text) <= p.small_columns == 42


@pytest.mark.system
def test_doctor_and_test_print_work_on_a_fresh_install(tmp_path):
    cache = tmp_path / "never-created" / "cache"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'till_id="t"\nbranch_id="b"\nstate_dir="{tmp_path}/state"\ncache_dir="{cache}"\n'
        f'[engine]\npreset="simulator"\n'
        f'[[printers]]\nname="p"\nconnection="capture://{tmp_path}/out.bin"\nprofile="TM-T20II"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "ESCPOS_CAPABILITIES_PICKLE_DIR"}
    r = subprocess.run(
        [sys.executable, "-m", "tillplug", "test-print", "--config", str(cfg), "--printer", "p"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "test page printed to p" in r.stdout
    assert b"Test page" in (tmp_path / "out.bin").read_bytes().replace(b"\x00", b"")
    code = (
        "from tillplug.commands.doctor import Doctor;"
        f"d = Doctor({str(cfg)!r}); d.check_config(); d.check_printers();"
        "print([(f.verdict, f.detail) for f in d.findings])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "('ok', 'ok')" in r.stdout, r.stdout


# -- #27: the slip's render, faster and byte for byte the same ----------------------------------


def _as_python_escpos_renders(p: EscposPrinter, receipt: Receipt) -> bytes:
    """The bytes python-escpos's own printer gives, fresh for each slip (as before #27)."""
    from escpos.printer import Dummy

    return EscposPrinter(p.config).render_with(Dummy(profile=p.config.profile), receipt)


@given(st.text(st.characters(codec="utf-8"), max_size=40))
def test_the_ascii_first_encoder_prints_what_python_escpos_prints(text):
    """Plain ASCII is encoded at once and the code page's table is built once per printer; any text, a
    header's letters the page lacks and control characters too, comes out as python-escpos made it."""
    p = printer()
    ctx = T.SlipContext("till-01", "branch-0001", "GBP", (text, "Corner Shop"), ("Thank you",))
    wallet = Wallet.model_validate({"pointsBalance": 1234, "lifetimeEarn": 5678, "vouchers": []})
    for receipt in (T.balance_slip(ctx, mask("5a1b2c3d-0000"), wallet), T.refund_slip(ctx, "TX-1", 500)):
        first = p.render(receipt)
        assert first == p.render(receipt) == _as_python_escpos_renders(p, receipt)


def test_a_printer_builds_its_code_page_table_once_not_per_slip(monkeypatch):
    """The code page's character table was built for every slip: a quarter of a render."""
    from tillplug.drivers.escpos_bytes import CodePages

    built = []
    real = CodePages.__init__
    monkeypatch.setattr(CodePages, "__init__", lambda self, profile: built.append(profile) or real(self, profile))
    p = printer()
    ctx = T.SlipContext("till-01", "branch-0001", "GBP", ("Café Ñandú",), ("Thank you",))
    for _ in range(3):
        p.render(T.refund_slip(ctx, "TX-1", 500))
    assert len(built) == 1
