"""Framing: a pure function from a stream of bytes to scans.

Scans split across reads arrive whole, several in one read arrive separately,
GS (0x1D) inside GS1 data survives, and a line that never ends is dropped (with
a count) instead of growing memory.  Time is passed in, never read, so the
idle-gap mode is as testable as the others.  Each frame keeps the exact bytes the
scanner sent for it (``Frame.raw``), so scans the till should see can be passed on
byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TERMINATORS: dict[str, bytes | None] = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n", "TAB": b"\t", "none": None}
_AUTO = re.compile(rb"[\r\n]")
_AIM = re.compile(r"^\][A-Za-z][0-9A-Za-z]")


@dataclass(frozen=True)
class Frame:
    """One scan as framed, and the exact bytes the scanner sent for it (for pass-through to the till)."""

    data: bytes  # the scan, without its terminator
    raw: bytes  # exactly what the scanner sent for it: prefix, data and terminator
    # The LF of a CR LF whose CR already ended the previous frame (it arrived in a later read):
    # it belongs to that frame, and goes wherever that frame went.
    continuation: bool = False
    keys: tuple[tuple[int, int], ...] = ()  # keyboard scanners: the key events (code, value) that typed it


@dataclass
class ScanFramer:
    terminator: str = "auto"  # auto = CR, LF or CRLF
    max_length: int = 512
    idle_gap: float = 0.08  # seconds; ends a scan when terminator is "none"
    dropped: int = 0  # over-long lines thrown away
    _buf: bytearray = field(default_factory=bytearray)
    _discarding: bool = False  # inside an over-long line: skip to its end
    _last: float = 0.0
    _after_cr: bool = False  # auto: the last frame ended on a CR at the end of a read; an LF may follow

    def __post_init__(self) -> None:
        if self.terminator != "auto" and self.terminator not in TERMINATORS:
            raise ValueError(f"unknown terminator {self.terminator!r}")

    def feed(self, chunk: bytes, now: float = 0.0) -> list[bytes]:
        """Add bytes that arrived at ``now``; return every scan they complete."""
        return [f.data for f in self.feed_frames(chunk, now) if f.data]

    def tick(self, now: float) -> list[bytes]:
        """Call when no bytes came: in idle-gap mode, ends a scan after the gap."""
        return [f.data for f in self.tick_frames(now)]

    def feed_frames(self, chunk: bytes, now: float = 0.0) -> list[Frame]:
        """Like ``feed``, with each frame's raw bytes.  Every byte that is not part of a dropped
        over-long line is in exactly one frame's ``raw``, in order; frames may have empty ``data``
        (an empty line, or the LF of a split CR LF)."""
        frames: list[Frame] = []
        if self.terminator == "none":
            if chunk:
                if self._buf and now - self._last >= self.idle_gap:
                    frames += self._emit()
                self._last = now
                self._append(chunk)
            return frames
        if not chunk:
            return frames
        if self._after_cr:
            self._after_cr = False
            if chunk[:1] == b"\n" and not self._buf:
                frames.append(Frame(b"", b"\n", continuation=True))
                chunk = chunk[1:]
        self._buf += chunk
        while True:
            end, skip = self._find_end()
            if end < 0:
                break
            frame = bytes(self._buf[:end])
            raw = bytes(self._buf[: end + skip])
            del self._buf[: end + skip]
            if self._discarding:
                self._discarding = self._after_cr = False
            else:
                frames.append(Frame(frame, raw))
        if len(self._buf) > self.max_length:
            self._drop()
        return frames

    def tick_frames(self, now: float) -> list[Frame]:
        if self.terminator == "none" and self._buf and now - self._last >= self.idle_gap:
            return self._emit()
        return []

    def _find_end(self) -> tuple[int, int]:
        if self.terminator == "auto":
            m = _AUTO.search(self._buf)
            if not m:
                return -1, 0
            end = m.start()
            if self._buf[end : end + 1] == b"\r":
                if self._buf[end + 1 : end + 2] == b"\n":
                    return end, 2  # CR LF in one read: one terminator
                self._after_cr = end + 1 == len(self._buf)  # the LF may come in the next read
            return end, 1
        term = TERMINATORS[self.terminator]
        assert term is not None
        return self._buf.find(term), len(term)

    def _append(self, chunk: bytes) -> None:
        if self._discarding:
            return
        self._buf += chunk
        if len(self._buf) > self.max_length:
            self._drop()

    def _emit(self) -> list[Frame]:
        frame = bytes(self._buf)
        self._buf.clear()
        was_discarding, self._discarding = self._discarding, False
        return [] if was_discarding or not frame else [Frame(frame, frame)]

    def _drop(self) -> None:
        self._buf.clear()
        if not self._discarding:  # one over-long line counts once, however long it runs
            self.dropped += 1
        self._discarding = True


@dataclass(frozen=True)
class ScanText:
    text: str
    symbology: str | None  # AIM identifier such as "]E0", "]C1", "]Q3"


def decode(frame: bytes, *, strip_prefix: str = "", strip_suffix: str = "") -> ScanText | None:
    """Bytes of one scan → text.  Never raises: bad bytes become U+FFFD, controls other than GS go."""
    text = frame.decode("utf-8", errors="replace")
    text = "".join(ch for ch in text if ch == "\x1d" or (ch >= " " and ch != "\x7f")).strip(" ")
    symbology = None
    if _AIM.match(text):
        symbology, text = text[:3], text[3:]
    if strip_prefix and text.startswith(strip_prefix):
        text = text[len(strip_prefix) :]
    if strip_suffix and text.endswith(strip_suffix):
        text = text[: -len(strip_suffix)]
    return ScanText(text, symbology) if text else None


def guess_terminator(data: bytes) -> str:
    """What ends this scanner's scans, from raw bytes it sent: CRLF, CR, LF, TAB or none."""
    counts = {"CRLF": data.count(b"\r\n")}
    counts["CR"] = data.count(b"\r") - counts["CRLF"]
    counts["LF"] = data.count(b"\n") - counts["CRLF"]
    counts["TAB"] = data.count(b"\t")
    best = max(counts, key=lambda k: counts[k])
    return best if counts[best] else "none"
