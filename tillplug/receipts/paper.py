"""Paper: how many columns and printable dots a printer has.  The config's explicit settings win,
then the printer's escpos-printer-db profile, then the paper width."""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tillplug.errors import DriverError

if TYPE_CHECKING:  # for the type checker only: config imports this room at run time
    from tillplug.config.model import PrinterConfig

# Paper without a profile that names it: columns of font A and printable dots.
PAPER = {58: (32, 384), 80: (48, 576)}


def dots_for_columns(columns: int) -> int:
    """Printable dots for a column count when no profile is at hand (the preview): font A is 12 dots wide,
    except the 42-column 80 mm heads (TM-T88 and kin) that print 512 dots."""
    return {32: 384, 42: 512, 48: 576}.get(columns, columns * 12)


@cache
def printer_profile(profile_name: str) -> dict[str, Any]:
    """The model's profile in escpos-printer-db, read from the file python-escpos ships (or the one
    ``ESCPOS_CAPABILITIES_FILE`` names, as python-escpos reads), with the code pages it lists under
    ``encodings``.  Read with ``json``, not through ``escpos.capabilities``, which imports PyYAML and keeps
    every profile (1.5 MB of a till's memory).  KeyError for a model the database does not know."""
    named = os.environ.get("ESCPOS_CAPABILITIES_FILE")
    source = Path(named) if named else resources.files("escpos") / "capabilities.json"
    capabilities = json.loads(source.read_bytes())
    profile = capabilities["profiles"][profile_name]
    listed = set(profile.get("codePages", {}).values())
    return {**profile, "encodings": {name: capabilities["encodings"].get(name, {}) for name in listed}}


def code_pages(profile_name: str) -> dict[str, str]:
    """The profile's code pages by name, with their table numbers (the last number where one is listed
    twice, as python-escpos's ``get_code_pages``)."""
    return {name: number for number, name in printer_profile(profile_name).get("codePages", {}).items()}


def profile_paper(profile_name: str) -> tuple[int, int] | None:
    """(columns of font A, printable dots) as escpos-printer-db describes the model, or None if it does not."""
    data = printer_profile(profile_name)
    dots = data.get("media", {}).get("width", {}).get("pixels")
    columns = data.get("fonts", {}).get("0", {}).get("columns")
    if isinstance(dots, int) and isinstance(columns, int):
        return columns, dots
    return None


def paper_layout(config: PrinterConfig) -> tuple[int, int]:
    """(columns, dots): what the config sets explicitly wins, then the printer's profile, then 80 mm paper."""
    profile = profile_paper(config.profile)
    width_set = "paper_width_mm" in config.model_fields_set
    by_width = PAPER[config.paper_width_mm]
    columns, dots = by_width if width_set or profile is None else profile
    return config.columns or columns, dots


def layout_warnings(config: PrinterConfig) -> list[str]:
    """Where the config's paper settings disagree with the printer's profile, or its code page may not be
    the printer's (for check-config)."""
    try:
        profile = profile_paper(config.profile)
    except Exception:
        return []
    warnings = code_page_warnings(config)
    if profile is None:
        return warnings
    if config.columns and config.columns != profile[0]:
        warnings.append(
            f"printer {config.name}: columns = {config.columns} but profile {config.profile} prints {profile[0]} "
            "columns; label/value rows will break unless the printer is set up that way"
        )
    if "paper_width_mm" in config.model_fields_set and PAPER[config.paper_width_mm][1] != profile[1]:
        warnings.append(
            f"printer {config.name}: paper_width_mm = {config.paper_width_mm} but profile {config.profile} has "
            f"{profile[1]} printable dots; remove paper_width_mm to use the profile"
        )
    return warnings


# One code page per printer, pinned, so £ € é ß always print the same way.
PREFERRED_CODE_PAGES = ("CP858", "CP1252", "ISO_8859-15", "CP850", "CP437")


def pinned_code_page(profile_name: str, wanted: str | None = None) -> str:
    pages = code_pages(profile_name)
    if wanted:
        if wanted not in pages:
            raise DriverError(f"profile {profile_name} has no code page {wanted} (it has: {', '.join(pages)})")
        return wanted
    return next((p for p in PREFERRED_CODE_PAGES if p in pages), next(iter(pages)))


def code_page_warnings(config: PrinterConfig) -> list[str]:
    """The profile lists the code page tillplug will use at more than one table number (POS-5890 and
    other clones: firmware differs).  On a printer whose table at the number used holds another page,
    every letter beyond ASCII prints as '?' or as another letter, and nothing can tell: check-config
    says so, and the test page's accented line is the check."""
    try:
        page = pinned_code_page(config.profile, config.code_page)
        tables = printer_profile(config.profile).get("codePages", {})
    except Exception:  # an unknown profile or code page is the driver's error, told elsewhere
        return []
    numbers = sorted(int(n) for n, name in tables.items() if name == page and str(n).isdigit())
    if len(numbers) < 2:
        return []
    listed_once = [p for p in ("CP850", "CP1252", "CP858", "CP437") if list(tables.values()).count(p) == 1]
    instead = f" (e.g. {listed_once[0]}, listed once)" if listed_once else ""
    return [
        f"printer {config.name}: profile {config.profile} lists code page {page} as tables "
        f"{', '.join(map(str, numbers))}: printers sold under this name differ, and on one whose table "
        f"differs every accented letter and £ or € prints as '?' or as another letter. Run "
        f"`tillplug test-print --printer {config.name}` and check its line '£ € é è à ç ü ö ä ß ñ'; "
        f"if it is wrong, set code_page to another page the profile lists{instead} and check again"
    ]


def small_font_columns(profile_name: str, columns: int) -> int:
    """Columns of font B on this paper: the profile's ratio of font B to font A, else 4 to 3 (Epson's)."""
    fonts = printer_profile(profile_name).get("fonts", {})
    a, b = fonts.get("0", {}).get("columns"), fonts.get("1", {}).get("columns")
    if isinstance(a, int) and isinstance(b, int) and a > 0 and b > a:
        return columns * b // a
    return columns * 4 // 3
