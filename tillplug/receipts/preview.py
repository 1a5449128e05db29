"""Render a captured ESC/POS byte stream the way a thermal printer would: as text, and as a PNG.

The interpreter understands the commands tillplug and python-escpos send
(text modes, code pages, alignment, feeds, Code 128 / EAN barcodes, QR codes,
cuts) and lists every byte it did not understand, with its offset.  Barcodes
and QR codes are drawn as real, scannable images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tillplug.receipts.code128 import from_escpos_payload

# ESC t n → Python codec (the pages tillplug pins, and the common ones).
CODE_PAGES = {
    0: "cp437",
    2: "cp850",
    3: "cp860",
    4: "cp863",
    5: "cp865",
    16: "cp1252",
    17: "cp866",
    18: "cp852",
    19: "cp858",
    40: "iso8859-15",
    45: "cp1250",
    46: "cp1251",
}
# The unprinted edge of thermal paper either side of the printable dots (about 4 mm at 203 dpi), drawn
# as the preview's margin: it is also a left-aligned barcode's quiet zone.
PAPER_MARGIN = 32
BARCODE_B = {
    65: "UPC-A",
    66: "UPC-E",
    67: "EAN13",
    68: "EAN8",
    69: "CODE39",
    70: "ITF",
    71: "CODABAR",
    72: "CODE93",
    73: "CODE128",
}
BARCODE_A = {0: "UPC-A", 1: "UPC-E", 2: "EAN13", 3: "EAN8", 4: "CODE39", 5: "ITF", 6: "CODABAR"}


@dataclass
class Style:
    bold: bool = False
    width: int = 1
    height: int = 1
    align: str = "left"
    underline: bool = False
    small: bool = False  # font B (ESC M 1): four columns in the space of three


@dataclass
class Item:
    kind: str  # text, barcode, qr, cut, feed
    text: str = ""
    style: Style = field(default_factory=Style)
    symbology: str = ""
    module: int = 2  # barcode bar width in printer dots (GS w)
    symbols: list[int] = field(default_factory=list)  # Code 128 symbol values, as the printer encodes them
    raster: tuple[int, int, bytes] | None = None  # an image: (width in bytes, height in dots, the bits)


@dataclass
class Preview:
    items: list[Item]
    unknown: list[tuple[int, str]]  # (offset, hex of the bytes not understood)

    def text(self, columns: int = 48) -> str:
        out: list[str] = []
        for item in self.items:
            if item.kind == "text":
                cols = max(1, (columns * 4 // 3 if item.style.small else columns) // item.style.width)
                line = item.text
                if item.style.align == "center":
                    line = line.center(cols).rstrip()
                elif item.style.align == "right":
                    line = line.rjust(cols)
                if item.style.width > 1:
                    line = " ".join(line)  # double width, drawn as spaced letters
                out.append(line)
            elif item.kind == "feed":
                out.append("")
            elif item.kind == "barcode":
                out.append(_aligned(f"[{item.symbology} barcode: {item.text}]", columns, item.style.align))
            elif item.kind == "qr":
                out.append(_aligned(f"[QR code: {item.text}]", columns, item.style.align))
            elif item.kind == "image" and item.raster is not None:
                out.append(_aligned(f"[image {item.raster[0] * 8}x{item.raster[1]} dots]", columns, item.style.align))
            elif item.kind == "cut":
                out.append("✂" + "-" * (columns - 1))
        return "\n".join(out)


def _aligned(line: str, columns: int, how: str) -> str:
    """As the printer places it: codes follow ESC a like text does."""
    return line.center(columns).rstrip() if how == "center" else line.rjust(columns) if how == "right" else line


ALIGN = {0: "left", 1: "center", 2: "right", 48: "left", 49: "center", 50: "right"}
# ESC commands with one argument byte that change nothing the preview draws: font, strike, flip, spacing...
ESC_IGNORED = (0x47, 0x7B, 0x33, 0x20, 0x56, 0x72, 0x52)
# Their lengths: ESC 2 (default line spacing), ESC p m t1 t2 (drawer kick), and the ignored ones.
ESC_FIXED = {0x32: 2, 0x70: 5, **dict.fromkeys(ESC_IGNORED, 3)}
# GS commands with fixed arguments that change nothing drawn: barcode height/font/HRI, invert; margins
GS_IGNORED = {0x68: 3, 0x66: 3, 0x48: 3, 0x42: 3, 0x4C: 4, 0x57: 4}


class _Interpreter:
    """Reads the stream once; each command family has its method, which returns the bytes it took."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.items: list[Item] = []
        self.unknown: list[tuple[int, str]] = []
        self.style = Style()
        self.codec = "cp437"
        self.line = bytearray()
        self.qr_data = b""
        self.module = 3  # GS w default
        self.i = 0

    def arg(self, k: int = 0) -> int:
        return self.data[self.i + k] if self.i + k < len(self.data) else 0

    def flush(self, force: bool = False) -> None:
        if self.line or force:
            self.items.append(
                Item("text", self.line.decode(self.codec, errors="replace"), Style(**self.style.__dict__))
            )
            self.line = bytearray()

    def not_understood(self, length: int) -> int:
        self.unknown.append((self.i, self.data[self.i : self.i + length].hex(" ")))
        return length

    def run(self) -> Preview:
        while self.i < len(self.data):
            b = self.data[self.i]
            if b == 0x0A:
                self.flush(force=True)
                self.i += 1
            elif b == 0x1B:
                self.i += self.esc(self.arg(1))
            elif b == 0x1D:
                self.i += self.gs(self.arg(1))
            elif b == 0x10 and self.arg(1) == 0x04:  # DLE EOT n: a status query, not printed
                self.i += 3
            elif b < 0x20 and b not in (0x09, 0x0D):
                self.i += self.not_understood(1)
            else:
                if b != 0x0D:
                    self.line.append(b)
                self.i += 1
        self.flush()
        return Preview(self.items, self.unknown)

    def esc(self, cmd: int) -> int:
        if cmd == 0x40:  # ESC @ initialise
            self.style, self.codec = Style(), "cp437"
            return 2
        if cmd == 0x74:  # ESC t n code page
            if self.arg(2) not in CODE_PAGES:
                self.not_understood(3)
            self.codec = CODE_PAGES.get(self.arg(2), self.codec)
            return 3
        if cmd == 0x64:  # ESC d n feed lines
            self.flush()
            self.items.extend(Item("feed") for _ in range(self.arg(2)))
            return 3
        if cmd in ESC_FIXED:
            return ESC_FIXED[cmd]
        return 3 if self.text_mode(cmd, self.arg(2)) else self.not_understood(2)

    def text_mode(self, cmd: int, n: int) -> bool:
        """ESC a / E / ! / - / M: how the next text looks.  False for any other command."""
        style = self.style
        if cmd == 0x61:  # align
            style.align = ALIGN.get(n, "left")
        elif cmd == 0x45:  # bold
            style.bold = bool(n & 1)
        elif cmd == 0x21:  # print mode
            style.bold, style.height, style.width = bool(n & 0x08), 2 if n & 0x10 else 1, 2 if n & 0x20 else 1
        elif cmd == 0x2D:  # underline
            style.underline = bool(n & 3)
        elif cmd == 0x4D:  # font
            style.small = n in (1, 49)
        else:
            return False
        return True

    def gs(self, cmd: int) -> int:
        if cmd in GS_IGNORED:
            return GS_IGNORED[cmd]
        handlers = {0x21: self.size, 0x77: self.bar_width, 0x6B: self.barcode, 0x56: self.cut}
        handler = handlers.get(cmd)
        if cmd == 0x28 and self.arg(2) == 0x6B:  # GS ( k: 2D codes
            handler = self.two_d
        elif cmd == 0x76 and self.arg(2) == 0x30:  # GS v 0: a raster image (the logo)
            handler = self.raster
        return handler() if handler else self.not_understood(2)

    def size(self) -> int:  # GS ! n
        self.style.width, self.style.height = (self.arg(2) >> 4) + 1, (self.arg(2) & 0x0F) + 1
        return 3

    def bar_width(self) -> int:  # GS w n
        self.module = max(1, min(6, self.arg(2)))
        return 3

    def cut(self) -> int:  # GS V m [n]
        self.flush()
        self.items.append(Item("cut"))
        return 3 if self.arg(2) in (0, 1, 48, 49) else 4

    def barcode(self) -> int:  # GS k m ...
        self.flush()
        data, i, m = self.data, self.i, self.arg(2)
        if m < 65:  # GS k m d1...dk NUL
            end = data.find(b"\x00", i + 3)
            end = len(data) if end < 0 else end
            text = data[i + 3 : end].decode("ascii", errors="replace")
            self.items.append(
                Item("barcode", text, Style(align=self.style.align), BARCODE_A.get(m, f"type {m}"), self.module)
            )
            return end + 1 - i
        length = self.arg(3)
        raw = data[i + 4 : i + 4 + length]
        text, symbols = raw.decode("ascii", errors="replace"), list[int]()
        if m == 73:
            try:
                text, symbols = from_escpos_payload(raw)
            except ValueError:
                self.not_understood(4 + length)
        symbology = BARCODE_B.get(m, f"type {m}")
        self.items.append(Item("barcode", text, Style(align=self.style.align), symbology, self.module, symbols))
        return 4 + length

    def two_d(self) -> int:
        length = self.arg(3) + self.arg(4) * 256
        cn, fn = self.arg(5), self.arg(6)
        payload = self.data[self.i + 7 : self.i + 5 + length]
        if cn == 49 and fn == 80:
            self.qr_data = payload[1:]
        elif cn == 49 and fn == 81:
            self.flush()
            self.items.append(Item("qr", self.qr_data.decode("utf-8", errors="replace"), Style(align=self.style.align)))
        return 5 + length

    def raster(self) -> int:
        width_bytes, height = self.arg(4) + self.arg(5) * 256, self.arg(6) + self.arg(7) * 256
        start = self.i + 8
        bits = self.data[start : start + width_bytes * height]
        self.flush()
        self.items.append(Item("image", style=Style(align=self.style.align), raster=(width_bytes, height, bytes(bits))))
        return 8 + width_bytes * height


