"""The share port: only ESC/POS, bounded, and a till's receipt stays whole (issue 20, observations 2-4)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.spool.test_share_stream import TRAPS, raster, till_receipt
from tillplug.devices.base import PrinterState, PrinterStatus
from tillplug.spool import JobStore
from tillplug.spool.drawer import DrawerWatch
from tillplug.spool.share import IDLE_GAP, IDLE_TIMEOUT, MAX_JOB_BYTES, SharePort, first_protocol


class Spool:
    """What the share port uses of a print spool: it records the jobs and the floor at each."""

    name = "p1"

    def __init__(self) -> None:
        self.jobs: list[bytes] = []
        self.floor_at_submit: list[bool] = []
        self.last_status = PrinterStatus(PrinterState.OK)
        self.fault: str | None = None
        self.till_floor = False
        self.till_first = False
        self.gate: asyncio.Event | None = None  # while set to an unset event, submit waits (a full spool)
        self.drawer = DrawerWatch("p1", 1, None)  # no drawer sensor: the fixed answers

    async def submit(self, data: bytes, kind: str, *, source: str) -> None:
        assert (kind, source) == ("raw", "till")
        if self.gate is not None:
            await self.gate.wait()
        self.jobs.append(data)
        self.floor_at_submit.append(self.till_floor)

    def wake(self) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    test: Callable[[SharePort, Spool], Awaitable[None]],
    *,
    idle_gap: float = IDLE_GAP,
    idle_timeout: float = IDLE_TIMEOUT,
) -> Spool:
    async def go() -> Spool:
        spool = Spool()
        port = SharePort(spool, free_port(), idle_gap=idle_gap, idle_timeout=idle_timeout)
        await port.start()
        try:
            await asyncio.wait_for(test(port, spool), 60)
        finally:
            await port.close()
        return spool

    return asyncio.run(go())


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


async def send(port: SharePort, data: bytes, *, piece: int = 97) -> bytes:
    """A till driver writing ``data`` in small pieces; what it got back before it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
    try:
        for k in range(0, len(data), piece):
            writer.write(data[k : k + piece])
            await writer.drain()
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionError:
        return b""  # the port closed on it
    finally:
        writer.close()


def test_a_till_receipt_with_an_image_holding_cut_and_status_bytes_prints_byte_for_byte_as_one_job():
    receipt = till_receipt()
    assert b"\x1bi" in receipt and b"\x1dV" in receipt[:-4] and b"\x10\x04\x01" in receipt

    async def test(port: SharePort, spool: Spool) -> None:
        assert await send(port, receipt) == b""  # nothing inside the data was answered
        assert await until(lambda: len(spool.jobs) == 1)

    assert run(test).jobs == [receipt]


def test_the_tills_real_status_query_is_answered_and_not_printed():
    async def test(port: SharePort, spool: Spool) -> None:
        assert await send(port, b"\x10\x04\x01\x1dr\x01" + till_receipt()) == b"\x16\x00"
        spool.fault = "paper out"
        assert await send(port, b"\x10\x04\x04") == b"\x72"

    assert run(test).jobs == [till_receipt()]


BROWSER_POST = (
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1:9101\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 9\r\n\r\n\x1bp\x00\x19\xfa\x1dV\x00\n"
)


@pytest.mark.parametrize(
    "first",
    [
        BROWSER_POST,
        b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PROPFIND /x HTTP/1.0\n\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x1bp\x00\x19\xfa" * 20,  # a TLS ClientHello
    ],
)
def test_a_web_pages_request_or_a_tls_hello_is_refused_and_prints_nothing(first, caplog):
    counted: list[str] = []

    async def test(port: SharePort, spool: Spool) -> None:
        port.on_refused = counted.append
        await send(port, first, piece=7)  # a request line split across reads is still one
        await asyncio.sleep(0.2)

    assert run(test).jobs == []
    assert counted == ["tls" if first[0] == 0x16 else "http"]
    assert "refused" in caplog.text and "nothing was printed" in caplog.text


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_a_receipt_is_never_taken_for_a_web_request_unless_it_opens_with_a_request_line(data):
    protocol = first_protocol(data, ended=True)
    assert protocol in ("escpos", "http", "tls")
    if protocol == "http":
        assert b" HTTP/" in data.split(b"\n", 1)[0]


def test_a_receipt_opening_with_a_word_and_a_status_query_is_answered_at_once():
    """No waiting for the end of a line that cannot be a request line (a driver waits on its answer)."""
    assert first_protocol(b"HELLO\x10\x04\x01") == "escpos"
    assert first_protocol(b"HELLO WORLD") == "unknown"


def test_a_receipt_opening_with_words_is_printed():
    receipt = b"TOTAL 25.50 GBP\nTHANK YOU\n\x1dV\x00"

    async def test(port: SharePort, spool: Spool) -> None:
        await send(port, receipt)
        assert await until(lambda: len(spool.jobs) == 1)

    assert run(test).jobs == [receipt]


