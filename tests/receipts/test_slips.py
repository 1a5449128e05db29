"""Slips a shop manager would sign off: what each slip says, in the shop's language, with its own footer and logo."""

from datetime import datetime

import pytest
from PIL import Image
from tillplug.drivers.escpos_printer import EscposPrinter

from tillplug.commands.virtual.till import VirtualTill
from tillplug.config.model import Config, PrinterConfig
from tillplug.engine.models import Benefit, Wallet
from tillplug.errors import ConfigError
from tillplug.money import Money
from tillplug.receipts import templates as T
from tillplug.receipts.messages import CATALOGUE, LANGUAGES
from tillplug.receipts.preview import interpret, render_png

WHEN = datetime(2026, 11, 26, 9, 30)


def ctx(**kw):
    return T.SlipContext("till-01", "branch-0001", kw.pop("currency", "GBP"), ("Corner Shop",), ("Thank you",), **kw)


def text_of(receipt, columns=48):
    p = EscposPrinter(PrinterConfig(name="p", connection="capture://memory", profile="TM-T20II"))
    return interpret(p.render(receipt)).text(columns)


def benefit(code="ALICE-5OFF-0001", *, expires="2026-12-31T00:00:00.000Z", redeemed=True, summary=None):
    return Benefit.model_validate(
        {
            "id": "b1",
            "createdAt": "2026-11-01T00:00:00.000Z",
            "expiresAt": expires,
            "code": {"value": code},
            "reward": {"id": "r1", "name": "Free coffee", "summary": summary, "discounts": []},
            **({"redeemedAt": "2026-11-02T00:00:00.000Z"} if redeemed else {}),
        }
    )


@pytest.mark.parametrize(
    "language, money, pts, title",
    [
        ("en", "£12.34", "1,250 pts", "Points spent"),
        ("fr", "12,34\xa0€", "1\u202f250 pts", "Points utilisés"),
        ("de", "12,34\xa0€", "1.250 Pkt.", "Punkte eingelöst"),
        ("es", "12,34\xa0€", "1.250 ptos.", "Puntos canjeados"),
        ("nl", "€\xa012,34", "1.250 ptn", "Punten ingewisseld"),
    ],
)
def test_slips_speak_the_shops_language_with_babel_numbers_money_and_dates(language, money, pts, title):
    c = ctx(language=language, currency="GBP" if language == "en" else "EUR")
    assert c.money(1234) == money and c.points(1250) == pts
    slip = T.points_slip(c, 100, Money(1234, c.currency), 1250, WHEN, member="…0001", sale="TX-1")
    text = text_of(slip)
    assert " ".join(title) in text  # the title is double width: drawn as spaced letters
    assert "****0001" in text and "TX-1" in text


def test_every_language_translates_every_message():
    english = {k for table in CATALOGUE.values() for k in table}
    assert set(CATALOGUE) == set(LANGUAGES) - {"en"}
    for language, table in CATALOGUE.items():
        assert set(table) == english, language
        for key, value in table.items():  # the placeholders survive translation
            assert sorted(part.split("}")[0] for part in key.split("{")[1:]) == sorted(
                part.split("}")[0] for part in value.split("{")[1:]
            ), (language, key)


def test_the_language_is_checked_in_the_config():
    base = {"till_id": "t", "branch_id": "b", "engine": {"preset": "simulator"}}
    assert Config.model_validate({**base, "receipts": {"language": "fr_BE"}}).receipts.language == "fr_BE"
    with pytest.raises(ValueError, match="slips are written in"):
        Config.model_validate({**base, "receipts": {"language": "pl"}})


def test_each_slip_kind_can_have_its_own_footer():
    c = ctx(footers={"voucher": ("Valid in every store",)})
    assert "Valid in every store" in text_of(T.voucher_receipt(c, benefit(), burned=False, when=WHEN))
    balance = text_of(T.balance_slip(c, "…0001", Wallet.model_validate({"pointsBalance": 1}), WHEN))
    assert "Valid in every store" not in balance and "Thank you" in balance