def interpret(data: bytes) -> Preview:
    """What a printer would make of the bytes, and every byte it would not understand (with its offset)."""
    return _Interpreter(data).run()


def _font(size: int, bold: bool) -> Any:
    from PIL import ImageFont

    name = "DejaVuSansMono-Bold.ttf" if bold else "DejaVuSansMono.ttf"
    for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu"):
        path = Path(folder) / name
        if path.exists():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


def render_png(preview: Preview, out: str | Path, *, columns: int = 48, width_px: int = 576) -> Path:
    """Draw the receipt: monospace text at the printer's columns, real barcodes and QR codes, cut marks."""
    from PIL import Image, ImageDraw

    cell = width_px // columns
    size = int(cell / 0.61)  # DejaVu Sans Mono advances 0.602 em: keep a full line inside the paper
    margin = PAPER_MARGIN
    blocks: list[Any] = []  # (image, align)
    for item in preview.items:
        if item.kind == "text":
            base = size * 3 // 4 if item.style.small else size
            f = _font(base * item.style.height if item.style.width == 1 else base * 2, item.style.bold)
            w = max(1, int(f.getlength(item.text or " ")))
            h = int(size * 1.25 * item.style.height)
            img = Image.new("L", (min(width_px, w), h), 255)
            ImageDraw.Draw(img).text((0, 0), item.text, fill=0, font=f)
            if item.style.underline:
                ImageDraw.Draw(img).line((0, h - 2, w, h - 2), fill=0, width=1)
            blocks.append((img, item.style.align))
        elif item.kind == "feed":
            blocks.append((Image.new("L", (1, int(size * 1.25)), 255), "left"))
        elif item.kind == "barcode":
            blocks.append((_barcode_image(item, width_px), item.style.align))
        elif item.kind == "qr":
            blocks.append((_qr_image(item.text), item.style.align))
        elif item.kind == "image" and item.raster is not None:
            blocks.append((_raster_image(*item.raster), item.style.align))
        elif item.kind == "cut":
            cut = Image.new("L", (width_px, 24), 255)
            d = ImageDraw.Draw(cut)
            for x in range(0, width_px, 12):
                d.line((x, 12, x + 6, 12), fill=0, width=2)
            d.text((2, 0), "cut", fill=0, font=_font(10, False))
            blocks.append((cut, "left"))
    height = sum(img.height for img, _ in blocks) + 2 * margin
    page = Image.new("L", (width_px + 2 * margin, max(height, 2 * margin + 1)), 255)
    y = margin
    for img, align in blocks:
        x = margin + {"left": 0, "center": (width_px - img.width) // 2, "right": width_px - img.width}[align]
        page.paste(img, (max(margin, x), y))
        y += img.height
    path = Path(out)
    page.save(path)
    return path


def _barcode_image(item: Item, width_px: int) -> Any:
    """Bars exactly ``module`` printer dots wide, the symbols the printer was sent, with the text below."""
    import barcode
    from barcode.charsets import code128
    from PIL import Image, ImageDraw

    text, symbology, module = item.text, item.symbology, item.module
    kind = {"CODE128": "code128", "EAN13": "ean13", "EAN8": "ean8", "UPC-A": "upca", "CODE39": "code39"}.get(
        symbology, "code128"
    )
    if item.symbols:
        pattern = "".join(code128.CODES[v] for v in item.symbols) + code128.STOP + "11"
    else:
        try:
            pattern = "".join(barcode.get(kind, text).build())
        except Exception:  # a value the symbology cannot hold: draw it as Code 128 instead
            pattern = "".join(barcode.get("code128", text).build())
    bar_h, text_h = 80, 22
    img = Image.new("L", (len(pattern) * module, bar_h + text_h), 255)  # the quiet zones are the paper around it
    draw = ImageDraw.Draw(img)
    for x, bit in enumerate(pattern):
        if bit == "1":
            draw.rectangle((x * module, 0, (x + 1) * module - 1, bar_h - 1), fill=0)
    font = _font(16, False)
    draw.text(((img.width - font.getlength(text)) / 2, bar_h + 2), text, fill=0, font=font)
    if img.width > width_px:  # what the printer would do: the right end falls off the paper
        img = img.crop((0, 0, width_px, img.height))
    return img


def _raster_image(width_bytes: int, height: int, bits: bytes) -> Any:
    """GS v 0 bits (1 = black, most significant bit leftmost) as a picture."""
    from PIL import Image, ImageOps

    packed = bits.ljust(width_bytes * height, b"\x00")
    return ImageOps.invert(Image.frombytes("1", (width_bytes * 8, height), packed).convert("L"))


def _qr_image(text: str) -> Any:
    import qrcode

    qr = qrcode.QRCode(box_size=6, border=4)
    qr.add_data(text)
    qr.make(fit=True)
    return qr.make_image(fill_color="black", back_color="white").get_image().convert("L")
