"""A receipt as a small layout model, independent of ESC/POS.

Printer drivers turn a ``Receipt`` into bytes; ``wrap``, ``columns`` and
``text_lines`` lay text out for a paper width, cutting a word only when it is
longer than the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Align = Literal["left", "center", "right"]


@dataclass(frozen=True)
class Text:
    text: str
    bold: bool = False
    double: bool = False  # double width and height: half the columns
    align: Align = "left"
    whole: bool = False  # a code: printed in the small font rather than split, if that fits it on one line
    # Printed instead when the text holds letters the printer's code page lacks (receipts.scripts):
    # None, no stated fallback (the run is marked); "", leave the block out.
    fallback: str | None = None


@dataclass(frozen=True)
class Columns:
    """A label on the left and a value on the right, e.g. 'Balance' ... '1,250 pts'."""

    left: str
    right: str
    bold: bool = False
    fallback: str | None = None  # for ``right``, as Text.fallback


@dataclass(frozen=True)
class Rule:
    char: str = "-"


@dataclass(frozen=True)
class Barcode:
    data: str  # printed as Code 128


@dataclass(frozen=True)
class QR:
    data: str


@dataclass(frozen=True)
class Image:
    """A picture (the shop's logo), rasterised by the printer driver."""

    path: str


@dataclass(frozen=True)
class Feed:
    lines: int = 1


@dataclass(frozen=True)
class Cut:
    pass


Block = Text | Columns | Rule | Barcode | QR | Image | Feed | Cut


@dataclass
class Receipt:
    kind: str  # "balance", "voucher", "points", "refund", "sale", "test"
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Receipt:
        self.blocks.extend(blocks)
        return self


def wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap.  A word is split only if it alone is wider than the line.  A paragraph's
    indent (its leading spaces) starts each of its lines, and a list item's ("- ...") lines after
    the first line up under its text, as long as that leaves room for a word."""
    if width < 1:
        raise ValueError("width must be positive")
    lines: list[str] = []
    for paragraph in text.split("\n"):
        indent = " " * (len(paragraph) - len(paragraph.lstrip(" ")))
        if indent and paragraph.strip() and len(indent) <= width // 2:
            lines += [indent + line for line in wrap(paragraph.strip(), width - len(indent))]
            continue
        if paragraph.startswith("- ") and width >= 8:
            first, *rest = wrap(paragraph[2:], width - 2)
            lines += ["- " + first, *("  " + line for line in rest)]
            continue
        line = ""
        for whole in paragraph.split():
            word = whole
            while len(word) > width:  # unavoidable: one word longer than the paper
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:width])
                word = word[width:]
            if not line:
                line = word
            elif len(line) + 1 + len(word) <= width:
                line += " " + word
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def align(line: str, width: int, how: Align) -> str:
    if how == "center":
        return line.center(width).rstrip()
    if how == "right":
        return line.rjust(width)
    return line


def columns(left: str, right: str, width: int) -> list[str]:
    """Label and value on one line if they fit, else the label wrapped and the value right-aligned below."""
    if len(left) + 1 + len(right) <= width:
        return [left + " " * (width - len(left) - len(right)) + right]
    lines = wrap(left, width)
    if len(lines[-1]) + 1 + len(right) <= width:
        last = lines.pop()
        return [*lines, last + " " * (width - len(last) - len(right)) + right]
    return [*lines, *(align(r, width, "right") for r in wrap(right, width))]


def text_lines(block: Text | Columns | Rule, width: int) -> list[str]:
    """The lines one text block takes on paper ``width`` columns wide (double text: half)."""
    if isinstance(block, Rule):
        return [block.char * width]
    if isinstance(block, Columns):
        return columns(block.left, block.right, width)
    cols = width // 2 if block.double else width
    return [align(line, cols, block.align) for line in wrap(block.text, cols)]
