"""The one scan path (tillplug.daemon.scans): a scan's text is classified once, on the scanner's
thread, and the flows act on that classification; the flow called for a scan returns what came of
it (a ``ScanOutcome``), and the scanner's feedback is chosen from that value alone."""

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.daemon.test_feedback import BAD, GOOD, written_to
from tests.flow_harness import Harness, is_burn, reset_after
from tillplug.barcodes.classify import Classifier, ScanKind
from tillplug.commands.virtual.till import VirtualTill
from tillplug.config.model import BarcodeRules
from tillplug.daemon import scans
from tillplug.daemon.scans import Decision, decide, scan_event, verdict
from tillplug.devices.supervisor import Scan
from tillplug.devices.till_port import PassThrough
from tillplug.flows.events import ScanOutcome, ScanResult
from tillplug.flows.loyalty import Loyalty
from tillplug.logs import mask
from tillplug.sim import SimServer

FEEDBACK = {"feedback_good": GOOD.hex(" "), "feedback_bad": BAD.hex(" ")}


@pytest.fixture
def sim():
    with SimServer() as s:
        yield s


def test_a_scans_text_is_classified_once(tmp_path, monkeypatch):
    """Routing's classification is handed down: neither the flows nor the member or voucher look-up
    run the barcode rules over the same text again (it once ran up to three times)."""
    matched = []
    original = Classifier._match

    def counting(self, text, symbology):
        matched.append(text)
        return original(self, text, symbology)

    monkeypatch.setattr(Classifier, "_match", counting)
    with VirtualTill(tmp_path / "till") as till:
        assert till.api.post("/v1/checkouts", json={"transactionId": "T1", "lane": 1}).status_code == 201
        for text, done in (
            ("1000001", "member_attached"),
            ("ALICE-5OFF-0001", "voucher_result"),
            ("4006381333931", "scan"),
        ):
            before = len(till.events())
            till.scan(1, text)
            assert till.wait_for(
                lambda done=done, before=before: any(e["type"] == done for e in till.events()[before:])
            )
        attached = next(e for e in till.events() if e["type"] == "member_attached")
        assert attached["data"]["transactionId"] == "T1"
        assert till.api.get("/v1/checkouts/T1").json()["vouchers"][0]["code"] == "ALICE-5OFF-0001"
    assert matched == ["1000001", "ALICE-5OFF-0001", "4006381333931"]


@pytest.mark.parametrize(
    ("returned", "published", "expected"),
    [
        (ScanOutcome(ScanResult.MEMBER_NOT_FOUND, error="member_not_found"), "member_found", BAD),
        (ScanOutcome(ScanResult.MEMBER_FOUND), "error", GOOD),
        (ScanOutcome(ScanResult.VOUCHER_PENDING), "voucher_result", b""),
    ],
)
def test_the_feedback_is_chosen_from_the_outcome_the_flow_returns(tmp_path, monkeypatch, returned, published, expected):
    """Whatever the flows publish on the event stream, the scanner hears what the scan entry point
    returned; and that entry point is handed the classification routing made."""
    handed = []

    async def scan(self, classified, lane):
        handed.append((classified.kind, classified.code, lane))
        self.events.publish(published, {"ok": published != "voucher_result"}, lane=lane)
        return returned

    monkeypatch.setattr(Loyalty, "scan", scan)
    with VirtualTill(tmp_path / "till", scanner_options=FEEDBACK) as till:
        outcomes = till.daemon.router.outcomes
        till.scan(1, "MBR:auth-alice")
        assert till.wait_for(lambda: sum(outcomes.values()) == 1)
        assert written_to(till.scanners[1], len(expected)) == expected
        assert written_to(till.scanners[1]) == b""
        assert outcomes[("scanner1", verdict(returned) or "none")] == 1
        scans = [e["data"] for e in till.events() if e["type"] == "scan"]
        assert scans == [
            {
                "device": "scanner1",
                "kind": "member",
                "symbology": None,
                "member": "…lice",
                "route": "loyalty",
                "passThrough": "withheld",
            }
        ]
    assert handed == [(ScanKind.MEMBER, "auth-alice", 1)]


