"""A virtual printer for the till: a loopback TCP port (9100-style) per printer, speaking only ESC/POS.

The till's unmodified ESC/POS driver prints to ``127.0.0.1:share_port``; what it sends becomes raw
jobs on the real printer's spool, so the till's receipts and tillplug's slips interleave whole.  The
stream is read command by command (``escpos_stream``), so a cut or a status query is one only where a
command starts; bytes inside an image, a barcode or a user-defined character are never split, edited
or answered.  A job ends:

- after a real cut (``GS V``, ``ESC i``, ``ESC m``);
- when the till disconnects;
- after ``IDLE_GAP`` seconds without bytes (a driver that pauses mid-receipt for less stays one job);
- at ``MAX_JOB_BYTES``: the rest is one more job, and until that one ends the spool prints nothing
  of tillplug's between them.

The till's status queries (``DLE EOT n``, ``GS r n``) are answered from what the spool last saw of
the printer and are not sent on.  Anything that is not a printer driver is refused before a byte is
printed: a connection whose first bytes are an HTTP request (a web page's cross-site POST can reach
a loopback port) or a TLS ClientHello is closed, logged and counted.  At most ``MAX_CONNECTIONS``
connections are served at once (more are closed at once); a connection with nothing pending closes
after ``IDLE_TIMEOUT`` seconds; each one reads at most ``READ_CHUNK`` bytes ahead of the spool and
stops reading (the sender waits) while its job is handed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from tillplug.devices.base import PrinterState, PrinterStatus
from tillplug.devices.supervisor import should_log
from tillplug.errors import TillplugError
from tillplug.spool.drawer import DrawerWatch
from tillplug.spool.escpos_stream import EscPosReader, Kind, Piece

log = logging.getLogger(__name__)
IDLE_GAP = 2.0  # seconds without bytes that end a job with no cut
MAX_JOB_BYTES = 4 << 20  # a job with no cut is handed to the spool in parts of at most this size
IDLE_TIMEOUT = 30.0  # seconds a connection with nothing pending stays open without a byte
MAX_CONNECTIONS = 8  # connections served at once per share port; more are closed at once
READ_CHUNK = 64 << 10  # bytes read at a time; the sender waits while a job is handed over
FIRST_LINE = 4096  # bytes looked at to tell an HTTP request line from a receipt

# DLE EOT n (1 printer, 2 offline cause, 3 error cause, 4 paper) and GS r n (1 paper, 2 drawer).
ANSWERS = {
    "ok": {1: 0x16, 2: 0x12, 3: 0x12, 4: 0x12},
    "paper out": {1: 0x1E, 2: 0x32, 3: 0x12, 4: 0x72},
    "cover open": {1: 0x1E, 2: 0x16, 3: 0x12, 4: 0x12},
    "offline": {1: 0x1E, 2: 0x12, 3: 0x12, 4: 0x12},
}
GS_R_PAPER = {"ok": 0x00, "paper out": 0x0C, "cover open": 0x00, "offline": 0x00}
# An HTTP/1 request line (any method, HTTP/2's "PRI * HTTP/2.0" too); a TLS record carrying a handshake.
HTTP_REQUEST_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ [^ \r\n]+ HTTP/\d")
_TOKEN_START = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]")
_NOT_IN_A_REQUEST_LINE = re.compile(rb"[^\x20-\x7e\r]")
TLS_HANDSHAKE = re.compile(rb"\x16\x03[\x00-\x04]")


def first_protocol(first: bytes, *, ended: bool = False) -> str:
    """What the first bytes of a connection are: ``"http"``, ``"tls"``, ``"escpos"``, or ``"unknown"``
    while more bytes are needed to tell (``ended``: no more will come soon)."""
    if not first:
        return "escpos" if ended else "unknown"
    if first[0] == 0x16:
        if len(first) < 3 and not ended:
            return "unknown"
        return "tls" if TLS_HANDSHAKE.match(first) else "escpos"
    line_end = first.find(b"\n")
    line = first if line_end < 0 else first[:line_end]
    if not _TOKEN_START.match(first) or _NOT_IN_A_REQUEST_LINE.search(line):
        return "escpos"  # ESC @, a control byte or a code-page letter: no request line, no need to wait
    if line_end < 0 and len(first) < FIRST_LINE and not ended:
        return "unknown"
    return "http" if HTTP_REQUEST_LINE.match(line) else "escpos"


_SPOKE = {"http": "an HTTP request (a web page, or a program that is not a printer driver)", "tls": "a TLS handshake"}


class SharedPrinter(Protocol):
    """What the share port feeds and reads of a printer's spool (``spool.PrintSpool`` is one): the
    port is the till's door onto the spool, so the spool builds it, and it knows the spool only so."""

    last_status: PrinterStatus  # what the printer said last: the till's status queries are answered from it
    fault: str | None  # the spool's breaker, open while set
    till_floor: bool  # set while a long till receipt arrives in parts: only the till's jobs print
    till_first: bool  # then set until those parts have printed
    drawer: DrawerWatch  # the drawer sensor, when one is wired: the till's status queries report it too

    @property
    def name(self) -> str: ...

    async def submit(self, data: bytes, kind: str, *, source: str) -> object: ...

    def wake(self) -> None: ...


