"""Feedback at the scanner: "bad" for an unknown member, a refused voucher or an engine error,
"good" on success; written only to scanners whose config declares the bytes."""

import os
import select
import time

import pytest

from tillplug.commands.virtual.till import VirtualTill

GOOD, BAD = bytes.fromhex("16 4d 0d 47"), bytes.fromhex("16 4d 0d 42")


def written_to(scanner, size=0, timeout=2.0):
    """Bytes the daemon wrote to a scanner's port (read from the scanner's end of the pty):
    ``size`` of them, or whatever is there now when ``size`` is 0."""
    got = bytearray()
    deadline = time.monotonic() + (timeout if size else 0)
    while len(got) < size or not size:
        ready, _, _ = select.select([scanner.master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        got += os.read(scanner.master, 4096)
    return bytes(got)


@pytest.fixture
def till(tmp_path):
    work = tmp_path / "till"
    scanners = [
        {
            "name": "scanner1",
            "port": str(work / "scanner1"),
            "lane": 1,
            "terminator": "CRLF",
            "feedback_good": "16 4d 0d 47",
            "feedback_bad": "16 4d 0d 42",
        },
        {"name": "scanner2", "port": str(work / "scanner2"), "lane": 2, "terminator": "CRLF"},
    ]
    with VirtualTill(work, lanes=2, scanners=scanners) as t:
        yield t


def outcome(till, lane, code, expect):
    before = len(till.events())
    till.scan(lane, code)
    assert till.wait_for(lambda: any(e["type"] in expect for e in till.events()[before:]))


def test_feedback_goes_only_to_the_declared_scanner_and_says_what_happened(till):
    s1, s2 = till.scanners[1], till.scanners[2]
    outcomes = till.daemon.router.outcomes
    outcome(till, 1, "1000001", {"member_found"})  # a known member: good
    assert written_to(s1, len(GOOD)) == GOOD
    outcome(till, 1, "9999999", {"error"})  # no such member: bad
    assert written_to(s1, len(BAD)) == BAD
    outcome(till, 1, "ALICE-USED-0003", {"voucher_result"})  # already used: refused
    assert written_to(s1, len(BAD)) == BAD
    outcome(till, 1, "4006381333931", {"scan"})  # a product: the scanner's own beep is enough
    outcome(till, 2, "1000001", {"member_found"})  # scanner2 declares no feedback
    outcome(till, 2, "9999999", {"error"})
    # Every consumed scan has been through the feedback step: nothing more can be on its way.
    assert till.wait_for(lambda: outcomes[("scanner2", "good")] == 1 and outcomes[("scanner2", "bad")] == 1)
    assert outcomes[("scanner1", "good")] == 1 and outcomes[("scanner1", "bad")] == 2
    assert written_to(s1) == b""
    assert written_to(s2) == b""
    metrics = till.api.get("/metrics").text
    assert 'tillplug_scanner_feedback_total{device="scanner1",verdict="good"} 1.0' in metrics
    assert 'tillplug_scanner_feedback_total{device="scanner1",verdict="bad"} 2.0' in metrics


def test_an_engine_error_is_bad_feedback(till):
    till.sim.sim.faults.update({"down": True})
    try:
        outcome(till, 1, "1000002", {"error"})
        assert written_to(till.scanners[1], len(BAD)) == BAD
    finally:
        till.sim.sim.faults.update({"down": False})


def test_feedback_bytes_must_be_hex():
    from pydantic import ValidationError

    from tillplug.config.model import ScannerConfig

    with pytest.raises(ValidationError, match="must be bytes in hex"):
        ScannerConfig(name="s", port="/dev/x", feedback_bad="beep")
    assert ScannerConfig(name="s", port="/dev/x").feedback_good is None  # off by default
