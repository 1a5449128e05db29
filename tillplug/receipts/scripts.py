"""Text for a printer's code page: what it can show, and a stated fallback where it cannot.

A code page holds Latin and perhaps one more script.  For a character the pinned page lacks:

* a Latin letter prints as its base letter (``Ż`` → ``Z``, ``ß`` → ``ss``): still the same word;
* punctuation and symbols print in ASCII (an en dash → ``-``, ``€`` → ``EUR``);
* emoji and other pictographs are left out: their names (``:coffee:``) are not words on a slip;
* a letter of a script the page lacks (``免``, ``Ж``, ``ש``, ``ก``) has no faithful form: romanised and
  run together (``免费咖啡`` → ``MianFeiKaFei``) it reads as a wrong word.  So the block prints its
  stated fallback instead (a voucher's name: "Voucher"; a tier: the row is left out), and a block
  with none (the shop's own header lines) prints ``(...)`` where such a run was.

Control characters never reach the printer (they would be commands): they print as spaces.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable

from tillplug.receipts.layout import Columns, Rule, Text

LOST_RUN = "(...)"  # where a block with no stated fallback had letters the printer cannot show
_DROPPED = "\x00"  # a left-out emoji, until the spaces around it are tidied
_LOST = "\x01"

CanEncode = Callable[[str], bool]
_PLAIN = re.compile("[\n -~]*")  # printable ASCII and line breaks: every code page shows them as they are


def for_code_page(text: str, can_encode: CanEncode) -> tuple[str, bool]:
    """(what the printer can show of ``text``, whether that is faithful: no letter lost)."""
    if _PLAIN.fullmatch(text):  # most of a slip: nothing to look up, character by character
        return text, True
    out = []
    for ch in unicodedata.normalize("NFC", text):  # 'e' + U+0301 is the é the code page has
        category = unicodedata.category(ch)
        if ch == "\n" or " " <= ch < "\x7f":
            out.append(ch)
        elif category in ("Cc", "Cf", "Zl", "Zp") or ch.isspace():
            out.append("" if category == "Cf" else " ")
        elif can_encode(ch):
            out.append(ch)
        elif category[0] in "LM":
            if unicodedata.name(ch, "").startswith("LATIN"):
                out.append(_ascii(ch))
            elif category[0] == "L":
                out.append(_LOST)
            # a mark the page lacks (on a letter it has, after NFC): left out
        else:
            ascii_form = _ascii(ch).replace("?", "")
            pictograph = category == "So" or (ascii_form.startswith(":") and ascii_form.endswith(":"))
            out.append(_DROPPED if pictograph else ascii_form)
    shown = _tidy("".join(out))
    faithful = _LOST not in shown
    return re.sub(f"{_LOST}+", LOST_RUN, shown), faithful


def _ascii(ch: str) -> str:
    """anyascii's form of a character: imported only when a slip holds one its code page lacks (the
    import alone costs 1.3 MB of a till's memory, and most slips never need it)."""
    from anyascii import anyascii

    return str(anyascii(ch))


def _tidy(text: str) -> str:
    """A left-out emoji takes one of the spaces around it with it: 'Free ☕ coffee' → 'Free coffee'."""

    def gap(m: re.Match[str]) -> str:
        between_words = m.group(1) == m.group(2) == " " and m.start() > 0 and m.end() < len(m.string)
        return " " if between_words else ""

    return re.sub(f"( ?){_DROPPED}+( ?)", gap, text)


def printable(text: str, can_encode: CanEncode) -> str:
    """What the printer can show of ``text`` (runs of letters it lacks marked ``(...)``)."""
    return for_code_page(text, can_encode)[0]


def printable_block(block: Text | Columns | Rule, can_encode: CanEncode) -> Text | Columns | Rule | None:
    """The block as the printer can show it: its stated fallback where its text is not faithful, or
    None where that fallback is to leave it out."""
    if isinstance(block, Rule):
        return dataclasses.replace(block, char=printable(block.char, can_encode) or "-")
    if isinstance(block, Text):
        text, faithful = for_code_page(block.text, can_encode)
        if not faithful and block.fallback is not None:
            if not block.fallback:
                return None
            text = printable(block.fallback, can_encode)
        return dataclasses.replace(block, text=text)
    right, faithful = for_code_page(block.right, can_encode)
    if not faithful and block.fallback is not None:
        if not block.fallback:
            return None
        right = printable(block.fallback, can_encode)
    return dataclasses.replace(block, left=printable(block.left, can_encode), right=right)
