"""The till's side of a serial scanner: a pty the till opens as if it were the scanner."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import grp
import logging
import os
import pty
import select
import termios
import threading
import tty
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tillplug.errors import DeviceGone

log = logging.getLogger(__name__)

TILL_GROUP = "tillplug-till"  # the till's side: never the daemon's group (tillplug.commands.install)
TILL_BACKLOG_BYTES = 1 << 16  # what a till that stops reading may fall behind before scans are dropped


class PassThrough(enum.Enum):
    PASSED = "passed"  # handed to the till (written, or queued behind earlier scans, in order)
    DROPPED = "dropped"  # the till side is not open, or too far behind: counted, never blocking
    WITHHELD = "withheld"  # consumed by loyalty, not for the till
    NONE = "none"  # this scanner has no pass-through (no till_port, or retype = false)


class TillPort:
    """A pty whose other end appears at ``path``, for the till to open as if it were the scanner.

    Writes never block: bytes the till has not taken yet wait in a bounded backlog, in order,
    and go out when the pty can take them.  While no one has the till side open, scans are
    dropped (and counted) rather than kept, so a till that opens the port later never reads
    stale scans.  What the till writes to "its scanner" is read and discarded.
    """

    def __init__(
        self,
        path: str,
        loop: asyncio.AbstractEventLoop,
        *,
        max_backlog: int = TILL_BACKLOG_BYTES,
        group: str = TILL_GROUP,
    ) -> None:
        self.path = Path(path)
        self.group = group  # the till's user opens the pty through this group, never through ours
        self.loop = loop
        self.max_backlog = max_backlog
        self.dropped: Counter[str] = Counter()  # reason → scans dropped
        self.passed = 0
        self.ignored_from_till = 0  # bytes the till wrote to the port
        self._lock = threading.Lock()
        self._backlog: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._master = -1
        self._slave_name = ""
        self._watching = False  # reader on the master: the till's writes, and its hang-up
        self._writer = False

    def open(self) -> None:
        master, slave = pty.openpty()
        try:
            tty.setraw(slave)  # byte for byte: no echo, no CR → LF, no line editing
            self._slave_name = os.ttyname(slave)
            self._give_to_till(self._slave_name)
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        try:
            self._link()
        except OSError:
            self.close()
            raise

    def _give_to_till(self, pty_name: str) -> None:
        """The till's side to the till's group, read-write.  Not our own group: that one reaches
        /dev/uinput, and whoever is in it can type into any window."""
        try:
            gid = grp.getgrnam(self.group).gr_gid
        except KeyError:
            # A till upgraded without `tillplug install`: as before, so its till keeps working.
            gid = os.getegid()
            log.warning(
                "till_port %s: group %s does not exist, so the till opens it through tillplug's own group as "
                "before; run `tillplug install` (it creates %s) and put the till's user in %s instead",
                self.path,
                self.group,
                self.group,
                self.group,
            )
        try:
            os.chown(pty_name, -1, gid)
            os.chmod(pty_name, 0o660)
        except OSError as exc:
            log.warning(
                "till_port %s: cannot give the pty to group %s (%s): the service must be a member "
                "(SupplementaryGroups= in its unit)",
                self.path,
                self.group,
                exc.strerror,
            )

    def _link(self) -> None:
        path = self.path
        # Replace only a link to a pty (ours, left by a crash): never a file, nor a udev or by-id link.
        ours = path.is_symlink() and os.readlink(path).startswith("/dev/pts/")
        if (path.exists() or path.is_symlink()) and not ours:
            raise DeviceGone(f"till_port {path} exists and is not a link tillplug made; remove it or pick another path")
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tillplug-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        temp.symlink_to(self._slave_name)
        os.replace(temp, path)  # atomic: a till never sees the path missing on a restart

    @property
    def is_open(self) -> bool:
        return self._master >= 0

    def till_has_it_open(self) -> bool:
        if self._master < 0:
            return False
        poller = select.poll()
        poller.register(self._master, select.POLLHUP)
        return not any(ev & select.POLLHUP for _, ev in poller.poll(0))

    def send(self, raw: bytes) -> PassThrough:
        """Pass one scan's bytes; safe from any thread; never blocks."""
        with self._lock:
            if not self.till_has_it_open():
                self._closed_locked()
                self.dropped["till_closed"] += 1
                return PassThrough.DROPPED
            self._watch()
            if self._backlog:  # earlier scans still waiting: keep the order
                return self._queue_locked(raw)
            try:
                written = os.write(self._master, raw)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                if exc.errno != errno.EIO:
                    log.warning("till port %s: %s", self.path, exc)
                self._closed_locked()
                self.dropped["till_closed"] += 1
                return PassThrough.DROPPED
            if written < len(raw):  # part of the scan is out: the rest must follow, whatever the backlog
                return self._queue_locked(raw[written:], started=written > 0)
            self.passed += 1
            return PassThrough.PASSED

    def _queue_locked(self, rest: bytes, *, started: bool = False) -> PassThrough:
        if not started and self._backlog_bytes + len(rest) > self.max_backlog:
            self.dropped["till_behind"] += 1
            return PassThrough.DROPPED
        self._backlog.append(rest)
        self._backlog_bytes += len(rest)
        self.passed += 1
        if not self._writer:
            self._writer = True
            master = self._master  # the fd as it is now: close() may run before the loop does this
            self._in_loop(lambda: self.loop.add_writer(master, self._flush))
        return PassThrough.PASSED

    def _flush(self) -> None:
        with self._lock:
            if self._master < 0:
                return
            while self._backlog:
                head = self._backlog[0]
                try:
                    written = os.write(self._master, head)
                except BlockingIOError:
                    return
                except OSError:
                    self._closed_locked()
                    return
                self._backlog_bytes -= written
                if written < len(head):
                    self._backlog[0] = head[written:]
                    return
                self._backlog.popleft()
            self._stop_writer_locked()

    def _stop_writer_locked(self) -> None:
        if self._writer:
            self._writer = False
            self.loop.remove_writer(self._master)

    def _watch(self) -> None:
        if not self._watching:
            self._watching = True
            master = self._master
            self._in_loop(lambda: self.loop.add_reader(master, self._from_till))

    def _from_till(self) -> None:
        """The till wrote to its scanner (tills send enable/disable commands): read and discard,
        so it never blocks.  EIO or an empty read: the till closed its side."""
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.ignored_from_till += len(data)
            return
        with self._lock:
            self._closed_locked()

    def _closed_locked(self) -> None:
        """The till side is closed: nothing may wait for it (it would read stale scans on reopening)."""
        if self._master < 0:
            return
        if self._backlog:
            self.dropped["till_closed"] += len(self._backlog)
            self._backlog.clear()
            self._backlog_bytes = 0
        with contextlib.suppress(termios.error, OSError):
            termios.tcflush(self._master, termios.TCIOFLUSH)
        master = self._master
        if self._watching:
            self._watching = False
            self._in_loop(lambda: self.loop.remove_reader(master))
        if self._writer:
            self._writer = False
            self._in_loop(lambda: self.loop.remove_writer(master))

    def _in_loop(self, fn: Callable[[], Any]) -> None:
        if self.loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            fn()
        else:
            self.loop.call_soon_threadsafe(fn)

    def close(self) -> None:
        """Remove the link (if it is still ours) and close the pty; safe to call twice."""
        with self._lock:
            master, self._master = self._master, -1
            if master < 0:
                return
            watching, writer = self._watching, self._writer
            self._watching = self._writer = False
        if not self.loop.is_closed():
            done = threading.Event()

            def forget() -> None:
                if watching:
                    self.loop.remove_reader(master)
                if writer:
                    self.loop.remove_writer(master)
                done.set()

            self._in_loop(forget)
            done.wait(2)
        with contextlib.suppress(OSError):
            if os.readlink(self.path) == self._slave_name:
                self.path.unlink()
        os.close(master)
