"""Keyboard layouts read from xkeyboard-config through libxkbcommon: the maintained source of
``keymaps_data.py``.  Used to generate (and, in the tests, to check) that file; never at run time,
so a till needs neither library.

    python -m tools.xkb > tillplug/barcodes/keymaps_data.py

Each key of the typing block and the keypad is pressed, as a scanner would, with no modifier,
Shift, AltGr (right Alt) and Shift+AltGr, NumLock on; what the layout types is recorded: a
character, a dead key (as its combining mark), or nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import sys
from typing import Any

# Linux input-event-codes.h: the typing block, space, the ISO key beside left Shift, the keypad.
TYPING_KEYS = (*range(2, 14), *range(16, 28), *range(30, 42), *range(43, 54), 57, 86)
KEYPAD_KEYS = (55, *range(71, 84), 98)
KEY_LEFTSHIFT, KEY_RIGHTALT, KEY_NUMLOCK = 42, 100, 69
EVDEV_OFFSET = 8  # xkb keycodes are evdev codes + 8
LAYOUTS = ("us", "gb", "de", "fr", "be", "es", "it", "nl")

# Dead keysyms → the combining mark the decoder composes with.
DEAD_KEYS = {
    "dead_grave": "\u0300",
    "dead_acute": "\u0301",
    "dead_circumflex": "\u0302",
    "dead_tilde": "\u0303",
    "dead_macron": "\u0304",
    "dead_breve": "\u0306",
    "dead_abovedot": "\u0307",
    "dead_diaeresis": "\u0308",
    "dead_abovering": "\u030a",
    "dead_doubleacute": "\u030b",
    "dead_caron": "\u030c",
    "dead_cedilla": "\u0327",
    "dead_ogonek": "\u0328",
}


class _RuleNames(ctypes.Structure):
    _fields_ = [(n, ctypes.c_char_p) for n in ("rules", "model", "layout", "variant", "options")]


def _library() -> Any:
    name = ctypes.util.find_library("xkbcommon") or "libxkbcommon.so.0"
    lib = ctypes.CDLL(name)
    lib.xkb_context_new.restype = ctypes.c_void_p
    lib.xkb_context_new.argtypes = [ctypes.c_int]
    lib.xkb_keymap_new_from_names.restype = ctypes.c_void_p
    lib.xkb_keymap_new_from_names.argtypes = [ctypes.c_void_p, ctypes.POINTER(_RuleNames), ctypes.c_int]
    lib.xkb_state_new.restype = ctypes.c_void_p
    lib.xkb_state_new.argtypes = [ctypes.c_void_p]
    lib.xkb_state_update_key.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int]
    lib.xkb_state_key_get_one_sym.restype = ctypes.c_uint32
    lib.xkb_state_key_get_one_sym.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.xkb_keysym_to_utf32.restype = ctypes.c_uint32
    lib.xkb_keysym_to_utf32.argtypes = [ctypes.c_uint32]
    lib.xkb_keysym_get_name.argtypes = [ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t]
    for fn in ("xkb_state_unref", "xkb_keymap_unref", "xkb_context_unref"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
    return lib


def available() -> str | None:
    """None if layouts can be read here, else why not."""
    try:
        lib = _library()
    except OSError as exc:
        return f"libxkbcommon is not installed ({exc})"
    ctx = lib.xkb_context_new(0)
    if not ctx:
        return "libxkbcommon cannot create a context"
    try:
        keymap = lib.xkb_keymap_new_from_names(ctx, ctypes.byref(_RuleNames(layout=b"us")), 0)
        if not keymap:
            return "xkeyboard-config (xkb-data) is not installed"
        lib.xkb_keymap_unref(keymap)
    finally:
        lib.xkb_context_unref(ctx)
    return None


def read_layout(layout: str) -> dict[int, tuple[str, str, str, str]]:
    """evdev key code → what it types at levels none, Shift, AltGr, Shift+AltGr (NumLock on)."""
    lib = _library()
    ctx = lib.xkb_context_new(0)
    keymap = lib.xkb_keymap_new_from_names(ctx, ctypes.byref(_RuleNames(layout=layout.encode())), 0)
    if not keymap:
        lib.xkb_context_unref(ctx)
        raise ValueError(f"xkb has no layout {layout!r}")
    table: dict[int, tuple[str, str, str, str]] = {}
    try:
        for code in (*TYPING_KEYS, *KEYPAD_KEYS):
            levels = []
            for held in ((), (KEY_LEFTSHIFT,), (KEY_RIGHTALT,), (KEY_LEFTSHIFT, KEY_RIGHTALT)):
                state = lib.xkb_state_new(keymap)
                for key in (KEY_NUMLOCK,):  # press and release: NumLock locked on
                    lib.xkb_state_update_key(state, key + EVDEV_OFFSET, 1)
                    lib.xkb_state_update_key(state, key + EVDEV_OFFSET, 0)
                for key in held:
                    lib.xkb_state_update_key(state, key + EVDEV_OFFSET, 1)
                levels.append(_typed(lib, lib.xkb_state_key_get_one_sym(state, code + EVDEV_OFFSET)))
                lib.xkb_state_unref(state)
            if any(levels):
                table[code] = (levels[0], levels[1], levels[2], levels[3])
    finally:
        lib.xkb_keymap_unref(keymap)
        lib.xkb_context_unref(ctx)
    return table


def _typed(lib: Any, keysym: int) -> str:
    if keysym == 0:
        return ""
    buf = ctypes.create_string_buffer(64)
    lib.xkb_keysym_get_name(keysym, buf, 64)
    name = buf.value.decode()
    if name in DEAD_KEYS:
        return DEAD_KEYS[name]
    cp = lib.xkb_keysym_to_utf32(keysym)
    char = chr(cp) if cp else ""
    # Only what a barcode can carry: printable characters (Tab, Enter and the like are keys, not text).
    return char if char.isprintable() else ""


def generate() -> str:
    """The text of ``keymaps_data.py``."""
    lines = [
        '"""Keyboard layouts for keyboard-mode scanners: what each key types, by level.',
        "",
        "Generated from xkeyboard-config by libxkbcommon (``python -m tools.xkb``);",
        "do not edit by hand.  Key: Linux evdev key code.  Value: what it types with no modifier,",
        "Shift, AltGr, Shift+AltGr ('' nothing; a combining mark U+03xx is a dead key).",
        '"""',
        "",
        "LAYOUTS: dict[str, dict[int, tuple[str, str, str, str]]] = {",
    ]
    for layout in LAYOUTS:
        lines.append(f"    {json.dumps(layout)}: {{")
        for code, levels in sorted(read_layout(layout).items()):
            lines.append(f"        {code}: ({', '.join(_literal(c) for c in levels)}),")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _literal(char: str) -> str:
    """A Python string literal in ruff's style, non-ASCII as escapes (reviewable in any editor)."""
    if char == '"':
        return "'\"'"
    if char.isascii():
        return json.dumps(char)
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}" for c in char) + '"'


if __name__ == "__main__":  # pragma: no cover
    why = available()
    if why:
        sys.exit(f"cannot read keyboard layouts: {why}")
    sys.stdout.write(generate())
