"""Reading an ESC/POS byte stream command by command, as a printer reads it.

A cut or a status query is only a cut or a status query where a command starts: inside a raster
image, a graphics block, a barcode's data or a user-defined character the same bytes are data.
So the share port frames the till's jobs with this reader, which knows how many argument and data
bytes each command takes (the Epson ESC/POS command reference for TM printers).

The reader is incremental and bounded: a command's header may arrive split across reads and waits
for its remaining bytes (at most ``MAX_HEADER`` of them); a command's data (an image of megabytes)
is passed on as it arrives, never kept.  Any split of a stream gives the same cuts and queries as
the whole stream.  A command it does not know is passed on as data: its first two bytes are
skipped and reading goes on after them, so a later cut still ends the job.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass


class Kind(enum.Enum):
    DATA = "data"  # print data and commands, passed on to the printer unchanged
    CUT = "cut"  # GS V, ESC i, ESC m at a command boundary: the job ends after it
    QUERY = "query"  # a status request (DLE EOT, GS r, ESC v, ESC u): the sender waits for an answer


@dataclass(frozen=True, slots=True)
class Piece:
    kind: Kind
    raw: bytes

    @property
    def query(self) -> tuple[str, int] | None:
        """For a query: which one (``"DLE EOT"`` or ``"GS r"``) and its n."""
        if self.kind is not Kind.QUERY:
            return None
        if self.raw.startswith(b"\x10\x04"):
            return "DLE EOT", self.raw[2]
        if self.raw.startswith(b"\x1dr"):
            return "GS r", self.raw[2]
        if self.raw == b"\x1bv":
            return "GS r", 1  # the obsolete ESC v answers as GS r 1
        return "GS r", 2 if self.raw[2:3] in (b"\x00", b"0") else 0  # ESC u 0 answers as GS r 2


@dataclass(frozen=True, slots=True)
class _Groups:
    """Data made of ``count`` groups, each a header of ``head`` bytes and ``size(header)`` data bytes."""

    count: int
    head: int
    size: Callable[[bytes], int]


class _UntilNul:
    """Data that ends at (and includes) the next NUL, however far away."""


UNTIL_NUL = _UntilNul()
_Data = int | _UntilNul | _Groups | None  # None: more bytes are needed to know
_DataRule = Callable[[bytes, bytes], _Data]  # (parameters, the bytes after them) -> the data


@dataclass(frozen=True, slots=True)
class _Spec:
    params: int
    data: _DataRule | None = None
    kind: Kind = Kind.DATA


def _le16(at: int) -> _DataRule:
    return lambda p, _rest: p[at] + 256 * p[at + 1]


def _raster(p: bytes, _rest: bytes) -> int:  # GS v 0 m xL xH yL yH: x bytes by y dots
    return (p[1] + 256 * p[2]) * (p[3] + 256 * p[4])


def _bit_image(p: bytes, _rest: bytes) -> int:  # ESC * m nL nH: 8-dot modes 1 byte a column, 24-dot 3
    return (p[1] + 256 * p[2]) * (3 if p[0] in (32, 33) else 1)


def _barcode(p: bytes, rest: bytes) -> _Data:  # GS k m: function A ends at NUL, function B has n
    if p[0] <= 6:
        return UNTIL_NUL
    if 65 <= p[0] <= 79:
        return None if not rest else 1 + rest[0]
    return 0


def _tabs(_p: bytes, rest: bytes) -> _Data:
    """ESC D n1..nk NUL: at most 32 ascending positions; a value not above the previous one ends it."""
    previous = 0
    for count, value in enumerate(rest):
        if value == 0:
            return count + 1
        if value <= previous or count == 32:
            return count  # that byte is already normal data
        previous = value
    return None


def _user_characters(p: bytes, _rest: bytes) -> _Data:  # ESC & y c1 c2 [x d1..d(y*x)] for c1..c2
    y, first, last = p
    return _Groups(max(0, last - first + 1), 1, lambda head: y * head[0])


def _nv_images(p: bytes, _rest: bytes) -> _Data:  # FS q n [xL xH yL yH d1..dk] * n
    return _Groups(p[0], 4, lambda h: (h[0] + 256 * h[1]) * (h[2] + 256 * h[3]) * 8)


# fmt: off
_COMMANDS: dict[bytes, _Spec] = {
    # real-time commands
    b"\x10\x04": _Spec(1, lambda p, _r: 1 if p[0] in (7, 8, 18) else 0, Kind.QUERY),   # DLE EOT n [a]
    b"\x10\x05": _Spec(1),                                                             # DLE ENQ n
    b"\x10\x14": _Spec(1, lambda p, _r: {1: 2, 2: 2, 3: 5, 7: 1, 8: 7}.get(p[0], 0)),  # DLE DC4 fn ...
    # ESC
    b"\x1b ": _Spec(1), b"\x1b!": _Spec(1), b"\x1b$": _Spec(2), b"\x1b%": _Spec(1),
    b"\x1b&": _Spec(3, _user_characters),
    b"\x1b(": _Spec(3, _le16(1)),                                                      # ESC ( fn pL pH
    b"\x1b*": _Spec(3, _bit_image),
    b"\x1b-": _Spec(1), b"\x1b2": _Spec(0), b"\x1b3": _Spec(1), b"\x1b=": _Spec(1), b"\x1b?": _Spec(1),
    b"\x1b@": _Spec(0), b"\x1bD": _Spec(0, _tabs), b"\x1bE": _Spec(1), b"\x1bG": _Spec(1),
    b"\x1bJ": _Spec(1), b"\x1bL": _Spec(0), b"\x1bM": _Spec(1), b"\x1bR": _Spec(1), b"\x1bS": _Spec(0),
    b"\x1bT": _Spec(1), b"\x1bU": _Spec(1), b"\x1bV": _Spec(1), b"\x1bW": _Spec(8), b"\x1b\\": _Spec(2),
    b"\x1ba": _Spec(1), b"\x1bc0": _Spec(1), b"\x1bc1": _Spec(1), b"\x1bc3": _Spec(1), b"\x1bc4": _Spec(1),
    b"\x1bc5": _Spec(1), b"\x1bd": _Spec(1), b"\x1be": _Spec(1),
    b"\x1bi": _Spec(0, kind=Kind.CUT), b"\x1bm": _Spec(0, kind=Kind.CUT),
    b"\x1bp": _Spec(3), b"\x1br": _Spec(1), b"\x1bt": _Spec(1),
    b"\x1bu": _Spec(1, kind=Kind.QUERY), b"\x1bv": _Spec(0, kind=Kind.QUERY), b"\x1b{": _Spec(1),
    # FS
    b"\x1c!": _Spec(1), b"\x1c&": _Spec(0), b"\x1c-": _Spec(1), b"\x1c.": _Spec(0),
    b"\x1c2": _Spec(2, lambda _p, _r: 72),                                             # FS 2 c1 c2 + 24x24 dots
    b"\x1c(": _Spec(3, _le16(1)), b"\x1c?": _Spec(2), b"\x1cC": _Spec(1), b"\x1cS": _Spec(2),
    b"\x1cW": _Spec(1), b"\x1cp": _Spec(2), b"\x1cq": _Spec(1, _nv_images),
    b"\x1cg1": _Spec(7, _le16(5)), b"\x1cg2": _Spec(7),                                # FS g 1/2 m a1-a4 nL nH
    # GS
    b"\x1d!": _Spec(1), b"\x1d$": _Spec(2),
    b"\x1d(": _Spec(3, _le16(1)),                                   # GS ( fn pL pH: GS ( L, GS ( k, GS ( A...
    b"\x1d*": _Spec(2, lambda p, _r: p[0] * p[1] * 8), b"\x1d/": _Spec(1), b"\x1d:": _Spec(0),
    b"\x1d8L": _Spec(4, lambda p, _r: int.from_bytes(p, "little")),  # GS 8 L p1-p4
    b"\x1dB": _Spec(1), b"\x1dE": _Spec(1), b"\x1dH": _Spec(1), b"\x1dI": _Spec(1), b"\x1dL": _Spec(2),
    b"\x1dP": _Spec(2), b"\x1dT": _Spec(1),
    b"\x1dV": _Spec(1, lambda p, _r: 1 if p[0] in (65, 66, 97, 98, 103, 104) else 0, Kind.CUT),
    b"\x1dW": _Spec(2), b"\x1d\\": _Spec(2), b"\x1d^": _Spec(3), b"\x1da": _Spec(1), b"\x1db": _Spec(1),
    b"\x1dc": _Spec(0), b"\x1df": _Spec(1), b"\x1dg0": _Spec(3), b"\x1dg2": _Spec(3), b"\x1dh": _Spec(1),
    b"\x1dj": _Spec(1), b"\x1dk": _Spec(1, _barcode), b"\x1dr": _Spec(1, kind=Kind.QUERY),
    b"\x1dv0": _Spec(5, _raster), b"\x1dw": _Spec(1), b"\x1dz0": _Spec(2),
}
# fmt: on
_PREFIXES = {prefix[:size] for prefix in _COMMANDS for size in range(1, len(prefix))}
_LONGEST = max(map(len, _COMMANDS))
MAX_HEADER = 48  # the longest header (prefix, parameters, ESC D's tab list) the reader ever waits for
# Every command starts with DLE, ESC, FS or GS; any other byte (text, LF, CR, HT...) is one byte of data.
_STARTS = frozenset(b"\x10\x1b\x1c\x1d")
_NEXT_START = re.compile(rb"[\x10\x1b\x1c\x1d]")


class EscPosReader:
    """Reads one connection's stream; ``feed`` returns its pieces as soon as each is known."""

    def __init__(self) -> None:
        self._head = b""  # the start of a command whose header has not all arrived (< MAX_HEADER)
        self._skip = 0  # data bytes of the current command still to pass on
        self._until_nul = False
        self._groups: _Groups | None = None
        self._groups_left = 0

    @property
    def at_boundary(self) -> bool:
        """True between commands (nothing of a command is pending)."""
        return not (self._head or self._skip or self._until_nul or self._groups_left)

    def feed(self, chunk: bytes) -> list[Piece]:
        data = self._head + chunk if self._head else chunk
        self._head = b""
        spans = _Spans()
        i = 0
        while i < len(data):
            if self._skip:
                take = min(self._skip, len(data) - i)
                spans.add(Kind.DATA, i, i + take)
                self._skip -= take
                i += take
            elif self._until_nul:
                end = data.find(0, i)
                stop = len(data) if end < 0 else end + 1
                self._until_nul = end < 0
                spans.add(Kind.DATA, i, stop)
                i = stop
            elif self._groups_left:
                assert self._groups is not None
                if len(data) - i < self._groups.head:
                    self._head = data[i:]
                    break
                head = data[i : i + self._groups.head]
                spans.add(Kind.DATA, i, i + len(head))
                i += len(head)
                self._skip = self._groups.size(head)
                self._groups_left -= 1
            elif data[i] not in _STARTS:
                match = _NEXT_START.search(data, i)
                stop = len(data) if match is None else match.start()
                spans.add(Kind.DATA, i, stop)
                i = stop
            else:
                read = self._command(data, i)
                if read is None:
                    self._head = data[i:]  # shorter than MAX_HEADER: every header in the table fits
                    break
                kind, size = read
                spans.add(kind, i, i + size)
                i += size
        return spans.pieces(data)

    def close(self) -> bytes:
        """The stream ended: the bytes of a command cut off mid-header (passed on as data)."""
        rest, self._head = self._head, b""
        self._skip, self._until_nul, self._groups_left = 0, False, 0
        return rest

    def _command(self, data: bytes, i: int) -> tuple[Kind, int] | None:
        """The kind and header size of the command at ``data[i]``; None until more bytes arrive.

        The header of a cut or a query includes its data (a byte or two), so a job ends after all of
        it; other commands' data is passed on by ``feed`` as it arrives.
        """
        available = data[i : i + _LONGEST]
        if available in _PREFIXES and i + len(available) == len(data):
            return None  # a longer prefix may still arrive
        for size in range(len(available), 0, -1):
            spec = _COMMANDS.get(available[:size])
            if spec is not None:
                break
        else:
            return Kind.DATA, 2 if available[0] in b"\x10\x1b\x1c\x1d" and len(available) >= 2 else 1
        start = i + size + spec.params
        length: _Data = None
        if start <= len(data):
            length = 0 if spec.data is None else spec.data(data[i + size : start], data[start : start + MAX_HEADER])
        if length is None:
            return None
        if isinstance(length, _UntilNul):
            self._until_nul = True
        elif isinstance(length, _Groups):
            self._groups, self._groups_left = length, length.count
        elif spec.kind is not Kind.DATA or spec.data is _tabs:
            if start + length > len(data):
                return None
            return spec.kind, start + length - i
        else:
            self._skip = length
        return spec.kind, start - i


class _Spans:
    """The pieces of one read as (kind, start, end), neighbouring data joined without copying."""

    def __init__(self) -> None:
        self.kinds: list[Kind] = []
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, kind: Kind, start: int, end: int) -> None:
        if end <= start:
            return
        if kind is Kind.DATA and self.kinds and self.kinds[-1] is Kind.DATA:
            self.ends[-1] = end
        else:
            self.kinds.append(kind)
            self.starts.append(start)
            self.ends.append(end)

    def pieces(self, data: bytes) -> list[Piece]:
        return [Piece(k, data[s:e]) for k, s, e in zip(self.kinds, self.starts, self.ends, strict=True)]


def read_all(data: bytes) -> list[Piece]:
    """The pieces of a whole stream (a command cut off at the end is data)."""
    reader = EscPosReader()
    pieces = reader.feed(data)
    if rest := reader.close():
        pieces.append(Piece(Kind.DATA, rest))
    return pieces


def cut_positions(data: bytes) -> Iterator[int]:
    """Where each real cut command starts in ``data``."""
    at = 0
    for piece in read_all(data):
        if piece.kind is Kind.CUT:
            yield at
        at += len(piece.raw)
