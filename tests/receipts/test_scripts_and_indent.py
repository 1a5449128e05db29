"""What a slip does with text its printer cannot show, and the voucher list's layout."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.receipts.test_print_text import CTX, WHEN, printer, voucher, wallet
from tillplug.config.model import PrinterConfig
from tillplug.engine.models import Wallet
from tillplug.logs import mask
from tillplug.receipts import templates as T
from tillplug.receipts.layout import Columns, Text, wrap
from tillplug.receipts.paper import layout_warnings
from tillplug.receipts.preview import interpret


def printed(receipt, **kw):
    p = printer(**kw)
    return interpret(p.render(receipt)).text(p.columns)


def balance_text(reward_name="£5 off", tier_name="Gold", vouchers=None):
    w = wallet(reward_name, tier_name)
    if vouchers:
        w = Wallet.model_validate(
            {**w.model_dump(by_alias=True), "vouchers": [v.model_dump(by_alias=True) for v in vouchers]}
        )
    return printed(T.balance_slip(CTX, mask("1000001"), w, WHEN))


def test_the_until_line_of_each_voucher_keeps_its_indent():
    """The voucher list's "until" lines lost their indent: '- £5 off' then 'until 31 Dec 2026' at the margin."""
    lines = balance_text(
        vouchers=[voucher("X-1", "£5 off", "created"), voucher("X-2", "Free coffee", "created")]
    ).splitlines()
    at = lines.index("- £5 off")
    assert lines[at + 1] == "  until 31 Dec 2026"
    assert lines[lines.index("- Free coffee") + 1] == "  until 31 Dec 2026"
    long_name = "£5 off your weekly shop at any of our stores nationwide"
    lines = balance_text(vouchers=[voucher("X-1", long_name, "created")]).splitlines()
    at = lines.index("- £5 off your weekly shop at any of our stores")
    assert lines[at + 1 : at + 3] == ["  nationwide", "  until 31 Dec 2026"]  # the item's lines line up


@given(st.integers(0, 6), st.text(st.sampled_from("ab "), max_size=40), st.integers(12, 48))
def test_wrap_keeps_a_paragraphs_indent_on_every_line_it_makes(indent, words, width):
    lines = wrap(" " * indent + words.strip(), width)
    assert all(len(line) <= width for line in lines)
    if words.strip():
        assert all(line.startswith(" " * indent) for line in lines)
        assert "".join("".join(lines).split()) == "".join(words.split())  # every letter, in order
        if all(len(word) <= width - indent for word in words.split()):
            assert " ".join(" ".join(lines).split()) == " ".join(words.split())  # no word split


# -- scripts no code page holds ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["免费咖啡", "Бесплатный кофе", "קפה חינם", "Café 免费", "ก๋วยเตี๋ยว"])
def test_a_voucher_name_in_a_script_the_printer_lacks_prints_as_the_stated_fallback(name):
    """'免费咖啡' printed as 'MianFeiKaFei' (romanisation run together): a wrong word.  The slip says
    'Voucher' instead, as it does for a voucher with no name."""
    text = balance_text(reward_name=name, vouchers=[voucher("X-1", name, "created")])
    assert "- Voucher\n" in text
    assert "MianFei" not in text and "Besplat" not in text
    receipt = printed(T.voucher_receipt(CTX, voucher("ALICE-5OFF-0001", name, "created"), burned=False, when=WHEN))
    assert "\nVoucher\n" in receipt and "ALICE-5OFF-0001" in receipt  # the code still says which voucher


def test_a_tier_name_the_printer_cannot_show_leaves_the_tier_row_out():
    assert "Tier" in balance_text(tier_name="Gold")
    text = balance_text(tier_name="金卡")
    assert "Tier" not in text and "JinKa" not in text