def test_connections_beyond_the_cap_are_closed_at_once_and_memory_stays_flat():
    """300 connections each sending 64 KiB without a cut: only the capped few are served."""
    chunk = b"A" * (64 << 10)

    async def test(port: SharePort, spool: Spool) -> None:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        opened = []
        for _ in range(300):
            reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
            writer.write(chunk)
            opened.append((reader, writer))
        await asyncio.sleep(0.5)
        closed = 0
        for reader, _writer in opened:
            try:
                closed += await asyncio.wait_for(reader.read(1), 0.01) == b""
            except ConnectionError:
                closed += 1  # closed with the client's bytes unread: a reset
            except TimeoutError:
                pass  # served
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert port.connections == 8
        assert closed >= 280
        assert grown < 8 << 20, grown  # not 300 x 64 KiB held
        for _reader, writer in opened:
            writer.close()

    run(test)


def test_an_idle_connection_with_nothing_pending_is_closed():
    async def test(port: SharePort, spool: Spool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the port closed it
        assert await until(lambda: port.connections == 0)
        writer.close()

    run(test, idle_timeout=0.3)


def test_a_driver_pausing_half_a_second_mid_receipt_stays_one_job():
    receipt = till_receipt()
    assert IDLE_GAP >= 2

    async def test(port: SharePort, spool: Spool) -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
        writer.write(receipt[:200])
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.write(receipt[200:])
        await writer.drain()
        assert await until(lambda: len(spool.jobs) == 1)
        writer.close()

    assert run(test).jobs == [receipt]


def test_a_job_with_no_cut_ends_after_the_idle_gap():
    async def test(port: SharePort, spool: Spool) -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
        writer.write(b"\x1b@NO CUT\n")
        assert await until(lambda: spool.jobs == [b"\x1b@NO CUT\n"])
        writer.write(b"NEXT\n\x1bm")
        assert await until(lambda: len(spool.jobs) == 2)
        writer.close()

    assert run(test, idle_gap=0.3).jobs == [b"\x1b@NO CUT\n", b"NEXT\n\x1bm"]


def test_a_receipt_longer_than_the_bound_is_two_jobs_with_nothing_of_tillplugs_between():
    """5 MiB of image and no cut: a 4 MiB job, then the rest, with the till's floor held in between."""
    assert MAX_JOB_BYTES >= 4 << 20
    image = raster(640, (5 << 20) // 640, TRAPS)

    def floor_of(spool: Spool) -> bool:  # read afresh: the port sets and clears it while we wait
        return spool.till_floor

    async def test(port: SharePort, spool: Spool) -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
        writer.write(image)
        await writer.drain()
        assert await until(lambda: len(spool.jobs) == 1)
        assert floor_of(spool)  # the spool prints only the till's jobs until this receipt ends
        writer.write(b"\n\x1dV\x00")
        await writer.drain()
        assert await until(lambda: len(spool.jobs) == 2)
        assert not floor_of(spool)
        assert spool.till_first  # the parts still waiting print first
        writer.close()

    spool = run(test)
    assert len(spool.jobs[0]) == MAX_JOB_BYTES
    assert b"".join(spool.jobs) == image + b"\n\x1dV\x00"
    assert spool.floor_at_submit == [True, True]


def test_while_the_till_holds_the_floor_the_spool_claims_only_the_tills_jobs(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    slip = store.add("p1", 1, "balance", "tillplug", b"SLIP", hold_seconds=60)
    rest = store.add("p1", 1, "raw", "till", b"REST", hold_seconds=60)
    claimed = store.claim("p1", source="till")
    assert claimed is not None and claimed[0].id == rest.id
    again = store.claim("p1")
    assert again is not None and again[0].id == slip.id
    store.close()


def test_a_full_spool_makes_the_till_wait_instead_of_growing_memory():
    """The spool does not take the job: the port stops reading, so the sender's writes wait."""
    big = raster(1000, 12_000, b"\x00")  # 12 MB, no cut

    async def test(port: SharePort, spool: Spool) -> None:
        spool.gate = asyncio.Event()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
        writer.write(big)
        sender = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(1.0)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert not sender.done()  # its writes wait
        assert grown < MAX_JOB_BYTES * 2 + (4 << 20), grown  # one job's bytes and one read, not 12 MB
        spool.gate.set()
        await asyncio.wait_for(sender, 30)
        assert await until(lambda: sum(map(len, spool.jobs)) >= 8 << 20), list(map(len, spool.jobs))
        writer.close()

    run(test, idle_gap=0.5)


def test_the_share_as_a_unix_socket_only_its_directorys_group_can_open(tmp_path):
    folder = tmp_path / "till-side"
    folder.mkdir()
    os.chown(folder, -1, 12345)  # as the till's group would own it
    path = folder / "p1.sock"
    receipt = till_receipt()

    async def go() -> Spool:
        spool = Spool()
        port = SharePort(spool, None, socket_path=str(path))
        await port.start()
        try:
            mode = path.stat()
            assert stat.S_IMODE(mode.st_mode) == 0o660 and mode.st_gid == 12345
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(BROWSER_POST)  # refused here too
            writer.close()
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(receipt)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            assert await until(lambda: len(spool.jobs) == 1)
        finally:
            await port.close()
        assert not path.exists()
        return spool

    assert asyncio.run(go()).jobs == [receipt]
