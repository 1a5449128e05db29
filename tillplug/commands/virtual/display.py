"""A pole display on a pty, for tests and the demo: it reads the bytes the daemon writes and keeps
the 2 × 20 characters a real display would show.

It understands both command sets the pole-display driver speaks, the way the displays do: Epson
(``ESC @``, ``ESC t n``, ``US C n``, ``US $ x y``, ``CLR``, characters written at the cursor and
moving it on) and CD5220 (``ESC @``, ``CLR``, ``ESC Q A … CR``, ``ESC Q B … CR``).  A command it
does not know is kept in ``unknown`` so a test can fail on it, never silently skipped.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import threading
import tty
from pathlib import Path


class VirtualPoleDisplay:
    def __init__(self, link: Path, *, columns: int = 20, rows: int = 2, code_page: str = "cp437") -> None:
        self.link = link
        self.columns, self.rows, self.code_page = columns, rows, code_page
        self.cells = [[" "] * columns for _ in range(rows)]
        self.cursor = (0, 0)
        self.received = bytearray()
        self.unknown: list[bytes] = []
        self.resets = 0
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        name = os.ttyname(slave)
        os.close(slave)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(name)
        self._thread = threading.Thread(target=self._read, daemon=True, name="virtual-pole-display")
        self._thread.start()

    # -- what tests and the demo read -------------------------------------------------------

    @property
    def lines(self) -> tuple[str, ...]:
        with self._lock:
            return tuple("".join(row) for row in self.cells)

    def text(self) -> str:
        """The two lines, trailing spaces dropped, as the demo prints them."""
        return "\n".join(line.rstrip() for line in self.lines).rstrip("\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(OSError):
            os.close(self.master)
        if self.link.is_symlink():
            self.link.unlink()

    def __enter__(self) -> VirtualPoleDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the wire ---------------------------------------------------------------------------

    def _read(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the daemon closed its end (EIO on a pty): wait for it to reopen
                self._stop.wait(0.05)
                continue
            with self._lock:
                self.received += chunk
                self._pending += chunk
                self._interpret()

    def _interpret(self) -> None:
        data = self._pending
        while data:
            used = self._command(bytes(data[:64]))
            if used == 0:
                return  # an incomplete command: wait for more bytes
            del data[:used]

    def _command(self, data: bytes) -> int:
        """How many bytes the command at the start of ``data`` took (0: it is not all here yet)."""
        first = data[0]
        if first == 0x1B:
            return self._esc(data)
        if first == 0x1F:
            return self._us(data)
        if first == 0x0C:  # CLR
            self._clear()
            return 1
        if first == 0x0B:  # HOM
            self.cursor = (0, 0)
            return 1
        if first < 0x20:
            return self._unknown(data[:1])
        self._put(bytes([first]).decode(self.code_page))
        return 1

    def _esc(self, data: bytes) -> int:  # noqa: PLR0911 -- one answer per command
        if len(data) < 2:
            return 0
        if data[1:2] == b"@":
            self._clear()
            self.resets += 1
            return 2
        if data[1:2] == b"t":  # the character table (Epson)
            return 3 if len(data) >= 3 else 0
        if data[1:2] != b"Q":
            return self._unknown(data[:2])
        end = data.find(b"\r")  # CD5220: ESC Q A|B text CR
        if end < 0:
            return 0 if len(data) < 64 else self._unknown(data[:2])
        row = {b"A": 0, b"B": 1}.get(data[2:3])
        if row is None:
            return self._unknown(data[: end + 1])
        self.cells[row] = list(data[3:end].decode(self.code_page)[: self.columns].ljust(self.columns))
        return end + 1

    def _us(self, data: bytes) -> int:
        if len(data) < 2:
            return 0
        if data[1:2] == b"$":  # US $ x y: the cursor to column x of line y
            if len(data) < 4:
                return 0
            self.cursor = (min(self.rows, max(1, data[3])) - 1, min(self.columns, max(1, data[2])) - 1)
            return 4
        if data[1:2] == b"C":  # the cursor shown or not
            return 3 if len(data) >= 3 else 0
        return self._unknown(data[:2])

    def _put(self, ch: str) -> None:
        row, col = self.cursor
        self.cells[row][col] = ch
        col += 1
        if col >= self.columns:  # overwrite mode: on to the start of the next line
            row, col = (row + 1) % self.rows, 0
        self.cursor = (row, col)

    def _clear(self) -> None:
        self.cells = [[" "] * self.columns for _ in range(self.rows)]
        self.cursor = (0, 0)

    def _unknown(self, command: bytes) -> int:
        self.unknown.append(command)
        return len(command)


def page_screenshot(url: str, path: Path, *, width: int = 800, height: int = 480) -> Path | None:
    """A PNG of a web page (the customer display page) from Debian's headless Chromium; None without it.

    The page holds an event stream open, so Chromium is told to stop loading after 2 s and draw what
    it has by then (the stream's first screen arrives at once)."""
    import shutil
    import subprocess
    import tempfile

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return None
    with tempfile.TemporaryDirectory(prefix="tillplug-chromium-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",  # run as root in a container, the sandbox cannot start
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--timeout=2000",
            f"--window-size={width},{height}",
            f"--screenshot={path}",
            url,
        ]
        try:
            subprocess.run(command, capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
    return path if path.exists() else None