def test_a_used_voucher_has_no_scannable_code_and_a_valid_one_shows_expiry_and_terms():
    used = interpret(
        EscposPrinter(PrinterConfig(name="p", connection="capture://memory", profile="TM-T20II")).render(
            T.voucher_receipt(ctx(), benefit(summary="One per visit"), burned=True, when=WHEN)
        )
    )
    assert [i for i in used.items if i.kind in ("barcode", "qr")] == []
    valid = text_of(T.voucher_receipt(ctx(), benefit(summary="One per visit"), burned=False, when=WHEN))
    assert "Valid until 31 Dec 2026" in valid and "One per visit" in valid and "[CODE128 barcode" in valid


def test_expired_vouchers_are_not_listed_on_the_balance_slip():
    wallet = Wallet.model_validate(
        {
            "pointsBalance": 10,
            "vouchers": [
                benefit("OLD", expires="2026-01-01T00:00:00.000Z").model_dump(by_alias=True),
                benefit("NEW").model_dump(by_alias=True) | {"reward": {"id": "r2", "name": "Free tea"}},
            ],
        }
    )
    text = text_of(T.balance_slip(ctx(), "…0001", wallet, WHEN))
    assert "Free tea" in text and "Free coffee" not in text


def test_the_logo_is_rasterised_once_printed_centred_and_shown_by_the_preview(tmp_path, monkeypatch):
    logo = tmp_path / "logo.png"
    Image.new("L", (800, 100), 0).save(logo)  # wider than the paper: scaled to fit
    p = EscposPrinter(PrinterConfig(name="p", connection="capture://memory", profile="TM-T20II"))
    calls = []
    rasterise = p._rasterise
    monkeypatch.setattr(p, "_rasterise", lambda path: calls.append(path) or rasterise(path))
    slip = T.points_slip(ctx(logo=str(logo)), 1, Money(1, "GBP"), 1, WHEN)
    first, second = p.render(slip), p.render(slip)
    assert first == second and calls == [str(logo)]
    [image] = [i for i in interpret(first).items if i.kind == "image"]
    assert image.style.align == "center" and image.raster[0] * 8 == 576 and image.raster[1] == 72
    png = Image.open(render_png(interpret(first), tmp_path / "slip.png"))
    assert png.getpixel((32 + 288, 32 + 36)) == 0  # the black logo, drawn inside the paper


def test_a_missing_logo_never_stops_a_slip(tmp_path):
    slip = T.points_slip(ctx(logo=str(tmp_path / "gone.png")), 1, Money(1, "GBP"), 1, WHEN)
    assert "Points used" in text_of(slip)


def test_the_flows_give_each_slip_its_member_sale_and_redemptions(tmp_path):
    with VirtualTill(tmp_path / "t") as till:
        assert till.api.post("/v1/checkouts", json={"transactionId": "S1", "lane": 1}).status_code == 201
        assert till.api.put("/v1/checkouts/S1/member", json={"code": "1000001"}).status_code == 200
        spent = till.api.post("/v1/checkouts/S1/points", json={"points": 100}).json()
        assert spent["print"]["state"] == "queued"
        done = till.api.post("/v1/checkouts/S1/complete", json={"total": 2550, "paymentConfirmed": True}).json()
        assert done["print"]["state"] == "queued"
        assert till.wait_for(lambda: till.printed(1).count(b"\x1dV") >= 2)
        text = interpret(till.printed(1)).text()
    points_slip, summary = text.split("✂")[:2]
    assert "****" in points_slip and "S1" in points_slip
    assert "Points spent" in summary and "100 pts" in summary and "****" in summary


def test_a_config_error_names_the_bad_language(tmp_path):
    from tillplug.config import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text('till_id="t"\nbranch_id="b"\n[engine]\npreset="simulator"\n[receipts]\nlanguage="xx"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert "receipts.language" in str(err.value.problems)
