"""Code 128 as the printer draws it: the shortest B/C plan for a code, the ESC/POS ``GS k 73`` payload
for it, and the symbol values read back from such a payload (for the preview's bars).

Subset C packs two digits in one symbol, so a numeric code is half as wide; a long digit run
inside a code switches to C when that saves symbols.  Only printable ASCII is carried (subset B).
"""

from __future__ import annotations

START = {"A": 103, "B": 104, "C": 105}
SWITCH = {"A": 101, "B": 100, "C": 99}


def _plan(data: str) -> list[tuple[str, str]]:
    """Segments (subset, text) with C wherever a digit run is long enough to be worth the switch."""
    if not data or any(not " " <= ch <= "~" for ch in data):
        raise ValueError("Code 128 subset B/C carries printable ASCII only")
    segments: list[tuple[str, str]] = []

    def add(subset: str, text: str) -> None:
        if segments and segments[-1][0] == subset:
            segments[-1] = (subset, segments[-1][1] + text)
        else:
            segments.append((subset, text))

    i, n = 0, len(data)
    while i < n:
        run = 0
        while i + run < n and data[i + run].isdigit():
            run += 1
        if run == 0:
            add("B", data[i])
            i += 1
            continue
        at_start, at_end = i == 0, i + run == n
        need = 2 if at_start and at_end else 4 if at_start or at_end else 6
        if run < need:
            add("B", data[i : i + run])
            i += run
            continue
        if run % 2:  # an odd run: one digit goes in B (the last at the start, the first elsewhere)
            if at_start:
                add("C", data[i : i + run - 1])
                add("B", data[i + run - 1])
            else:
                add("B", data[i])
                add("C", data[i + 1 : i + run])
        else:
            add("C", data[i : i + run])
        i += run
    return segments


def values(data: str) -> list[int]:
    """Symbol values: start, data and switches, check; the stop pattern is not counted."""
    out: list[int] = []
    for subset, text in _plan(data):
        out.append(START[subset] if not out else SWITCH[subset])
        if subset == "C":
            out += [int(text[k : k + 2]) for k in range(0, len(text), 2)]
        else:
            out += [ord(ch) - 32 for ch in text]
    out.append((out[0] + sum(k * v for k, v in enumerate(out[1:], start=1))) % 103)
    return out


def symbol_count(data: str) -> int:
    """Symbols in the printed code, stop included (each 11 modules wide; the stop has 2 more)."""
    return len(values(data)) + 1


def escpos_payload(data: str) -> bytes:
    """The data for ``GS k 73 n``: ``{B``/``{C`` selects the subset, subset C bytes are 0-99, ``{{`` is '{'."""
    out = bytearray()
    for subset, text in _plan(data):
        out += b"{" + subset.encode()
        if subset == "C":
            out += bytes(int(text[k : k + 2]) for k in range(0, len(text), 2))
        else:
            out += text.replace("{", "{{").encode("ascii")
    return bytes(out)


def from_escpos_payload(payload: bytes) -> tuple[str, list[int]]:
    """(text, symbol values) of a ``GS k 73`` payload, as the printer reads it.  Raises ValueError."""
    text: list[str] = []
    vals: list[int] = []
    subset = ""
    i = 0
    while i < len(payload):
        b = payload[i]
        if b == ord("{") and i + 1 < len(payload) and payload[i + 1] in b"ABC":
            subset = chr(payload[i + 1])
            vals.append(START[subset] if not vals else SWITCH[subset])
            i += 2
            continue
        if b == ord("{") and i + 1 < len(payload) and payload[i + 1] == ord("{"):
            i += 1
        if subset == "C":
            if b > 99:
                raise ValueError("subset C byte over 99")
            text.append(f"{b:02d}")
            vals.append(b)
        elif subset in ("A", "B"):
            text.append(chr(b))
            vals.append(b - 32 if b >= 32 else b + 64)
        else:
            raise ValueError("Code 128 data must start with {A, {B or {C")
        i += 1
    if not vals:
        raise ValueError("empty Code 128")
    vals.append((vals[0] + sum(k * v for k, v in enumerate(vals[1:], start=1))) % 103)
    return "".join(text), vals
