"""A whole till without hardware: the engine simulator, pty scanners, capture printers and the daemon.

Used by the end-to-end tests and by ``tillplug demo``.  Every part is the real
one: the daemon reads real ptys through pyserial, writes real ESC/POS bytes,
and talks HTTP to the simulator on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import pty
import threading
import time
import tty
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tillplug.config.model import Config
from tillplug.daemon.wiring import Daemon
from tillplug.sim import SimServer

T = TypeVar("T")


def poll_until(predicate: Callable[[], object], timeout: float = 10.0, every: float = 0.01) -> bool:
    """True as soon as ``predicate()`` is; False after ``timeout`` seconds.  Bounded, always."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


class VirtualScanner:
    """A pty pair behind a stable symlink; the till reads one end, we 'scan' into the other."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: int | None = None
        self.plug()

    def plug(self) -> None:
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        name = os.ttyname(slave)
        os.close(slave)
        if self.link.is_symlink():
            self.link.unlink()
        self.link.symlink_to(name)

    def unplug(self) -> None:
        if self.master is not None:
            os.close(self.master)
            self.master = None
        if self.link.is_symlink():
            self.link.unlink()

    def scan(self, text: str, terminator: bytes = b"\r\n") -> None:
        assert self.master is not None, "the scanner is unplugged"
        os.write(self.master, text.encode() + terminator)

    def close(self) -> None:
        self.unplug()


class VirtualTill:
    def __init__(
        self,
        workdir: Path,
        *,
        lanes: int = 1,
        voucher_mode: str = "burn",
        sim: SimServer | None = None,
        till_id: str = "till-01",
        dialect: str = "default",
        scanner_options: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._own_sim = sim is None
        self.sim = sim or SimServer(dialect=dialect).start()  # dialect: docs/technician.md "Engine dialects"
        self.scanners = {lane: VirtualScanner(self.workdir / f"scanner{lane}") for lane in range(1, lanes + 1)}
        self.config = Config.model_validate(
            {
                "till_id": till_id,
                "branch_id": "branch-0001",
                "currency": "GBP",
                "state_dir": str(self.workdir / "state"),
                "cache_dir": str(self.workdir / "cache"),
                "log_level": "warning",
                "engine": {
                    "preset": "simulator",
                    "base_url": self.sim.url + "/v1",
                    "auth_url": self.sim.url + "/oauth/token",
                    "receipts_url": self.sim.url + "/receipts/v1",
                },
                "vouchers": {"mode": voucher_mode},
                "barcodes": {"local_pool": [r"^(?P<code>LOCAL-[A-Z0-9]{4,12})$"]},
                "scanners": [
                    {
                        "name": f"scanner{lane}",
                        "port": str(s.link),
                        "lane": lane,
                        "terminator": "CRLF",
                        **(scanner_options or {}),
                    }
                    for lane, s in self.scanners.items()
                ],
                "printers": [
                    {
                        "name": f"printer{lane}",
                        "connection": f"capture://{self.workdir}/printer{lane}.bin",
                        "lane": lane,
                        "profile": "TM-T20II",
                        "paper_width_mm": 80,
                    }
                    for lane in self.scanners
                ],
                "receipts": {"header": ["Corner Shop"], "footer": ["Thank you"]},
                "api": {"listen": "127.0.0.1:0"},
                "outbox": {"rate_per_second": 50, "burst": 50},
                **overrides,
            }
        )
        self.daemon = Daemon(self.config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="till-daemon", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.daemon.start(), self._loop).result(30)
        self.url = f"http://127.0.0.1:{self.daemon.api_port}"
        self.api = httpx.Client(base_url=self.url, timeout=30)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the daemon's loop (for looking inside in tests)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def scan(self, lane: int, text: str) -> None:
        self.scanners[lane].scan(text)

    def printed(self, lane: int) -> bytes:
        path = self.workdir / f"printer{lane}.bin"
        return path.read_bytes() if path.exists() else b""

    def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0) -> bool:
        return poll_until(predicate, timeout, every=0.02)

    def events(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.daemon.events.history]

    def ledger(self) -> dict[str, Any]:
        ledger: dict[str, Any] = httpx.get(self.sim.url + "/_sim/ledger", timeout=10).json()
        return ledger

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until the outbox is empty and the engine has applied every reaction."""

        def empty() -> bool:
            return self.daemon.store.stats().depth == 0

        def applied() -> bool:
            return empty() and self.sim.state.reactions_due == 0

        return self.wait_for(applied, timeout)

    def close(self) -> None:
        self.api.close()
        try:
            asyncio.run_coroutine_threadsafe(self.daemon.stop(), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            for s in self.scanners.values():
                s.close()
            if self._own_sim:
                self.sim.stop()

    def __enter__(self) -> VirtualTill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