def test_the_scan_entry_point_returns_what_came_of_each_scan(tmp_path, sim):
    """Member found, attached, not found; voucher checked, accepted, refused, pending; an engine
    error: each a value the scan path can act on, the same news the events told the till."""

    async def go():
        h = Harness(tmp_path, sim)
        classify = h.loyalty.ctx.classifier.classify
        try:

            async def scan(text, lane=1):
                return await h.loyalty.scan(classify(text), lane)

            assert await scan("1000001") == ScanOutcome(ScanResult.MEMBER_FOUND)
            assert await scan("9999999") == ScanOutcome(ScanResult.MEMBER_NOT_FOUND, error="member_not_found")
            assert await scan("ALICE-5OFF-0001") == ScanOutcome(ScanResult.VOUCHER_CHECKED)
            refused = ScanOutcome(ScanResult.VOUCHER_REFUSED, error="voucher_already_used")
            assert await scan("ALICE-USED-0003") == refused
            await h.loyalty.open_checkout("T1", 1, None)
            assert await scan("MBR:auth-alice") == ScanOutcome(ScanResult.MEMBER_ATTACHED)
            assert await scan("ALICE-5OFF-0001") == ScanOutcome(ScanResult.VOUCHER_ACCEPTED)
            again = await scan("ALICE-5OFF-0001")  # already on the sale: a conflict the till is told
            assert again == ScanOutcome(ScanResult.FAILED, error="checkout_conflict")
            h.tamper.on(is_burn, reset_after)
            assert await scan("ALICE-RIVER-0005") == ScanOutcome(ScanResult.VOUCHER_PENDING)
            sim.sim.faults.update({"down": True})
            down = await scan("1000002", lane=2)
            assert down == ScanOutcome(ScanResult.FAILED, error="engine_error")
            told = [t for t, d in h.published if t in ("member_found", "member_attached", "voucher_result", "error")]
            assert told == [
                "member_found",
                "error",
                "voucher_result",
                "voucher_result",
                "member_attached",
                "voucher_result",
                "error",
                "error",
            ]
        finally:
            sim.sim.faults.update({"down": False})
            await h.close()

    asyncio.run(go())


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (ScanOutcome(ScanResult.MEMBER_FOUND), "good"),
        (ScanOutcome(ScanResult.MEMBER_ATTACHED), "good"),
        (ScanOutcome(ScanResult.VOUCHER_ACCEPTED), "good"),
        (ScanOutcome(ScanResult.VOUCHER_CHECKED), "good"),
        (ScanOutcome(ScanResult.VOUCHER_PENDING), None),
        (ScanOutcome(ScanResult.MEMBER_NOT_FOUND, error="member_not_found"), "bad"),
        (ScanOutcome(ScanResult.VOUCHER_REFUSED, error="voucher_expired"), "bad"),
        (ScanOutcome(ScanResult.FAILED, error="engine_timeout"), "bad"),
        (ScanOutcome(ScanResult.MEMBER_FOUND, slip_failed=True), "bad"),
        (ScanOutcome(ScanResult.VOUCHER_ACCEPTED, slip_failed=True), "bad"),
    ],
)
def test_what_the_scanner_is_told_of_each_outcome(outcome, expected):
    assert verdict(outcome) == expected


def test_every_result_is_good_bad_or_deliberately_silent():
    """A result added later must be given its feedback, not fall silent by default."""
    assert scans.GOOD | scans.BAD | {ScanResult.VOUCHER_PENDING} == set(ScanResult)
    assert not scans.GOOD & scans.BAD


def test_a_balance_slip_that_cannot_print_makes_the_scan_bad_as_it_always_did(tmp_path):
    """No printer on the lane: the member is found, the slip cannot be queued and the till is told
    (an ``error``); the scanner says "bad" so the cashier looks at the till."""
    with VirtualTill(tmp_path / "till", scanner_options=FEEDBACK, printers=[]) as till:
        till.scan(1, "1000001")
        assert till.wait_for(lambda: any(e["type"] == "error" for e in till.events()))
        assert written_to(till.scanners[1], len(BAD)) == BAD
        types = [e["type"] for e in till.events() if e["type"] in ("member_found", "error")]
        assert types == ["member_found", "error"]
        error = next(e for e in till.events() if e["type"] == "error")
        assert error["data"]["code"] == "printer_not_ready"


member_texts = st.one_of(
    st.from_regex(r"\A\d{7}\Z"),
    st.from_regex(r"\AMBR:[A-Za-z0-9._@-]{1,40}\Z"),
    st.uuids().map(str),
)


@given(text=st.one_of(member_texts, st.text(min_size=1, max_size=60)), pass_loyalty=st.booleans())
def test_the_scan_event_says_what_routing_classified_and_never_a_members_code(text, pass_loyalty):
    """The ``scan`` event is built from the one classification: its kind and route are routing's,
    and a member's code reaches the event stream only masked."""
    classifier = Classifier(BarcodeRules())
    classified = classifier.classify(text, read_product=False)
    decision = Decision(classified, decide(classified.kind, pass_loyalty=pass_loyalty), PassThrough.WITHHELD)
    scan = Scan(text, None, "scanner1", 1, 0.0, text.encode() + b"\r\n")
    event = scan_event(scan, classified, decision)
    assert event["kind"] == classified.kind.value
    assert (event["route"], event["passThrough"]) == (decision.route.value, "withheld")
    if classified.kind is ScanKind.MEMBER:
        assert event["member"] == mask(classified.code) and not {"text", "code"} & event.keys()
    elif classified.kind is ScanKind.OTHER:
        assert event["text"] == text
    else:
        assert event["code"] == classified.code
