"""``tillplug demo``: the whole product on one machine, no hardware, no credentials.

It starts the engine simulator, a virtual scanner (a pty), a virtual printer
(capture) and the daemon, then walks through every use case as a story: what
the cashier did, what the till was told, and the slip that came out.  It ends
with the simulator's ledger: what really reached the engine.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tillplug.commands.virtual.display import VirtualPoleDisplay, page_screenshot
from tillplug.commands.virtual.printer import FakeNetworkPrinter
from tillplug.commands.virtual.till import VirtualTill
from tillplug.engine.models import Discount
from tillplug.receipts.preview import interpret, render_png
from tillplug.receipts.templates import SlipContext, discount_words

BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"


class Story:
    def __init__(self, till: VirtualTill, out: Path, color: bool, display: VirtualPoleDisplay | None = None) -> None:
        self.till = till
        self.display = display
        self.display_shown = ""
        self.drawer_printer: FakeNetworkPrinter | None = None
        self.out = out
        self.color = color
        self.step = 0
        self.printed_upto = 0
        self.slips = 0
        self.failures: list[str] = []

    def c(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.color else text

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def chapter(self, title: str, what: str) -> None:
        self.step += 1
        self.say()
        self.say(self.c(BOLD, f"── {self.step}. {title} " + "─" * max(0, 60 - len(title))))
        self.say(self.c(DIM, what))

    def cashier(self, text: str) -> None:
        self.say(f"  cashier: {text}")

    def told(self, what: str, ok: bool = True) -> None:
        self.say("  till told: " + self.c(GREEN if ok else RED, what))

    def expect(self, condition: bool, what: str) -> None:
        if not condition:
            self.failures.append(what)
            self.say(self.c(RED, f"  ✗ expected: {what}"))

    def api(self, method: str, path: str, body: object = None) -> Any:
        shown = f" {json.dumps(body)}" if body is not None else ""
        self.say(self.c(DIM, f"  POS → {method} {path}{shown}"))
        r = self.till.api.request(method, path, json=body)
        data = r.json()
        self.say(self.c(DIM, f"  ← {r.status_code} {json.dumps(data)[:160]}"))
        return r.status_code, data

    def scan(self, text: str, until: str) -> dict[str, Any] | None:
        mark = max((e["id"] for e in self.till.events()), default=0)
        self.cashier(f"scans {text!r}")
        self.till.scan(1, text)
        found: list[dict[str, Any]] = []

        def arrived() -> bool:
            found[:] = [e for e in self.till.events() if e["id"] > mark and e["type"] in (until, "error")]
            return bool(found)

        self.till.wait_for(arrived, timeout=10)
        return found[0] if found else None

    def customer_sees(self) -> None:
        """What the customer's pole display shows now (it follows the sale within moments)."""
        display = self.display
        if display is None:
            return
        self.till.wait_for(lambda: display.text() != self.display_shown, timeout=3)
        self.display_shown = display.text()
        lines = (*display.lines, "", "")[:2]
        self.say(self.c(DIM, "  customer display: ") + " ".join(f"│{line}│" for line in lines))

    def page_png(self) -> None:
        """The customer display page (GET /display/1) as the shopper's screen shows it, if Chromium is here."""
        png = page_screenshot(f"{self.till.url}/display/1", self.out / "customer-display.png")
        if png is None:
            self.say(self.c(DIM, "  (no Chromium here: apt-get install chromium for a PNG of the display page)"))
        else:
            self.say(self.c(DIM, f"  customer display page: {png.name}"))

    def slip(self) -> None:
        """Show whatever the printer got since last time, as text, and save it as PNG."""
        self.till.wait_for(lambda: len(self.till.printed(1)) > self.printed_upto, timeout=5)
        data = self.till.printed(1)[self.printed_upto :]
        self.printed_upto += len(data)
        if not data:
            self.say(self.c(DIM, "  (nothing printed)"))
            return
        preview = interpret(data)
        self.slips += 1
        png = render_png(preview, self.out / f"slip-{self.slips:02d}.png")
        self.say(self.c(DIM, f"  printed ({png.name}):"))
        for line in preview.text(48).rstrip("\n✂-").splitlines():
            if line.strip():
                self.say("    │ " + line)


