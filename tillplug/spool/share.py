"""A virtual printer for the till: a loopback TCP port (9100-style) per printer.

The till's unmodified ESC/POS driver prints to ``127.0.0.1:share_port``; what it sends becomes raw
jobs on the real printer's spool, so the till's receipts and tillplug's slips interleave whole.  A job
ends at a cut (``GS V``, ``ESC i``, ``ESC m``), after an idle gap, or when the till disconnects.
The till's status queries (DLE EOT n) are answered from what the spool last saw of the printer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import TYPE_CHECKING

from tillplug.devices.base import PrinterState

if TYPE_CHECKING:
    from tillplug.spool.spool import PrintSpool

log = logging.getLogger(__name__)
IDLE_GAP = 0.5  # seconds without bytes that end a job with no cut
MAX_JOB = 1 << 20
# GS V m (m = 0, 1, 48, 49), GS V m n (m = 65, 66, 97, 98, 103, 104), ESC i, ESC m
CUT = re.compile(rb"\x1dV[\x00\x010 1]|\x1dV[AB abgh].|\x1b[im]", re.DOTALL)
STATUS_QUERY = re.compile(rb"\x10\x04([\x01-\x04])")
ANSWERS = {
    "ok": {1: 0x16, 2: 0x12, 3: 0x12, 4: 0x12},
    "paper out": {1: 0x1E, 2: 0x32, 3: 0x12, 4: 0x72},
    "cover open": {1: 0x1E, 2: 0x16, 3: 0x12, 4: 0x12},
    "offline": {1: 0x1E, 2: 0x12, 3: 0x12, 4: 0x12},
}


def split_jobs(buffer: bytearray) -> list[bytes]:
    """Take every complete job (ending at a cut) off the front of ``buffer``."""
    jobs = []
    while match := CUT.search(buffer):
        jobs.append(bytes(buffer[: match.end()]))
        del buffer[: match.end()]
    return jobs


class SharePort:
    def __init__(self, spool: PrintSpool, port: int, *, idle_gap: float = IDLE_GAP) -> None:
        self.spool = spool
        self.port = port
        self.idle_gap = idle_gap
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        except OSError as exc:
            log.error("printer %s: cannot share it on 127.0.0.1:%d (%s)", self.spool.name, self.port, exc.strerror)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def _answer(self, n: int) -> bytes:
        status = self.spool.last_status
        key = "ok"
        if status.state is PrinterState.ERROR or self.spool.fault is not None:
            reason = status.reason or self.spool.fault or ""
            key = next((k for k in ("paper out", "cover open") if k in reason), "offline")
        return bytes([ANSWERS[key][n]])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), self.idle_gap if buffer else None)
                except TimeoutError:
                    await self._submit(bytes(buffer))
                    buffer.clear()
                    continue
                if not chunk:
                    break
                buffer += chunk
                for query in STATUS_QUERY.finditer(buffer):
                    writer.write(self._answer(query.group(1)[0]))
                buffer[:] = STATUS_QUERY.sub(b"", buffer)
                for job in split_jobs(buffer):
                    await self._submit(job)
                if len(buffer) > MAX_JOB:
                    await self._submit(bytes(buffer))
                    buffer.clear()
            await self._submit(bytes(buffer))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _submit(self, data: bytes) -> None:
        if data.strip(b"\x00"):
            await self.spool.submit(data, "raw", source="till")
