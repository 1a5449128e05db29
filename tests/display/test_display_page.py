"""The customer display page, ``GET /display/{lane}``: its key, its guard, its stream, and a sale
walked through in a real headless browser (Chromium), asserting on what the page shows."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.browser import Browser
from tillplug.commands.virtual.till import VirtualTill
from tillplug.display.page import lane_key

TOKEN = "api-token-for-the-tests-0123456789"


@pytest.fixture
def till(tmp_path: Path) -> Iterator[VirtualTill]:
    token = tmp_path / "api-token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    api = {"listen": "127.0.0.1:0", "token": str(token)}
    shown = {"idle_text": ["Welcome", "Lane open"]}
    with VirtualTill(tmp_path / "till", lanes=2, api=api, customer_display=shown) as t:
        t.api.headers["Authorization"] = f"Bearer {TOKEN}"
        yield t


def page_url(till: VirtualTill, lane: int) -> str:
    return f"{till.url}/display/{lane}?key={lane_key(TOKEN, lane)}"


def screens(till: VirtualTill, lane: int, key: str, count: int) -> list[dict]:
    """The first ``count`` screens on the lane's display stream."""
    found: list[dict] = []
    url = f"{till.url}/display/{lane}/events"
    with httpx.stream("GET", url, params={"key": key}, timeout=10, trust_env=False) as answer:
        assert answer.status_code == 200, answer.read()
        for line in answer.iter_lines():
            if line.startswith("data: "):
                found.append(json.loads(line[6:]))
                if len(found) == count:
                    break
    return found


@pytest.fixture
def plain(till: VirtualTill) -> Iterator[httpx.Client]:
    """A client with no API token, as a display's browser is."""
    with httpx.Client(base_url=till.url, timeout=10, trust_env=False) as client:
        yield client


def test_the_page_needs_its_lanes_key_and_never_the_api_token(till, plain):
    assert plain.get("/display/1").status_code == 403
    assert plain.get("/display/1", params={"key": lane_key(TOKEN, 2)}).status_code == 403  # another lane's key
    assert plain.get("/display/1", params={"key": TOKEN}).status_code == 403
    assert plain.get("/display/1/events", params={"key": "x"}).json()["error"]["code"] == "display_key_invalid"
    assert plain.get("/display/x", params={"key": "x"}).status_code == 400
    page = plain.get(page_url(till, 1).removeprefix(till.url))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'nonce-" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    # The key opens the page, never the API.
    assert plain.get("/v1/checkouts/T1", params={"key": lane_key(TOKEN, 1)}).status_code == 401


def test_the_page_obeys_the_apis_host_and_origin_rules(till, plain):
    url = page_url(till, 1).removeprefix(till.url)
    assert plain.get(url, headers={"Host": "evil.example:80"}).json()["error"]["code"] == "host_not_allowed"
    assert plain.get(url, headers={"Origin": "http://evil.example"}).json()["error"]["code"] == "origin_not_allowed"
    assert plain.post(url, json={}).status_code == 405  # read-only


def test_the_lanes_stream_carries_its_screens_only_no_scans_no_other_lane(till):
    key = lane_key(TOKEN, 1)
    got: list[dict] = []
    reader = threading.Thread(target=lambda: got.extend(screens(till, 1, key, 2)))
    reader.start()
    assert till.wait_for(lambda: till.daemon.display_hub._watchers.get(1), timeout=10)
    till.scan(1, "5012345678900")  # a product: the till's business, not the customer display's
    assert till.api.post("/v1/checkouts", json={"transactionId": "L2", "lane": 2}).status_code == 201
    assert till.api.put("/v1/checkouts/L2/member", json={"code": "1000002"}).status_code == 200
    assert till.api.post("/v1/checkouts", json={"transactionId": "L1", "lane": 1}).status_code == 201
    assert till.api.put("/v1/checkouts/L1/member", json={"code": "1000001"}).status_code == 200
    reader.join(15)
    assert [s["state"] for s in got] == ["idle", "sale"], got
    assert got[-1] == {**got[-1], "lane": 1, "member": "****0001", "balance": 1250, "news": "member"}
    assert all(set(s) == set(got[0]) for s in got)  # screens, never events: no code, no transaction id
    text = json.dumps(got)
    assert "5012345678900" not in text and "L1" not in text and "0002" not in text


