"""Paper: how many columns and printable dots a printer has.  The config's explicit settings win,
then the printer's escpos-printer-db profile, then the paper width."""

from __future__ import annotations

from typing import Any

# Paper without a profile that names it: columns of font A and printable dots.
PAPER = {58: (32, 384), 80: (48, 576)}


def dots_for_columns(columns: int) -> int:
    """Printable dots for a column count when no profile is at hand (the preview): font A is 12 dots wide,
    except the 42-column 80 mm heads (TM-T88 and kin) that print 512 dots."""
    return {32: 384, 42: 512, 48: 576}.get(columns, columns * 12)


def profile_paper(profile_name: str) -> tuple[int, int] | None:
    """(columns of font A, printable dots) as escpos-printer-db describes the model, or None if it does not."""
    from escpos.capabilities import get_profile

    data = get_profile(profile_name).profile_data
    dots = data.get("media", {}).get("width", {}).get("pixels")
    columns = data.get("fonts", {}).get("0", {}).get("columns")
    if isinstance(dots, int) and isinstance(columns, int):
        return columns, dots
    return None


def paper_layout(config: Any) -> tuple[int, int]:
    """(columns, dots): what the config sets explicitly wins, then the printer's profile, then 80 mm paper."""
    profile = profile_paper(config.profile)
    width_set = "paper_width_mm" in config.model_fields_set
    by_width = PAPER[config.paper_width_mm]
    columns, dots = by_width if width_set or profile is None else profile
    return config.columns or columns, dots


def layout_warnings(config: Any) -> list[str]:
    """Where the config's paper settings disagree with the printer's profile (for check-config)."""
    try:
        profile = profile_paper(config.profile)
    except Exception:
        return []
    if profile is None:
        return []
    warnings = []
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


def small_font_columns(profile_name: str, columns: int) -> int:
    """Columns of font B on this paper: the profile's ratio of font B to font A, else 4 to 3 (Epson's)."""
    from escpos.capabilities import get_profile

    fonts = get_profile(profile_name).profile_data.get("fonts", {})
    a, b = fonts.get("0", {}).get("columns"), fonts.get("1", {}).get("columns")
    if isinstance(a, int) and isinstance(b, int) and a > 0 and b > a:
        return columns * b // a
    return columns * 4 // 3