class _Connection:
    """One till connection's job being assembled."""

    def __init__(self) -> None:
        self.reader = EscPosReader()
        self.job = bytearray()
        self.continued = False  # this job is the rest of one that reached MAX_JOB_BYTES


class SharePort:
    def __init__(
        self,
        spool: SharedPrinter,
        port: int | None,
        *,
        socket_path: str | None = None,
        idle_gap: float = IDLE_GAP,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_job_bytes: int = MAX_JOB_BYTES,
    ) -> None:
        self.spool = spool
        self.port = port
        self.socket_path = socket_path
        self.idle_gap = idle_gap
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_job_bytes = max_job_bytes
        self.on_refused: Callable[[str], None] = lambda protocol: None  # the metrics count refusals
        self.refused: dict[str, int] = {}
        self.over_cap = 0  # connections closed at once because MAX_CONNECTIONS were open
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._floor: _Connection | None = None  # the connection whose long job is being printed in parts
        self._floor_free = asyncio.Event()
        self._floor_free.set()

    @property
    def connections(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        if self.port is not None:
            try:
                self._servers.append(await asyncio.start_server(self._accept, "127.0.0.1", self.port, limit=READ_CHUNK))
            except OSError as exc:
                log.error("printer %s: cannot share it on 127.0.0.1:%d (%s)", self.spool.name, self.port, exc.strerror)
        if self.socket_path is not None:
            try:
                self._servers.append(await self._start_unix(Path(self.socket_path)))
            except OSError as exc:
                log.error("printer %s: cannot share it on %s (%s)", self.spool.name, self.socket_path, exc.strerror)

    async def _start_unix(self, path: Path) -> asyncio.Server:
        """The share as a Unix socket only its directory's group can open (mode 0660, that group)."""
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()  # left by a previous run
        old_umask = os.umask(0o117)  # never a moment when others could connect
        try:
            server = await asyncio.start_unix_server(self._accept, str(path), limit=READ_CHUNK)
        finally:
            os.umask(old_umask)
        os.chown(path, -1, path.parent.stat().st_gid)
        path.chmod(0o660)
        return server

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        if self._servers and self.socket_path is not None:
            with contextlib.suppress(OSError):
                Path(self.socket_path).unlink()
        self._servers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= self.max_connections:
            self.over_cap += 1
            if should_log(self.over_cap):
                log.warning(
                    "printer %s: share port closed a connection at once: %d are open already (%d so far)",
                    self.spool.name,
                    len(self._tasks),
                    self.over_cap,
                )
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Connection()
        try:
            await self._serve(conn, reader, writer)
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # the till went away (or tillplug is stopping): what was whole is already queued
        finally:
            self._tasks.discard(task)
            self._release_floor(conn)
            writer.close()

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await self._first_bytes(reader)
        protocol = first_protocol(first, ended=True)
        if protocol != "escpos":
            self._refuse(protocol)
            return
        chunk = first
        while chunk:
            await self._take(conn, conn.reader.feed(chunk), writer)
            chunk = await self._read(conn, reader)
        if rest := conn.reader.close():
            conn.job += rest
        await self._end_job(conn)

    async def _first_bytes(self, reader: asyncio.StreamReader) -> bytes:
        """Enough of the stream to tell a printer driver from a web page (nothing is printed before)."""
        first = b""
        while first_protocol(first) == "unknown":
            try:
                chunk = await asyncio.wait_for(reader.read(READ_CHUNK), self.idle_gap if first else self.idle_timeout)
            except TimeoutError:
                break
            if not chunk:
                break
            first += chunk
        return first

    async def _read(self, conn: _Connection, reader: asyncio.StreamReader) -> bytes:
        """The next bytes; b"" when the connection ends.  An idle gap ends the job being assembled."""
        while True:
            pending = bool(conn.job)  # (a command's unfinished header alone does not keep a connection)
            try:
                return await asyncio.wait_for(reader.read(READ_CHUNK), self.idle_gap if pending else self.idle_timeout)
            except TimeoutError:
                if not pending:
                    log.info("printer %s: share connection idle for %gs, closed", self.spool.name, self.idle_timeout)
                    return b""
                await self._end_job(conn)

    async def _take(self, conn: _Connection, pieces: list[Piece], writer: asyncio.StreamWriter) -> None:
        for piece in pieces:
            if piece.kind is Kind.QUERY:
                if (answer := self._answer(piece)) is not None:
                    writer.write(answer)
                continue
            conn.job += piece.raw
            if piece.kind is Kind.CUT:
                await self._end_job(conn)
            elif len(conn.job) >= self.max_job_bytes:
                await self._take_floor(conn)
                await self._submit(conn, bytes(conn.job))
                conn.job.clear()
                conn.continued = True
        await writer.drain()

    async def _end_job(self, conn: _Connection) -> None:
        if conn.job:
            await self._submit(conn, bytes(conn.job))
            conn.job.clear()
        if conn.continued:
            conn.continued = False
            self._release_floor(conn)

    async def _submit(self, conn: _Connection, data: bytes) -> None:
        while self._floor not in (None, conn):  # another connection's long job is being printed
            await self._floor_free.wait()
        if not data:
            return  # (NULs are sent on: they may be the rest of an image cut by the idle gap)
        try:
            await self.spool.submit(data, "raw", source="till")
        except TillplugError as exc:  # a full spool: the till's driver sees the connection close
            log.warning("printer %s: the till's job was not queued: %s", self.spool.name, exc)
            raise ConnectionAbortedError from exc

    async def _take_floor(self, conn: _Connection) -> None:
        while self._floor not in (None, conn):
            await self._floor_free.wait()
        self._floor = conn
        self._floor_free.clear()
        self.spool.till_floor = True

    def _release_floor(self, conn: _Connection) -> None:
        if self._floor is conn:
            self._floor = None
            self._floor_free.set()
            self.spool.till_floor = False
            self.spool.till_first = True  # its parts still waiting print before anything else
            self.spool.wake()

    def _refuse(self, protocol: str) -> None:
        self.refused[protocol] = self.refused.get(protocol, 0) + 1
        self.on_refused(protocol)
        log.warning("printer %s: share port refused %s; nothing was printed", self.spool.name, _SPOKE[protocol])

    def _answer(self, piece: Piece) -> bytes | None:
        query = piece.query
        if query is None:
            return None
        name, n = query
        status = self.spool.last_status
        key = "ok"
        if status.state is PrinterState.ERROR or self.spool.fault is not None:
            reason = status.reason or self.spool.fault or ""
            key = next((k for k in ("paper out", "cover open") if k in reason), "offline")
        pin3 = status.drawer_pin3 if self.spool.drawer.fitted else None  # the drawer sensor, when one is wired
        if name == "DLE EOT":
            answer = ANSWERS[key].get(n)
            if answer is not None and n == 1 and pin3 is not None:
                answer = answer & ~0x04 | (0x04 if pin3 else 0)
        else:
            drawer = 0x01 if pin3 else 0x00
            answer = {1: GS_R_PAPER[key], 49: GS_R_PAPER[key], 2: drawer, 50: drawer}.get(n)
        return None if answer is None else bytes([answer])
