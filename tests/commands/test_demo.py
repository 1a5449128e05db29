"""`tillplug demo` is the README's first command: it must run green from a fresh clone."""

import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.system  # the demo runs the whole product as processes


def test_demo_runs_every_use_case_and_saves_the_slips(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tillplug", "demo", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Every use case ran end to end." in result.stdout
    told = [line for line in result.stdout.splitlines() if "till told:" in line]
    assert not [line for line in told if "{'" in line or "'type'" in line], told  # no Python reprs for the cashier
    assert any("accepted: £5.00 off (used up now)" in line for line in told), told
    assert "duplicates: none" in result.stdout
    assert len(list((tmp_path / "out").glob("slip-*.png"))) >= 6
    marker = "customer display: "
    shown = [line.split(marker, 1)[1] for line in result.stdout.splitlines() if marker in line]
    assert shown[0] == "│****0001            │ │Balance 1,250       │", shown
    assert "│Points used 500     │ │Balance 750         │" in shown
    assert any(line.startswith("│Points earned +") for line in shown), shown
    assert any("drawer_state events: open, closed" in line for line in told), told
    if shutil.which("chromium"):
        assert (tmp_path / "out" / "customer-display.png").stat().st_size > 1000


def test_interactive_demo_takes_barcodes_and_commands(tmp_path):
    script = "open T-9\n1000001\npoints 100\nvoucher ALICE-5OFF-0001\ncomplete 500\nreturn T-9 250\nquit\n"
    result = subprocess.run(
        [sys.executable, "-m", "tillplug", "demo", "--interactive", "--out", str(tmp_path)],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"points": 100' in result.stdout and "ALICE-5OFF-0001" in result.stdout
    assert '"state": "completed"' in result.stdout
    assert '← 201 {"returnId": "RET-' in result.stdout  # the return of T-9 is taken


def test_the_cashier_reads_what_a_voucher_takes_off_in_words():
    """The demo told the cashier `£5 off your shop: [{'type': 'ABSOLUTE', 'value': 500.0}] (burned)`."""
    from tillplug.commands.demo import voucher_sentence

    answer = {"name": "£5 off your shop", "discounts": [{"type": "ABSOLUTE", "value": 500.0}]}
    assert voucher_sentence(answer, used=True) == "voucher “£5 off your shop” accepted: £5.00 off (used up now)"
    two = {
        "name": "Coffee deal",
        "discounts": [{"type": "PERCENTAGE", "value": 10}, {"type": "FIXED", "value": 0, "sku": "COFFEE"}],
    }
    assert voucher_sentence(two, used=False) == "voucher “Coffee deal” accepted: 10% off and COFFEE for £0.00"
    assert (
        voucher_sentence({"code": "X-1", "discounts": []}, used=False)
        == "voucher “X-1” accepted: no discount on this sale"
    )