@pytest.mark.parametrize(
    "given_text, shown",
    [
        ("Free ☕ coffee", "Free coffee"),
        ("☕ Coffee", "Coffee"),
        ("Bar 😀", "Bar"),
        ("Ewa \u2013 \u017b\u00f3\u0142\u0107\u2019s caf\u00e9", "Ewa - Z\u00f3lc's caf\u00e9"),  # Latin: the same word
        ("Łódź", "Lódz"),
    ],
)
def test_emoji_are_left_out_and_latin_letters_keep_their_word(given_text, shown):
    """Emoji printed as their names (':coffee:')."""
    text = printed(T.Receipt("test", [Text(given_text)]))
    assert shown in text.splitlines() and ":" not in text


def test_text_with_no_stated_fallback_marks_what_it_could_not_print():
    """A line of the shop's own (a header) in a script the printer lacks: the rest prints, the run is
    marked, never romanised."""
    text = printed(T.Receipt("test", [Text("Welcome 欢迎光临 to the shop")]))
    assert "Welcome (...) to the shop" in text.splitlines()


# Cyrillic, Greek, Hebrew, Arabic, Devanagari, Thai, Hangul, Han
SCRIPTS = [(0x0400, 0x04FF), (0x0370, 0x03FF), (0x05D0, 0x05EA), (0x0620, 0x064A), (0x0900, 0x097F), (0x0E01, 0x0E30)]
SCRIPTS += [(0xAC00, 0xD7A3), (0x4E00, 0x9FFF)]
LETTERS_OF_OTHER_SCRIPTS = st.one_of(
    [st.characters(min_codepoint=lo, max_codepoint=hi, categories=("Lu", "Ll", "Lo")) for lo, hi in SCRIPTS]
)


@given(st.text(LETTERS_OF_OTHER_SCRIPTS, min_size=1, max_size=12), st.text(st.sampled_from("abc é"), max_size=8))
def test_no_name_is_ever_romanised_on_a_slip(foreign, latin):
    """Any voucher name holding a letter the code page lacks prints as the fallback, whole."""
    p = printer()
    name = latin + foreign
    if all(p_can_print(p, c) for c in foreign):
        return  # the code page has these letters (e.g. some Greek in CP858? none): nothing to fall back from
    receipt = T.Receipt("test", [Text(name, fallback="Voucher")])
    assert interpret(p.render(receipt)).text(p.columns).strip() == "Voucher"


def p_can_print(p, char):
    p.render(T.Receipt("test", [Text("x")]))  # sets the encoder up
    return p._encoder.can_encode(p.code_page, char)


def test_columns_fall_back_on_their_value_too():
    text = printed(T.Receipt("test", [Columns("Tier", "金卡", fallback="-"), Columns("Left", "Right")]))
    assert "Tier" in text and "JinKa" not in text and "Right" in text


# -- a profile whose code-page numbers the printer may not share ------------------------------------


def test_a_profile_that_lists_the_code_page_at_two_numbers_is_warned_about():
    """POS-5890 (and its clones) printed every accented letter as '?' without a warning: the profile lists
    CP858 as two table numbers, and the printer in hand had another page at the one used."""
    clone = PrinterConfig(name="p", connection="capture://memory", profile="POS-5890")
    [warning] = [w for w in layout_warnings(clone) if "code page" in w]
    assert "CP858" in warning and "'?'" in warning and "tillplug test-print --printer p" in warning
    assert "code_page" in warning
    epson = PrinterConfig(name="p", connection="capture://memory", profile="TM-T20II")
    assert not [w for w in layout_warnings(epson) if "code page" in w]
    assert "(e.g. CP850, listed once)" in warning
    pinned = PrinterConfig(name="p", connection="capture://memory", profile="POS-5890", code_page="CP850")
    assert not [w for w in layout_warnings(pinned) if "code page" in w]


def test_check_config_shows_the_code_page_warning(tmp_path, capsys):
    from tillplug.commands.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'till_id="t"\nbranch_id="b"\n[engine]\npreset="simulator"\n'
        '[[printers]]\nname="front"\nconnection="capture:///tmp/x"\nprofile="POS-5890"\n'
    )
    assert main(["check-config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "warning: printers[0]: printer front: profile POS-5890 lists code page CP858" in out
