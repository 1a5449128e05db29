"""A fake network receipt printer on 127.0.0.1 (port 9100-style) for tests and benchmarks.

It keeps every byte it is sent and answers DLE EOT 1/2/4 as a real Epson does, in one of these
moods: ``ok``, ``paper_out``, ``cover_open`` or ``silent`` (connected, never answers).  It can also
``vanish`` (the port refuses connections, open ones are reset), ``black_hole`` (connections hang
until the client's timeout, open ones swallow bytes and never answer) and ``come_back`` on the
same port.  Its cash drawer opens on a kick (ESC p, DLE DC4 1) and stays open until ``close_drawer``;
its sensor is reported on pin 3 (DLE EOT 1 bit 2) at ``drawer_open_level`` while open, as a drawer
wired to a real printer is.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading

ANSWERS = {
    "ok": {1: b"\x16", 2: b"\x12", 4: b"\x12"},
    "paper_out": {1: b"\x1e", 2: b"\x32", 4: b"\x72"},
    "cover_open": {1: b"\x1e", 2: b"\x16", 4: b"\x12"},
    "silent": {},
}
KICK = re.compile(rb"\x1bp[\x00\x01\x30\x31]..|\x10\x14\x01[\x00\x01][\x01-\x08]", re.DOTALL)


class FakeNetworkPrinter:
    def __init__(self, mood: str = "ok", *, drawer_open_level: str = "high") -> None:
        self.mood = mood
        self.drawer_open = False
        self.drawer_open_level = drawer_open_level
        self.kicks = 0
        self.received = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._holes: list[socket.socket] = []
        self._swallowing = threading.Event()
        self._closed = threading.Event()
        self._listener = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._start_accepting()

    # -- what tests call ------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def printed(self) -> bytes:
        with self._lock:
            return bytes(self.received)

    def close_drawer(self) -> None:
        """The cashier pushes the drawer shut."""
        self.drawer_open = False

    def vanish(self) -> None:
        """Switched off: connections are refused, open ones reset."""
        self._stop_listening()
        self._drop_connections()

    def black_hole(self) -> None:
        """Unplugged network cable: connects hang, open connections swallow bytes silently."""
        self._stop_listening()
        self._swallowing.set()
        hole = self._listen(self.port)
        hole.listen(0)
        self._holes.append(hole)
        for _ in range(3):  # fill the accept queue: further SYNs are dropped, so connect() hangs
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", self.port))
            self._holes.append(s)

    def come_back(self, mood: str = "ok") -> None:
        """Switched on again, on the same port."""
        self.mood = mood
        self._drop_connections()
        for s in self._holes:
            s.close()
        self._holes.clear()
        self._swallowing.clear()
        self._stop_listening()
        self._listener = self._listen(self.port)
        self._start_accepting()

    def close(self) -> None:
        self._closed.set()
        self._stop_listening()
        self._drop_connections()
        for s in self._holes:
            s.close()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> FakeNetworkPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the wire -------------------------------------------------------------------

    @staticmethod
    def _listen(port: int) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(8)
        return s

    def _start_accepting(self) -> None:
        t = threading.Thread(target=self._accept, args=(self._listener,), daemon=True, name="fake-printer")
        self._threads.append(t)
        t.start()

    def _stop_listening(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _drop_connections(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, as a reboot
                c.close()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
                self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True, name="fake-printer-conn")
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as a printer answers: at once
        pending = bytearray()
        while not self._closed.is_set():
            if self._swallowing.is_set():  # a black hole: nothing is read, nothing answered
                self._closed.wait(0.05)
                if conn.fileno() < 0:
                    return
                continue
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            if self._swallowing.is_set():  # the cable was pulled while this read waited: nothing arrived
                continue
            pending += chunk
            self._take(conn, pending)

    def _take(self, conn: socket.socket, pending: bytearray) -> None:
        """Job bytes are kept; each DLE EOT n is answered as the mood says (a real-time command)."""
        while pending:
            at = pending.find(b"\x10\x04")
            if at < 0 or at + 2 >= len(pending):
                cut = at if at >= 0 else len(pending) - (pending[-1:] == b"\x10")  # a query split across reads
                keep = pending[:cut]
                with self._lock:
                    self.received += keep
                self._kicked(bytes(keep))
                del pending[: len(keep)]
                return
            with self._lock:
                self.received += pending[:at]
            self._kicked(pending[:at])
            n = pending[at + 2]
            del pending[: at + 3]
            answer = ANSWERS[self.mood].get(n)
            if answer and n == 1:  # bit 2: pin 3, the drawer sensor
                pin3 = self.drawer_open == (self.drawer_open_level == "high")
                answer = bytes([answer[0] & ~0x04 | (0x04 if pin3 else 0)])
            if answer:
                with contextlib.suppress(OSError):
                    conn.sendall(answer)

    def _kicked(self, data: bytes | bytearray) -> None:
        """A drawer kick in job bytes opens the drawer (a kick split across reads is missed: a fake's limit)."""
        if KICK.search(data):
            self.kicks += 1
            self.drawer_open = True
