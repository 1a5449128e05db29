"""The till API's limits (issue 20): no caller can lock the till out, each route takes the body it is
documented to take, print calls answer alike, and a stop never waits on a listener.  Driven through
the real HTTP server."""

import base64
import json
import logging
import socket
import string
import time

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tillplug.api.server import stream_limit
from tillplug.commands.virtual.till import VirtualTill, poll_until


@pytest.fixture(scope="module")
def till(tmp_path_factory):
    with VirtualTill(tmp_path_factory.mktemp("till")) as t:
        yield t


def read_head(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and whatever of the body came with them (up to Content-Length, if given)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split(" ", 2)[1]), headers, body


def open_stream(port: int, extra: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (port, extra))
    return sock


# -- no caller can lock the till out --------------------------------------------------------------------


def test_seventy_event_streams_leave_health_and_new_sales_answering(tmp_path):
    """Seen: with 70 streams open, POST /v1/checkouts got a broken pipe and /v1/health no answer."""
    with VirtualTill(tmp_path / "till") as t:
        port = t.daemon.api_port
        cap = stream_limit(t.config.api.max_connections)
        socks, answers = [], []
        try:
            for _ in range(70):
                socks.append(open_stream(port))
                answers.append(read_head(socks[-1]))
            served = [a for a in answers if a[0] == 200]
            refused = [a for a in answers if a[0] != 200]
            assert len(served) == cap and all(a[1]["content-type"].startswith("text/event-stream") for a in served)
            assert len(refused) == 70 - cap
            for status, headers, body in refused:
                assert status == 503 and headers["retry-after"].isdigit()
                assert json.loads(body)["error"]["code"] == "too_many_streams"
            assert t.api.get("/v1/health").status_code == 200
            assert t.api.post("/v1/checkouts", json={"transactionId": "STREAMS1"}).status_code == 201
            # The streams still open go on: a new event reaches them.
            t.scan(1, "5901234123457")
            assert b"event: scan" in drain_until(socks[0], b"event: scan")
        finally:
            for s in socks:
                s.close()
        # Closed streams give their places back.
        assert poll_until(lambda: t.daemon.api.open_streams == 0, 10)
        with open_stream(port) as again:
            assert read_head(again)[0] == 200


def drain_until(sock: socket.socket, mark: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    seen = b""
    deadline = time.monotonic() + timeout
    while mark not in seen and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        seen += chunk
    return seen


def test_two_hundred_idle_sockets_never_keep_health_from_answering(tmp_path):
    """Seen: 200 idle sockets reset /v1/health for 10 s.  Here they may wait a whole minute to send a
    request, yet health and a new sale answer while they are all still open."""
    api = {"listen": "127.0.0.1:0", "request_timeout": 60}
    with VirtualTill(tmp_path / "till", api=api) as t:
        port = t.daemon.api_port
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(200)]
        try:
            for _ in range(3):
                assert httpx.get(f"{t.url}/v1/health", timeout=10).status_code == 200
            r = httpx.post(f"{t.url}/v1/checkouts", json={"transactionId": "IDLE1"}, timeout=10)
            assert r.status_code == 201
        finally:
            for s in idle:
                s.close()


def test_health_answers_when_every_connection_is_busy(tmp_path, caplog):
    """Every connection held by a request whose body never comes: /v1/health still answers, on a place
    kept for it; anything else there is a clear 503, not a reset."""
    api = {"listen": "127.0.0.1:0", "request_timeout": 60, "max_connections": 16}
    with VirtualTill(tmp_path / "till", api=api) as t:
        port = t.daemon.api_port
        head = (
            b"POST /v1/checkouts HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" % port
        )
        busy = []
        try:
            for _ in range(16):
                busy.append(socket.create_connection(("127.0.0.1", port), timeout=10))
                busy[-1].sendall(head)
            assert poll_until(lambda: len(t.daemon.api_server.server_state.tasks) >= 16, 10)
            for _ in range(3):
                assert httpx.get(f"{t.url}/v1/health", timeout=10).status_code == 200
            other = httpx.post(f"{t.url}/v1/checkouts", json={"transactionId": "BUSY1"}, timeout=10)
            assert other.status_code == 503 and other.json()["error"]["code"] == "server_busy"
        finally:
            for s in busy:
                s.close()
        assert poll_until(lambda: len(t.daemon.api_server.server_state.tasks) == 0, 10)
        assert t.api.post("/v1/checkouts", json={"transactionId": "BUSY2"}).status_code == 201
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # a client gone mid-body is no error