def test_display_streams_share_the_apis_stream_cap(till):
    cap = till.daemon.api.max_streams
    key = lane_key(TOKEN, 1)
    opened = []
    try:
        for _ in range(cap):
            client = httpx.Client(base_url=till.url, timeout=10, trust_env=False)
            stream = client.stream("GET", "/display/1/events", params={"key": key})
            answer = stream.__enter__()
            assert answer.status_code == 200
            opened.append((client, stream))
        refused = httpx.get(f"{till.url}/display/1/events", params={"key": key}, timeout=10, trust_env=False)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "too_many_streams"
    finally:
        for client, stream in opened:
            stream.__exit__(None, None, None)
            client.close()


def test_a_sale_walked_through_shows_on_the_page_in_a_real_browser(till, tmp_path):
    artifacts = Path(os.environ.get("TILLPLUG_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    with Browser(tmp_path) as browser:
        browser.goto(page_url(till, 1))
        assert browser.wait_for("document.getElementById('display').dataset.connected === 'yes'"), "no stream"
        assert browser.text("#idle") == "Welcome\nLane open"
        assert browser.text("#loyalty") == ""  # hidden while idle
        assert till.api.post("/v1/checkouts", json={"transactionId": "B1", "lane": 1}).status_code == 201
        assert till.api.put("/v1/checkouts/B1/member", json={"code": "1000001"}).status_code == 200
        assert browser.wait_for("document.querySelector('#balance .value').textContent === '1,250'")
        assert browser.text("#member") == "Member\n****0001"
        assert browser.text("#idle") == ""
        assert till.api.post("/v1/checkouts/B1/points", json={"points": 500}).status_code == 200
        assert browser.wait_for("document.querySelector('#spent .value').textContent === '500'")
        assert browser.text("#balance") == "Balance\n750"
        applied = till.api.post("/v1/checkouts/B1/vouchers", json={"code": "ALICE-5OFF-0001"})
        assert applied.status_code == 200, applied.text
        assert browser.wait_for("!document.getElementById('voucher').hidden")
        assert browser.text("#voucher") == "Voucher accepted\n£5 off your shop"
        refused = till.api.post("/v1/checkouts/B1/vouchers", json={"code": "ALICE-USED-0003"})
        assert refused.json()["error"]["code"] == "voucher_already_used", refused.text
        assert browser.wait_for("!document.getElementById('refused').hidden")
        assert browser.text("#refused") == "Voucher refused\nalready used"
        done = till.api.post("/v1/checkouts/B1/complete", json={"total": 2500, "paymentConfirmed": True}).json()
        earned = done["expectedPoints"]
        assert browser.wait_for(f"document.querySelector('#earned .value').textContent === '+{earned}'")
        assert browser.text("#balance") == f"Balance\n{750 + earned:,}"
        assert browser.text("#refused") == ""  # news of one moment: gone with the next
        shown = browser.text("#display")
        png = browser.screenshot(artifacts / "customer-display-lane1.png")
    # Nothing but what the screen shows: no account number, no id, no transaction.
    assert "1000001" not in shown and "B1" not in shown and "5a1b2c3d" not in shown
    with Image.open(png) as image:
        assert image.size == (800, 480)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16) or []
    background = max(colours)[1]
    assert background == (0x10, 0x24, 0x3E)  # the page's own background fills the screen
    assert any(sum(colour) > 600 for _, colour in colours)  # and white text is drawn on it


def test_display_url_prints_each_lanes_address_with_its_key(tmp_path, capsys):
    from tillplug.commands.cli import main
    from tillplug.config import example_text

    token = tmp_path / "api-token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    state = tmp_path / "state"
    text = example_text().replace('# token = "credential:tillplug_api-token"', f'token = "{token}"')
    text = text.replace('state_dir = "/var/lib/tillplug"', f'state_dir = "{state}"')
    config = tmp_path / "tillplug.toml"
    config.write_text(text)
    assert main(["display-url", "--config", str(config), "--lane", "2", "--base", "http://till-07.shop.lan:8765"]) == 0
    assert capsys.readouterr().out.strip() == f"http://till-07.shop.lan:8765/display/2?key={lane_key(TOKEN, 2)}"
