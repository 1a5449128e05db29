"""Scanner framing and scan classification."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillplug.barcodes import Classifier, ScanFramer, ScanKind, decode
from tillplug.config.model import BarcodeRules

# Scan bodies: printable ASCII plus GS (0x1D), never a terminator byte.
body = st.text(alphabet=st.sampled_from([chr(c) for c in range(0x20, 0x7F)] + ["\x1d"]), min_size=1, max_size=60).map(
    lambda s: s.encode()
)
TERMS = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n", "TAB": b"\t", "auto": b"\r\n"}


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


@given(
    st.sampled_from(sorted(TERMS)),
    st.lists(body.filter(lambda b: b"\t" not in b), min_size=1, max_size=20),
    st.lists(st.integers(0, 10_000), max_size=30),
)
def test_any_split_of_any_stream_yields_the_same_scans(term, scans, cuts):
    stream = b"".join(s + TERMS[term] for s in scans)
    framer = ScanFramer(terminator=term, max_length=100)
    got = [f for chunk in split(stream, cuts) for f in framer.feed(chunk)]
    assert got == scans


@given(st.lists(body, min_size=1, max_size=10))
def test_auto_accepts_cr_lf_and_crlf_mixed(scans):
    terms = [b"\r", b"\n", b"\r\n"]
    stream = b"".join(s + terms[i % 3] for i, s in enumerate(scans))
    assert ScanFramer().feed(stream) == scans


def test_gs_inside_gs1_data_survives():
    frames = ScanFramer(terminator="CR").feed(b"]C10109506000134352\x1d10ABC123\x1d17201225\r")
    text = decode(frames[0])
    assert text.symbology == "]C1" and text.text == "0109506000134352\x1d10ABC123\x1d17201225"


@given(st.binary(max_size=3000), st.lists(st.integers(0, 5000), max_size=20), st.sampled_from([*sorted(TERMS), "none"]))
def test_garbage_never_crashes_and_memory_stays_bounded(data, cuts, term):
    framer = ScanFramer(terminator=term, max_length=64)
    now = 0.0
    for chunk in split(data, cuts):
        now += 0.01
        for frame in framer.feed(chunk, now) + framer.tick(now):
            assert len(frame) <= 64
            decode(frame)  # never raises
        assert len(framer._buf) <= 64


def test_an_over_long_line_is_dropped_whole_and_counted_once():
    framer = ScanFramer(terminator="CR", max_length=16)
    got = framer.feed(b"X" * 40) + framer.feed(b"Y" * 40 + b"\rGOOD\r")
    assert got == [b"GOOD"] and framer.dropped == 1


def test_idle_gap_ends_a_scan_when_there_is_no_terminator():
    framer = ScanFramer(terminator="none", idle_gap=0.05)
    assert framer.feed(b"4006", 1.00) == []
    assert framer.feed(b"381333931", 1.01) == []
    assert framer.tick(1.03) == []
    assert framer.tick(1.07) == [b"4006381333931"]
    assert framer.feed(b"A", 2.0) == [] and framer.feed(b"B", 2.2) == [b"A"]


def test_decode_strips_configured_prefix_suffix_and_controls():
    assert decode(b"\x02]E0PRE4006381333931SUF\x03", strip_prefix="PRE", strip_suffix="SUF").text == "4006381333931"
    assert decode(b"\xff\xfeAB").text == "\ufffd\ufffdAB"
    assert decode(b"\x00\x01") is None


RULES = BarcodeRules(local_pool=[r"^(?P<code>LOCAL-[A-Z0-9]{4,12})$"])


@pytest.mark.parametrize(
    "text, symbology, kind, code, id_kind",
    [
        ("5a1b2c3d-0000-4000-8000-000000000001", None, ScanKind.MEMBER, "5a1b2c3d-0000-4000-8000-000000000001", "uuid"),
        ("1000001", None, ScanKind.MEMBER, "1000001", "account_number"),
        ("MBR:auth-alice", "]Q1", ScanKind.MEMBER, "auth-alice", "auth_identifier"),
        ("ALICE-5OFF-0001", None, ScanKind.VOUCHER, "ALICE-5OFF-0001", None),
        ("LOCAL-AB12", None, ScanKind.LOCAL_POOL, "LOCAL-AB12", None),
        ("4006381333931", "]E0", ScanKind.OTHER, "4006381333931", None),
        ("01095060001343521720122510ABC123", "]C1", ScanKind.OTHER, "01095060001343521720122510ABC123", None),
    ],
)
def test_classification_order_and_code_extraction(text, symbology, kind, code, id_kind):
    result = Classifier(RULES).classify(text, symbology)
    assert (result.kind, result.code, result.member_id_kind) == (kind, code, id_kind)


def test_other_scans_carry_what_biip_reads():
    c = Classifier(RULES)
    assert c.classify("4006381333931", "]E0").details == {"gtin": "4006381333931"}
    gs1 = c.classify("0109506000134352\x1d10ABC123\x1d17201225").details["gs1"]
    assert gs1 == {"01": "09506000134352", "10": "ABC123", "17": "201225"}


@given(st.text(max_size=80), st.sampled_from([None, "]E0", "]C1", "]Q3", "]d2", "]X0"]))
def test_classifier_never_raises(text, symbology):
    assert Classifier(RULES).classify(text, symbology).kind in ScanKind


@given(
    st.sampled_from([*sorted(TERMS), "auto-mixed"]),
    st.lists(body.filter(lambda b: b"\t" not in b), min_size=1, max_size=20),
    st.lists(st.integers(0, 10_000), max_size=30),
)
def test_frames_keep_every_byte_the_scanner_sent_in_order(term, scans, cuts):
    """Pass-through to the till rests on this: the raw parts of the frames, put back together,
    are the stream exactly (terminators, prefixes, a CR LF split across reads)."""
    terms = [b"\r", b"\n", b"\r\n"]
    if term == "auto-mixed":
        stream = b"".join(s + terms[i % 3] for i, s in enumerate(scans))
        framer = ScanFramer(terminator="auto", max_length=100)
    else:
        stream = b"".join(s + TERMS[term] for s in scans)
        framer = ScanFramer(terminator=term, max_length=100)
    frames = [f for chunk in split(stream, cuts) for f in framer.feed_frames(chunk)]
    assert b"".join(f.raw for f in frames) == stream
    assert [f.data for f in frames if f.data] == scans
    # Each scan's raw is its data plus a terminator; a lone LF only ever continues a CR.
    for before, frame in zip([None, *frames], frames, strict=False):
        if frame.continuation:
            assert frame.raw == b"\n" and before is not None and before.raw.endswith(b"\r")
        else:
            assert frame.raw.startswith(frame.data) and frame.raw[len(frame.data) :] in (b"\r", b"\n", b"\r\n", b"\t")


def test_a_crlf_split_across_reads_is_one_terminator():
    framer = ScanFramer()
    first = framer.feed_frames(b"4006381333931\r")
    second = framer.feed_frames(b"\n1000001\r\n")
    assert [(f.data, f.raw, f.continuation) for f in first + second] == [
        (b"4006381333931", b"4006381333931\r", False),
        (b"", b"\n", True),
        (b"1000001", b"1000001\r\n", False),
    ]
