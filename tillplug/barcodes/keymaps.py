"""Keyboard-mode (HID) scanners: key events → text, under the layout the scanner is set to.

Pure functions and a small state machine over Linux key events ``(code, value)`` — value 1
press, 0 release, 2 auto-repeat — with no device and no library: the hid-scanner driver
feeds it what evdev reads, the tests feed it recorded sequences.

What a scanner may press, and what it means here:
- Shift, AltGr (right Alt) and Shift+AltGr: the layout's four levels (``keymaps_data``,
  generated from xkeyboard-config).  Caps Lock pressed during a scan swaps the case of letters.
- Dead keys (circumflex, diaeresis, grave, acute, tilde on fr, de, be, es, it, nl): with a
  letter, the accented letter; with space or the same dead key again, the accent itself.
- Alt held with keypad digits (the scanners' layout-independent "Alt mode"): on the release of
  Alt, ``0nnn`` is Windows-1252 code nnn, ``nnn`` below 256 is code page 437 (so Alt+029 is
  GS, as in GS1 codes), and larger numbers are the Unicode code point.
- Ctrl with a key: the control character of what it types (Ctrl+] is GS), for scanners set to
  send control characters that way.
- Enter (either) ends a scan as CR, Tab as TAB: ``KeyFramer`` splits scans there.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tillplug.barcodes.framing import Frame
from tillplug.barcodes.keymaps_data import LAYOUTS

KeyEvent = tuple[int, int]  # (Linux key code, value: 1 press, 0 release, 2 repeat)

KEY_TAB, KEY_ENTER, KEY_KPENTER, KEY_SPACE = 15, 28, 96, 57
KEY_LEFTCTRL, KEY_RIGHTCTRL = 29, 97
KEY_LEFTSHIFT, KEY_RIGHTSHIFT = 42, 54
KEY_LEFTALT, KEY_RIGHTALT = 56, 100
KEY_CAPSLOCK = 58
KEY_RIGHTBRACE_US = 27  # the key that types ] on a US layout (Ctrl+] is GS)
SHIFTS = {KEY_LEFTSHIFT, KEY_RIGHTSHIFT}
CTRLS = {KEY_LEFTCTRL, KEY_RIGHTCTRL}
MODIFIERS = SHIFTS | CTRLS | {KEY_LEFTALT, KEY_RIGHTALT}
KEYPAD_DIGITS = {82: "0", 79: "1", 80: "2", 81: "3", 75: "4", 76: "5", 77: "6", 71: "7", 72: "8", 73: "9"}
DIGIT_KEYPAD = {d: code for code, d in KEYPAD_DIGITS.items()}

# A dead key followed by space (or by itself) types the accent on its own.
SPACING_ACCENTS = {
    "\u0300": "`",
    "\u0301": "\u00b4",
    "\u0302": "^",
    "\u0303": "~",
    "\u0304": "\u00af",
    "\u0306": "\u02d8",
    "\u0307": "\u02d9",
    "\u0308": "\u00a8",
    "\u030a": "\u00b0",
    "\u030b": "\u02dd",
    "\u030c": "\u02c7",
    "\u0327": "\u00b8",
    "\u0328": "\u02db",
}


def is_dead(typed: str) -> bool:
    return len(typed) == 1 and unicodedata.combining(typed) > 0


def layout_table(layout: str) -> dict[int, tuple[str, str, str, str]]:
    try:
        return LAYOUTS[layout]
    except KeyError:
        raise ValueError(f"unknown keyboard layout {layout!r} (known: {', '.join(LAYOUTS)})") from None


def alt_code(digits: str) -> str:
    """The character an Alt+keypad number types ("" for none)."""
    if not digits:
        return ""
    number = int(digits)
    if digits.startswith("0") and number < 256:
        try:
            return bytes([number]).decode("cp1252")
        except UnicodeDecodeError:  # the five codes Windows-1252 leaves undefined
            return chr(number)
    if number < 256:
        return bytes([number]).decode("cp437")
    if number <= 0x10FFFF and not 0xD800 <= number <= 0xDFFF:
        return chr(number)
    return ""


@dataclass
class KeyDecoder:
    """Key events in, text out; keeps the modifier, dead-key and Alt-code state between events."""

    layout: str
    table: dict[int, tuple[str, str, str, str]] = field(init=False)
    down: set[int] = field(default_factory=set)
    caps: bool = False
    _dead: str = ""
    _alt_digits: str = ""

    def __post_init__(self) -> None:
        self.table = layout_table(self.layout)

    def feed(self, code: int, value: int) -> str:
        """What this event types: usually "" or one character; "\\r" for Enter, "\\t" for Tab."""
        if value == 0:
            return self._release(code)
        self.down.add(code)
        if code == KEY_CAPSLOCK and value == 1:
            self.caps = not self.caps
        if code in MODIFIERS or code == KEY_CAPSLOCK:
            return ""
        if KEY_LEFTALT in self.down:
            if code in KEYPAD_DIGITS:
                self._alt_digits += KEYPAD_DIGITS[code]
            return ""  # Alt with another key types nothing (a menu shortcut)
        return self._with_dead(self._press(code))

    def _release(self, code: int) -> str:
        self.down.discard(code)
        if code == KEY_LEFTALT and self._alt_digits:
            digits, self._alt_digits = self._alt_digits, ""
            return self._with_dead(alt_code(digits), literal=True)
        return ""

    def _press(self, code: int) -> str:
        if code in (KEY_ENTER, KEY_KPENTER):
            return "\r"
        if code == KEY_TAB:
            return "\t"
        typed = self._typed(code)
        if typed and self.down & CTRLS:
            upper = typed.upper()
            return chr(ord(upper) & 0x1F) if len(upper) == 1 and "@" <= upper <= "_" else ""
        return typed

    def _typed(self, code: int) -> str:
        levels = self.table.get(code)
        if levels is None:
            return ""
        shift = bool(self.down & SHIFTS)
        if self.caps and levels[0].isalpha() and levels[0].lower() == levels[0] and levels[1] == levels[0].upper():
            shift = not shift
        return levels[(1 if shift else 0) + (2 if KEY_RIGHTALT in self.down else 0)]

    def _with_dead(self, typed: str, *, literal: bool = False) -> str:
        """``typed`` after any pending dead key; ``literal``: an Alt code, never itself a dead key."""
        pending = self._dead
        if not typed:
            return ""
        if is_dead(typed) and not literal:
            if not pending:
                self._dead = typed
                return ""
            self._dead = "" if typed == pending else typed
            return SPACING_ACCENTS.get(pending, pending) if typed == pending else SPACING_ACCENTS.get(pending, "")
        if not pending:
            return typed
        self._dead = ""
        if typed == " ":
            return SPACING_ACCENTS.get(pending, pending)
        composed = unicodedata.normalize("NFC", typed + pending)
        return composed if len(composed) == 1 else SPACING_ACCENTS.get(pending, "") + typed


def decode(events: Iterable[KeyEvent], layout: str) -> str:
    """The text a sequence of key events types under ``layout`` (Enter as "\\r", Tab as "\\t")."""
    decoder = KeyDecoder(layout)
    return "".join(decoder.feed(code, value) for code, value in events)


# -- typing: the inverse, for tests and for tools that type a known code ---------------------------


def _index(layout: str) -> dict[str, tuple[int, int]]:
    """char → (key, level): the plainest way to type it."""
    index: dict[str, tuple[int, int]] = {}
    table = layout_table(layout)
    keypad = set(KEYPAD_DIGITS) | {55, 74, 78, 83, 98}
    # As scanners do: the typing block at any level (an AZERTY scanner types digits with Shift), then the keypad.
    for _, level, code in sorted((c in keypad, level, c) for c in table for level in range(4)):
        typed = table[code][level]
        if typed and not is_dead(typed) and typed not in index:
            index[typed] = (code, level)
    return index


_INDEXES: dict[str, dict[str, tuple[int, int]]] = {}


def _press(code: int, level: int) -> list[KeyEvent]:
    held = [KEY_LEFTSHIFT] if level in (1, 3) else []
    held += [KEY_RIGHTALT] if level >= 2 else []
    return [*((m, 1) for m in held), (code, 1), (code, 0), *((m, 0) for m in reversed(held))]


def _dead_key(layout: str, mark: str) -> tuple[int, int] | None:
    table = layout_table(layout)
    for level in range(4):
        for code in sorted(table):
            if table[code][level] == mark:
                return code, level
    return None


def encode(text: str, layout: str) -> list[KeyEvent]:
    """Key events that type ``text`` under ``layout``, as a scanner set to it would send them."""
    index = _INDEXES.get(layout)
    if index is None:
        index = _INDEXES[layout] = _index(layout)
    events: list[KeyEvent] = []
    for char in text:
        events += _encode_char(char, layout, index)
    return events


def _encode_char(char: str, layout: str, index: dict[str, tuple[int, int]]) -> list[KeyEvent]:
    if char == "\r":
        return [(KEY_ENTER, 1), (KEY_ENTER, 0)]
    if char == "\t":
        return [(KEY_TAB, 1), (KEY_TAB, 0)]
    if char in index:
        return _press(*index[char])
    for mark, spacing in SPACING_ACCENTS.items():
        dead = _dead_key(layout, mark) if char == spacing else None
        if dead is not None:
            return _press(*dead) + _press(*index[" "])
    decomposed = unicodedata.normalize("NFD", char)
    if len(decomposed) == 2 and decomposed[0] in index:
        dead = _dead_key(layout, decomposed[1])
        if dead is not None and unicodedata.normalize("NFC", decomposed) == char:
            return _press(*dead) + _press(*index[decomposed[0]])
    return _alt_code_events(char)


def _alt_code_events(char: str) -> list[KeyEvent]:
    try:
        digits = f"0{char.encode('cp1252')[0]:03d}"
    except UnicodeEncodeError:
        digits = str(ord(char))
        if ord(char) < 256:  # below 256 without a leading 0 means code page 437
            raise ValueError(f"{char!r} cannot be typed as an Alt code") from None
    keys = [(DIGIT_KEYPAD[d], v) for d in digits for v in (1, 0)]
    return [(KEY_LEFTALT, 1), *keys, (KEY_LEFTALT, 0)]


# -- framing: key events → scans -------------------------------------------------------------------


@dataclass
class KeyFramer:
    """Splits a keyboard scanner's key events into scans at Enter (or Tab).

    Each frame keeps the key events that typed it, balanced (every press has its release,
    synthesised at the end of the scan if the key is still down), so re-typing a frame
    reproduces exactly what the scanner typed, whatever layout the session uses.
    """

    layout: str
    terminator: str = "enter"  # or "tab"
    max_length: int = 512
    dropped: int = 0
    decoder: KeyDecoder = field(init=False)
    _text: list[str] = field(default_factory=list)
    _keys: list[KeyEvent] = field(default_factory=list)
    _pressed_here: set[int] = field(default_factory=set)
    _too_long: bool = False

    def __post_init__(self) -> None:
        self.decoder = KeyDecoder(self.layout)

    def feed(self, events: Sequence[KeyEvent]) -> list[Frame]:
        frames: list[Frame] = []
        for code, value in events:
            frame = self._event(code, value)
            if frame is not None:
                frames.append(frame)
        return frames

    def _event(self, code: int, value: int) -> Frame | None:
        if value == 0:
            if code not in self._pressed_here:  # its press went with the previous scan
                self.decoder.feed(code, value)
                return None
            self._pressed_here.discard(code)
        elif value == 1:
            self._pressed_here.add(code)
        self._keys.append((code, value))
        typed = self.decoder.feed(code, value)
        end = "\t" if self.terminator == "tab" else "\r"
        if typed == end:
            return self._finish(end)
        if typed and typed != "\r":
            self._text.append(typed)
            if len(self._text) > self.max_length and not self._too_long:
                self._too_long = True
                self.dropped += 1
        return None

    def _finish(self, end: str) -> Frame | None:
        keys = self._keys + [(code, 0) for code in sorted(self._pressed_here)]
        text = "".join(self._text)
        too_long = self._too_long
        self._text, self._keys, self._too_long = [], [], False
        # Keys still held (a modifier across the Enter) start the next scan pressed again.
        self._pressed_here = {c for c in self.decoder.down if c in MODIFIERS}
        self._keys = [(c, 1) for c in sorted(self._pressed_here)]
        if too_long:
            return None
        data = text.encode("utf-8")
        return Frame(data, data + end.encode(), keys=tuple(keys))

    def reset(self) -> None:
        """Events were lost (the kernel's buffer overflowed): drop the scan in progress."""
        self.decoder = KeyDecoder(self.layout)
        self._text, self._keys, self._pressed_here, self._too_long = [], [], set(), False