def run(out_dir: str | None = None, *, color: bool | None = None) -> int:
    out = Path(out_dir or "demo-out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    color = sys.stdout.isatty() if color is None else color
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tillplug-demo-") as work:
        print("Starting the Loyalty Engine simulator, a virtual scanner, a virtual printer and the daemon…", flush=True)
        slips = {"name": "printer1", "connection": f"capture://{work}/printer1.bin", "lane": 1, "profile": "TM-T20II"}
        with (
            VirtualPoleDisplay(Path(work) / "display1") as display,
            FakeNetworkPrinter("ok") as drawer_printer,  # a network printer with a cash drawer and its sensor
            VirtualTill(
                Path(work),
                receipts={"header": ["Corner Shop", "12 High Street"], "footer": ["Thank you for shopping with us"]},
                printers=[slips, DRAWER_PRINTER | {"connection": drawer_printer.url}],
                displays=[{"name": "pole1", "port": str(display.link), "lane": 1}],
                customer_display={"idle_text": ["Corner Shop", "Welcome!"]},
            ) as till,
        ):
            story = Story(till, out, color, display)
            story.drawer_printer = drawer_printer
            _walk(story)
            ledger = till.ledger()
        story.chapter("What reached the engine", "The simulator's ledger: every event, once.")
        for e in ledger["events"]:
            amount = f"{e['points']} points" if e["points"] is not None else f"total {e['total']}"
            story.say(f"  {e['type']:<16} {amount:<14} key …{(e['eventKey'] or '')[-6:]}")
        story.say(f"  duplicates: {ledger['duplicates'] or 'none'}")
        story.say(f"  vouchers burned: {', '.join(b['code'] for b in ledger['burns'])}")
        story.expect(not ledger["duplicates"], "no event counted twice")
    print()
    print(f"Slips saved as PNG in {out} ({story.slips} files). Took {time.monotonic() - started:.1f} s.")
    if story.failures:
        print(story.c(RED, "The demo did not go as expected: " + "; ".join(story.failures)))
        return 1
    print(story.c(GREEN, "Every use case ran end to end."))
    return 0


DEMO_WORDS = SlipContext("demo", "demo", "GBP")  # the demo's till: English, pounds
# Lane 2's printer: a network one with a cash drawer whose sensor reads pin 3 high while it is open.
DRAWER_PRINTER = {
    "name": "printer2",
    "lane": 2,
    "profile": "TM-T20II",
    "drawer_sensor": True,
    "drawer_open_level": "high",
}


def voucher_sentence(answer: dict[str, Any], *, used: bool) -> str:
    """What the cashier reads about an accepted voucher: its name and what it takes off, in words
    (a slip's words: '£5.00 off', '10% off on COFFEE'), never the engine's discount list."""
    discounts = [Discount.model_validate(d) for d in answer.get("discounts") or []]
    takes = " and ".join(discount_words(DEMO_WORDS, d) for d in discounts) or "no discount on this sale"
    name = answer.get("name") or answer.get("code") or "the voucher"
    return f"voucher “{name}” accepted: {takes}" + (" (used up now)" if used else "")


def _walk(s: Story) -> None:  # noqa: PLR0915 -- the demo is one scripted story, told in order
    till = s.till
    _, health = s.api("GET", "/v1/health")
    s.expect(health["status"] == "ok", "a healthy till at start")

    s.chapter("Member look-up", "Alice shows her loyalty card; no sale is open, so it is a balance look-up.")
    e = s.scan("1000001", "member_found")
    s.expect(e is not None and e["type"] == "member_found", "the member is found")
    if e:
        d = e["data"]
        s.told(
            f"member {d['member']}: {d['pointsBalance']:,} points (worth £{d['pointsValue']['amount'] / 100:.2f}), "
            f"{len(d['vouchers'])} voucher(s), tier {d['tier']}"
        )
    s.slip()

    s.chapter(
        "A sale starts; the card attaches the member", "The till opens checkout T-1001 and Alice's card is scanned."
    )
    s.api("POST", "/v1/checkouts", {"transactionId": "T-1001", "lane": 1, "cashierId": "cashier-7"})
    e = s.scan("1000001", "member_attached")
    s.expect(e is not None and e["type"] == "member_attached", "the member is attached to the sale")
    s.told("member attached to T-1001")
    s.customer_sees()

    s.chapter("Spending points as money (3.1)", "Alice spends 500 points; they are taken now, before she pays.")
    status, body = s.api("POST", "/v1/checkouts/T-1001/points", {"points": 500})
    s.expect(status == 200, "500 points are spent")
    if status == 200:
        s.told(f"discount £{body['discount']['amount'] / 100:.2f}, balance after {body['balanceAfter']:,}")
    s.customer_sees()
    s.slip()
    status, body = s.api("POST", "/v1/checkouts/T-1001/points", {"points": 5000})
    s.expect(status == 409 and body["error"]["code"] == "insufficient_points", "5000 points are refused")
    s.told(f"refused: {body['error']['message']} ({body['error']['code']})", ok=False)

    s.chapter("A voucher from the app (3.2)", "Alice shows a voucher code on her phone; it is validated and burned.")
    e = s.scan("ALICE-5OFF-0001", "voucher_result")
    s.expect(e is not None and e["data"].get("ok") is True, "the voucher is accepted")
    if e and e["data"].get("ok"):
        s.told(voucher_sentence(e["data"], used=True))
    s.customer_sees()
    s.slip()
    e = s.scan("ALICE-USED-0003", "voucher_result")
    s.expect(e is not None and e["data"].get("error") == "voucher_already_used", "a used voucher is refused")
    if e:
        s.told(f"refused: {e['data'].get('message')} ({e['data'].get('error')})", ok=False)

    s.chapter("A voucher the cashier picks (3.3)", "The till lists Alice's vouchers; the cashier redeems one for her.")
    status, body = s.api("GET", "/v1/checkouts/T-1001/benefits")
    pick = next((b for b in body.get("benefits", []) if b["state"] == "created"), None)
    s.expect(pick is not None, "an unredeemed voucher to pick")
    if pick:
        s.cashier(f"picks {pick['name']!r}")
        status, body = s.api("POST", f"/v1/checkouts/T-1001/benefits/{pick['id']}/redeem", {})
        s.expect(status == 200, "the picked voucher is redeemed and validated")
        s.told(voucher_sentence(body, used=False))
        s.slip()

    s.chapter(
        "Codes the till handles itself", "A shop-managed code and a product: passed to the till, never to the engine."
    )
    e = s.scan("LOCAL-SUMMER", "scan")
    s.told(f"local code {e['data'].get('code') if e else '?'} (the POS prices it)")
    e = s.scan("4006381333931", "scan")
    s.told(f"product scan, GTIN {e['data'].get('gtin') if e else '?'}")

    s.chapter("Payment and earning (2)", "Alice pays £25.50; the sale is reported for points through the outbox.")
    status, body = s.api(
        "POST",
        "/v1/checkouts/T-1001/complete",
        {
            "total": 2550,
            "paymentConfirmed": True,
            "basket": [
                {"sku": "MILK-1L", "quantity": 2, "amount": 250},
                {"sku": "COFFEE-BEANS", "quantity": 1, "amount": 2300},
            ],
        },
    )
    s.expect(status == 200, "the sale completes")
    s.told(f"completed; {body.get('expectedPoints')} points expected for this sale")
    s.customer_sees()
    s.page_png()
    s.slip()

    s.chapter(
        "A return the next day",
        "Alice brings the coffee beans back: the points she earned on them are taken back and the points "
        "she spent given back, in proportion, once each.",
    )
    s.expect(till.settle(timeout=20), "the sale's points reached the engine")
    returned = {
        "returnId": "RET-1",
        "transactionId": "T-1001",
        "lane": 1,
        "amount": 2300,
        "lines": [{"sku": "COFFEE-BEANS", "quantity": 1, "amount": 2300}],
    }
    status, body = s.api("POST", "/v1/returns", returned)
    s.expect(status == 201, "the return is taken")
    if status == 201:
        take, give = body["takeBack"], body["giveBack"]
        s.told(
            f"{give['points']} points given back, {take['points']} taken back ({take['state']}); "
            f"new balance {body['balanceAfter']:,}"
        )
    s.slip()
    status, body = s.api("POST", "/v1/returns", {**returned, "returnId": "RET-2", "amount": 1000, "lines": []})
    s.expect(status == 409 and body["error"]["code"] == "return_exceeds_sale", "a return past the sale is refused")
    s.told(f"refused: {body['error']['message']} ({body['error']['code']})", ok=False)
    _drawer(s)

    s.chapter("A void gives points back", "Bob spends 200 points, then changes his mind: the sale is voided.")
    s.api("POST", "/v1/checkouts", {"transactionId": "T-1002", "lane": 1})
    s.scan("1000002", "member_attached")
    s.api("POST", "/v1/checkouts/T-1002/points", {"points": 200})
    s.slip()
    status, body = s.api("POST", "/v1/checkouts/T-1002/void")
    s.expect(status == 200 and body.get("pointsRefunded") == 200, "the void refunds 200 points")
    s.told(f"voided; {body.get('pointsRefunded')} points returned")
    s.slip()

    s.chapter(
        "The engine goes down; nothing is lost", "The network drops. A sale completes anyway and waits in the outbox."
    )
    till.sim.sim.faults.update({"down": True})
    s.api("POST", "/v1/checkouts", {"transactionId": "T-1003", "lane": 1})
    s.api("POST", "/v1/checkouts/T-1003/complete", {"total": 999, "paymentConfirmed": True})
    time.sleep(0.3)
    depth = till.daemon.store.stats().depth
    s.told(f"sale completed; {depth} write(s) waiting in the outbox")
    s.expect(depth >= 1, "the sale waits in the outbox during the outage")
    till.sim.sim.faults.update({"down": False})
    till.daemon.deliverer.wake()
    s.say("  the engine is back…")
    delivered = till.settle(timeout=20)
    s.expect(delivered, "the outbox drains once the engine is back")
    s.told("every sale has reached the engine" if delivered else "sales are still waiting for the engine", ok=delivered)


def _drawer(s: Story) -> None:
    """The cash drawer on lane 2: kicked, seen open, pushed shut, seen closed (its sensor, DLE EOT 1)."""
    fake = s.drawer_printer
    if fake is None:
        return
    s.chapter("The cash drawer", "Lane 2's drawer opens for change; the till waits until the cashier shuts it.")
    mark = max((e["id"] for e in s.till.events()), default=0)

    def cashier_shuts_it() -> None:
        if s.till.wait_for(lambda: fake.drawer_open, timeout=10):
            time.sleep(0.5)
            fake.close_drawer()

    shutter = threading.Thread(target=cashier_shuts_it)
    shutter.start()
    status, body = s.api("POST", "/v1/drawer/open", {"printer": "printer2", "waitForCloseSeconds": 10})
    shutter.join(15)
    states = [e["data"]["state"] for e in s.till.events() if e["id"] > mark and e["type"] == "drawer_state"]
    s.expect(status == 202 and body.get("drawer", {}).get("state") == "closed", "the drawer is seen closed again")
    s.expect(states == ["open", "closed"], "drawer_state events: open, then closed")
    s.told(f"drawer_state events: {', '.join(states) or 'none'}; the call answered when it closed")


def interactive(out_dir: str | None = None) -> int:  # noqa: C901, PLR0912, PLR0915 -- one branch per prompt command
    """Type barcodes and till commands at a prompt."""
    out = Path(out_dir or "demo-out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    help_text = (
        "Type a barcode to scan it (try 1000001, ALICE-5OFF-0001, 4006381333931), or a command:\n"
        "  open TX | points N | voucher CODE | benefits | redeem ID | complete TOTAL | void | "
        "return TX AMOUNT | ledger | help | quit"
    )
    with tempfile.TemporaryDirectory(prefix="tillplug-demo-") as work, VirtualTill(Path(work)) as till:
        s = Story(till, out, sys.stdout.isatty())
        print(help_text)
        tx = None
        while True:
            try:
                line = input("till> ").strip()
            except EOFError:
                break
            if not line:
                continue
            word, _, rest = line.partition(" ")
            if word in ("quit", "exit"):
                break
            if word == "help":
                print(help_text)
            elif word == "open":
                tx = rest or f"T-{int(time.time())}"
                s.api("POST", "/v1/checkouts", {"transactionId": tx, "lane": 1})
            elif word in ("points", "voucher", "benefits", "redeem", "complete", "void") and tx is None:
                print("open a checkout first: open TX")
            elif word == "points":
                s.api("POST", f"/v1/checkouts/{tx}/points", {"points": int(rest or 0)})
                s.slip()
            elif word == "voucher":
                s.api("POST", f"/v1/checkouts/{tx}/vouchers", {"code": rest})
                s.slip()
            elif word == "benefits":
                s.api("GET", f"/v1/checkouts/{tx}/benefits")
            elif word == "redeem":
                s.api("POST", f"/v1/checkouts/{tx}/benefits/{rest}/redeem", {})
                s.slip()
            elif word == "complete":
                s.api("POST", f"/v1/checkouts/{tx}/complete", {"total": int(rest or 0), "paymentConfirmed": True})
                s.slip()
                tx = None
            elif word == "void":
                s.api("POST", f"/v1/checkouts/{tx}/void")
                s.slip()
                tx = None
            elif word == "return":  # a completed sale: return TX AMOUNT (minor units)
                sale, _, amount = rest.partition(" ")
                if not sale or not amount.strip().isdigit():
                    print("return TX AMOUNT, e.g. return T-9 250")
                    continue
                returned = {"returnId": f"RET-{time.time_ns()}", "transactionId": sale, "amount": int(amount)}
                s.api("POST", "/v1/returns", returned)
                s.slip()
            elif word == "ledger":
                print(json.dumps(till.ledger(), indent=2))
            else:
                e = s.scan(line, "scan")
                time.sleep(0.3)
                for ev in till.events():
                    if e and ev["id"] >= e["id"]:
                        print(f"  event {ev['type']}: {json.dumps(ev['data'])[:200]}")
                s.slip()
    return 0