# -- bodies by route ------------------------------------------------------------------------------------


def test_raw_print_takes_a_receipt_of_up_to_a_mebibyte(till):
    """Seen: capped at ~48 KiB by api.max_body_bytes, though documented up to 1 MiB."""
    receipt = b"\x1b@" + bytes(range(32, 127)) * 11000 + b"\x1dV\x00"
    assert 1_000_000 < len(receipt) <= 1 << 20
    r = till.api.post("/v1/print/raw", json={"data": base64.b64encode(receipt).decode()})
    assert r.status_code == 202, r.text
    job = till.api.get(f"/v1/print/jobs/{r.json()['job']}").json()
    assert job["bytes"] == len(receipt) and job["kind"] == "raw"
    over = till.api.post("/v1/print/raw", json={"data": base64.b64encode(b"x" * ((1 << 20) + 1)).decode()})
    assert over.status_code == 400 and over.json()["error"]["code"] == "invalid_request"
    # Every other route keeps api.max_body_bytes.
    big = till.api.post("/v1/checkouts", json={"transactionId": "BIG2", "cashierId": "c" * 200_000})
    assert big.status_code == 413


@pytest.mark.parametrize("path", ["/v1/drawer/open", "/v1/print/test"])
def test_the_drawer_and_the_test_page_act_only_on_a_json_body(till, path):
    """Seen: both acted on a POST with no body and no Content-Type, which a web page can send."""
    before = {j["job"] for j in till.api.get("/v1/print/jobs").json()["jobs"]}
    bare = httpx.post(till.url + path, timeout=10)
    assert bare.status_code == 415 and bare.json()["error"]["code"] == "unsupported_media_type"
    assert {j["job"] for j in till.api.get("/v1/print/jobs").json()["jobs"]} == before
    typed = till.api.post(path, content=b"", headers={"Content-Type": "application/json"})
    assert typed.status_code in (200, 202) and typed.json()["state"] == "queued"


def test_a_balance_slip_answers_its_job_like_every_print_call(till):
    """Seen: the job came under ``print`` in a member view, not ``{job, state}`` as the README says."""
    r = till.api.post("/v1/print/balance", json={"code": "1000001", "lane": 1})
    assert r.status_code == 200
    answer = r.json()
    assert isinstance(answer["job"], int) and answer["state"] == "queued" and "print" not in answer
    assert till.api.get(f"/v1/print/jobs/{answer['job']}").json()["kind"] == "balance"
    assert answer["member"].endswith("0001") and answer["pointsBalance"] >= 0


# -- the event stream's edges ---------------------------------------------------------------------------


EVENT_ID_TEXT = st.one_of(
    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=1, max_size=40),
    st.integers(0, 10**25).map(str),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.text(string.digits + "-²³¹٣", min_size=1, max_size=30),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(this_run=st.booleans(), value=EVENT_ID_TEXT)
@example(this_run=True, value="\u00b2")
@example(this_run=True, value="9" * 5000)
def test_any_last_event_id_is_served_never_a_server_error(till, this_run, value):
    """Seen: ``Last-Event-ID: <epoch>-²`` or 5,000 digits → 500 with a traceback.  A value that is not an
    id of this run means "everything since this run began", like an id from an earlier run."""
    port = till.daemon.api_port
    header = f"{till.daemon.api.stream_epoch}-{value}" if this_run else value
    with open_stream(port, b"Last-Event-ID: " + header.encode() + b"\r\n") as sock:
        status, headers, body = read_head(sock)
    assert status == 200, (status, body[:200])
    assert headers["content-type"].startswith("text/event-stream")
    assert poll_until(lambda: till.daemon.api.open_streams == 0, 10)


def test_a_stop_with_a_listener_that_stopped_reading_is_prompt_and_quiet(tmp_path, caplog):
    """Seen: SIGTERM with an event stream open took ~11 s and logged a traceback (uvicorn waited its
    graceful timeout on a stream that could not end, then cancelled it)."""
    caplog.set_level(logging.WARNING)
    t = VirtualTill(tmp_path / "till")
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", t.daemon.api_port))
        sock.sendall(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % t.daemon.api_port)
        assert poll_until(lambda: t.daemon.api.open_streams == 1, 10)
        for _ in range(600):  # far more than the socket buffers hold: the stream's writes block
            t._loop.call_soon_threadsafe(t.daemon.events.publish, "pad", {"x": "y" * 20000})
        assert poll_until(lambda: t.daemon.events.history[-1].type == "pad", 10)
    finally:
        t.close()
        sock.close()
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]
