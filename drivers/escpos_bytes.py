"""The ESC/POS commands a slip is made of, byte for byte as python-escpos's ``Dummy`` printer writes them.

python-escpos's printer module imports Pillow, qrcode and python-barcode (about 6 MB of a till's memory)
for images and software barcodes, and its ``capabilities`` module PyYAML and every printer profile
(1.5 MB more).  A slip prints text in one pinned code page, native QR codes and barcodes sent as raw
commands: it is written here with python-escpos's own constants and escpos-printer-db's profile and code
pages (``tillplug.receipts.paper.printer_profile``), encoded as python-escpos's ``MagicEncode`` does once
an encoding is forced.  Only a receipt logo (an image) and usb:// printers still go through python-escpos's
printer module.  ``tests/receipts/test_receipts.py`` renders receipts both ways and requires the same bytes.
"""

from __future__ import annotations

import contextlib
from typing import Any

from escpos.constants import (
    CD_KICK_2,
    CD_KICK_5,
    CODEPAGE_CHANGE,
    ESC,
    GS,
    HW_INIT,
    PAPER_FULL_CUT,
    PAPER_PART_CUT,
    TXT_NORMAL,
    TXT_STYLE,
)

from tillplug.receipts.paper import code_pages, printer_profile

QR_MODEL_2, QR_ECLEVEL_L = 2, 0  # python-escpos's defaults for qr()


class CodePages:
    """Which characters each of a profile's code pages holds, and their bytes (``escpos.magicencode.Encoder``)."""

    def __init__(self, profile: str) -> None:
        self.numbers = code_pages(profile)
        self.encodings: dict[str, Any] = printer_profile(profile)["encodings"]
        self._maps: dict[str, dict[str, int]] = {}

    def _map(self, encoding: str) -> dict[str, int]:
        """Characters 128-255 of the code page, from escpos-printer-db's table or Python's codec."""
        if encoding not in self._maps:
            page = self.encodings.get(encoding, {})
            if "data" in page:
                chars = list("".join(page["data"]))
            elif "python_encode" in page:
                chars = [" "] * 128
                for i in range(128):
                    with contextlib.suppress(UnicodeDecodeError):  # a byte the codec leaves undefined
                        chars[i] = bytes([i + 128]).decode(page["python_encode"])
            else:
                raise LookupError(f"Can't find a known encoding for {encoding}")
            self._maps[encoding] = {char: i + 128 for i, char in enumerate(chars)}
        return self._maps[encoding]

    def can_encode(self, encoding: str, char: str) -> bool:
        try:
            return ord(char) < 128 or char in self._map(encoding)
        except LookupError:
            return False

    def encode(self, text: str, encoding: str, default: str = "?") -> bytes:
        if text.isascii():  # most of a slip: the same bytes in every code page
            return text.encode("ascii")
        chars = self._map(encoding)
        return bytes(ord(c) if ord(c) < 128 else chars.get(c, ord(default)) for c in text)


class _Magic:
    """``escpos.magicencode.MagicEncode`` as the driver uses it: one forced encoding, switched to once."""

    def __init__(self, out: SlipBytes, encoder: CodePages) -> None:
        self.out, self.encoder = out, encoder
        self.encoding: str | None = None

    def force_encoding(self, encoding: str) -> None:
        self.out._raw(CODEPAGE_CHANGE + bytes([int(self.encoder.numbers[encoding])]))
        self.encoding = encoding

    def write(self, text: str) -> None:
        if self.encoding is None:
            raise ValueError("SlipBytes writes text only in a forced encoding")
        if text:
            self.out._raw(self.encoder.encode(text, self.encoding))


class SlipBytes:
    """The subset of python-escpos's ``Escpos`` API the escpos driver renders a slip with."""

    def __init__(self, profile: str, pages: CodePages | None = None) -> None:
        self.features: dict[str, Any] = printer_profile(profile).get("features", {})
        self.magic = _Magic(self, pages or CodePages(profile))
        self._output: list[bytes] = []

    @property
    def output(self) -> bytes:
        return b"".join(self._output)

    def _raw(self, msg: bytes) -> None:
        self._output.append(msg)

    def hw(self, hw: str) -> None:
        if hw.upper() != "INIT":
            raise ValueError(f"SlipBytes sends only INIT, not {hw!r}")
        self._raw(HW_INIT)

    def set(
        self,
        *,
        align: str | None = None,
        bold: bool | None = None,
        normal_textsize: bool | None = None,
        double_width: bool | None = None,
        double_height: bool | None = None,
    ) -> None:
        if bool(double_width) != bool(double_height):
            raise ValueError("a slip's text is doubled in width and height together, or not at all")
        if normal_textsize or double_width:
            self._raw(TXT_NORMAL + TXT_STYLE["size"]["2x" if double_width else "normal"])
        if bold is not None:
            self._raw(TXT_STYLE["bold"][bold])
        if align is not None:
            self._raw(TXT_STYLE["align"][align])

    def text(self, txt: str) -> None:
        self.magic.write(str(txt))

    def textln(self, txt: str = "") -> None:
        self.text(f"{txt}\n")

    def ln(self, count: int = 1) -> None:
        if count < 0:
            raise ValueError("Count cannot be lesser than 0")
        if count > 0:
            self.text("\n" * count)

    def qr(self, content: str, *, size: int = 3, native: bool = True, center: bool = False) -> None:
        """A native QR code (model 2, error correction L), as ``Escpos.qr(native=True)``."""
        if not native or center:
            raise ValueError("SlipBytes prints only native, uncentred QR codes")
        if not 1 <= size <= 16:
            raise ValueError("Invalid block size (must be 1-16)")
        if content == "":
            return
        self._code_2d(b"A", bytes([48 + QR_MODEL_2, 0]))
        self._code_2d(b"C", bytes([size]))
        self._code_2d(b"E", bytes([48 + QR_ECLEVEL_L]))
        self._code_2d(b"P", content.encode("utf-8"), b"0")
        self._code_2d(b"Q", b"", b"0")

    def _code_2d(self, fn: bytes, data: bytes, m: bytes = b"") -> None:
        """GS ( k pL pH cn fn [m] data, cn = '1' (QR code)."""
        self._raw(GS + b"(k" + (len(data) + len(m) + 2).to_bytes(2, "little") + b"1" + fn + m + data)

    def cut(self) -> None:
        """Feed six lines, then the full cut (or the partial one where the profile has only that)."""
        self._raw(ESC + b"d" + bytes([6]))
        if self.features.get("paperFullCut"):
            self._raw(PAPER_FULL_CUT)
        elif self.features.get("paperPartCut"):
            self._raw(PAPER_PART_CUT)

    def cashdraw(self, pin: int) -> None:
        if pin not in (2, 5):
            raise ValueError(f"a cash drawer is kicked on pin 2 or 5, not {pin!r}")
        self._raw(CD_KICK_2 if pin == 2 else CD_KICK_5)
