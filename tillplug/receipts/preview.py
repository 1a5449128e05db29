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


@dataclass
class Item:
    kind: str  # text, barcode, qr, cut, feed
    text: str = ""
    style: Style = field(default_factory=Style)
    symbology: str = ""
    module: int = 2  # barcode bar width in printer dots (GS w)


@dataclass
class Preview:
    items: list[Item]
    unknown: list[tuple[int, str]]  # (offset, hex of the bytes not understood)

    def text(self, columns: int = 48) -> str:
        out: list[str] = []
        for item in self.items:
            if item.kind == "text":
                cols = max(1, columns // item.style.width)
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
                out.append(f"[{item.symbology} barcode: {item.text}]".center(columns).rstrip())
            elif item.kind == "qr":
                out.append(f"[QR code: {item.text}]".center(columns).rstrip())
            elif item.kind == "cut":
                out.append("✂" + "-" * (columns - 1))
        return "\n".join(out)


def interpret(data: bytes) -> Preview:  # noqa: C901, PLR0912, PLR0915 -- one dispatch over ESC/POS commands
    items: list[Item] = []
    unknown: list[tuple[int, str]] = []
    style = Style()
    codec = "cp437"
    line = bytearray()
    qr_data = b""
    module = 3  # GS w default
    i, n = 0, len(data)

    def flush(force: bool = False) -> None:
        nonlocal line
        if line or force:
            items.append(Item("text", line.decode(codec, errors="replace"), Style(**style.__dict__)))
            line = bytearray()

    def arg(k: int = 0) -> int:
        return data[i + k] if i + k < n else 0

    while i < n:
        b = data[i]
        if b == 0x0A:
            flush(force=True)
            i += 1
        elif b == 0x0D:
            i += 1
        elif b == 0x1B:  # ESC
            cmd = arg(1)
            if cmd == 0x40:  # ESC @ initialise
                style, codec = Style(), "cp437"
                i += 2
            elif cmd == 0x74:  # ESC t n code page
                codec = CODE_PAGES.get(arg(2), codec)
                if arg(2) not in CODE_PAGES:
                    unknown.append((i, data[i : i + 3].hex(" ")))
                i += 3
            elif cmd == 0x61:  # ESC a n align
                style.align = {0: "left", 1: "center", 2: "right", 48: "left", 49: "center", 50: "right"}.get(
                    arg(2), "left"
                )
                i += 3
            elif cmd == 0x45:  # ESC E n bold
                style.bold = bool(arg(2) & 1)
                i += 3
            elif cmd == 0x21:  # ESC ! n print mode
                m = arg(2)
                style.bold = bool(m & 0x08)
                style.height = 2 if m & 0x10 else 1
                style.width = 2 if m & 0x20 else 1
                i += 3
            elif cmd == 0x2D:  # ESC - n underline
                style.underline = bool(arg(2) & 3)
                i += 3
            elif cmd in (
                0x4D,
                0x47,
                0x7B,
                0x33,
                0x20,
                0x56,
                0x72,
                0x52,
            ):  # font, strike, flip, spacing...: no effect here
                i += 3
            elif cmd == 0x32:  # ESC 2 default spacing
                i += 2
            elif cmd == 0x64:  # ESC d n feed lines
                flush()
                items.extend(Item("feed") for _ in range(arg(2)))
                i += 3
            elif cmd == 0x70:  # ESC p m t1 t2 drawer kick
                i += 5
            else:
                unknown.append((i, data[i : i + 2].hex(" ")))
                i += 2
        elif b == 0x1D:  # GS
            cmd = arg(1)
            if cmd == 0x21:  # GS ! n size
                style.width, style.height = (arg(2) >> 4) + 1, (arg(2) & 0x0F) + 1
                i += 3
            elif cmd == 0x77:  # GS w n: bar width
                module = max(1, min(6, arg(2)))
                i += 3
            elif cmd in (0x68, 0x66, 0x48, 0x42, 0x4C, 0x57):  # barcode height/font/HRI, invert, margins
                i += 3 if cmd not in (0x4C, 0x57) else 4
            elif cmd == 0x6B:  # GS k barcode
                flush()
                m = arg(2)
                if m >= 65:
                    length = arg(3)
                    raw = data[i + 4 : i + 4 + length]
                    text = raw.decode("ascii", errors="replace")
                    if m == 73 and text[:2] in ("{A", "{B", "{C"):
                        text = text[2:]
                    items.append(Item("barcode", text, Style(align=style.align), BARCODE_B.get(m, f"type {m}"), module))
                    i += 4 + length
                else:
                    end = data.find(b"\x00", i + 3)
                    end = n if end < 0 else end
                    items.append(
                        Item(
                            "barcode",
                            data[i + 3 : end].decode("ascii", errors="replace"),
                            Style(align=style.align),
                            BARCODE_A.get(m, f"type {m}"),
                            module,
                        )
                    )
                    i = end + 1
            elif cmd == 0x28 and arg(2) == 0x6B:  # GS ( k: 2D codes
                length = arg(3) + arg(4) * 256
                cn, fn = arg(5), arg(6)
                payload = data[i + 7 : i + 5 + length]
                if cn == 49 and fn == 80:
                    qr_data = payload[1:]
                elif cn == 49 and fn == 81:
                    flush()
                    items.append(Item("qr", qr_data.decode("utf-8", errors="replace"), Style(align="center")))
                i += 5 + length
            elif cmd == 0x56:  # GS V cut
                flush()
                items.append(Item("cut"))
                i += 3 if arg(2) in (0, 1, 48, 49) else 4
            else:
                unknown.append((i, data[i : i + 2].hex(" ")))
                i += 2
        elif b == 0x10 and arg(1) == 0x04:  # DLE EOT n: a status query, not printed
            i += 3
        elif b < 0x20 and b != 0x09:
            unknown.append((i, f"{b:02x}"))
            i += 1
        else:
            line.append(b)
            i += 1
    flush()
    return Preview(items, unknown)


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
    margin = 8
    blocks: list[Any] = []  # (image, align)
    for item in preview.items:
        if item.kind == "text":
            f = _font(size * item.style.height if item.style.width == 1 else size * 2, item.style.bold)
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
            blocks.append((_barcode_image(item.text, item.symbology, item.module, width_px), "center"))
        elif item.kind == "qr":
            blocks.append((_qr_image(item.text), "center"))
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


def _barcode_image(text: str, symbology: str, module: int, width_px: int) -> Any:
    """Bars exactly ``module`` printer dots wide, as the printer draws them, with the text below."""
    import barcode
    from PIL import Image, ImageDraw

    kind = {"CODE128": "code128", "EAN13": "ean13", "EAN8": "ean8", "UPC-A": "upca", "CODE39": "code39"}.get(
        symbology, "code128"
    )
    try:
        pattern = "".join(barcode.get(kind, text).build())
    except Exception:  # a value the symbology cannot hold: draw it as Code 128 instead
        pattern = "".join(barcode.get("code128", text).build())
    quiet, bar_h, text_h = 10 * module, 80, 22
    img = Image.new("L", (len(pattern) * module + 2 * quiet, bar_h + text_h), 255)
    draw = ImageDraw.Draw(img)
    for x, bit in enumerate(pattern):
        if bit == "1":
            draw.rectangle((quiet + x * module, 0, quiet + (x + 1) * module - 1, bar_h - 1), fill=0)
    font = _font(16, False)
    draw.text(((img.width - font.getlength(text)) / 2, bar_h + 2), text, fill=0, font=font)
    if img.width > width_px:  # what the printer would do: the right end falls off the paper
        img = img.crop((0, 0, width_px, img.height))
    return img


def _qr_image(text: str) -> Any:
    import qrcode

    qr = qrcode.QRCode(box_size=6, border=4)
    qr.add_data(text)
    qr.make(fit=True)
    return qr.make_image(fill_color="black", back_color="white").get_image().convert("L")
