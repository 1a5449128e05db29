"""How the shops' usual locales write numbers, money and dates, read from Babel (CLDR): the maintained
source of ``tillplug/receipts/formats_data.py``.  Used to generate (and, in the tests, to check) that
file; a till then formats a slip in these locales without loading Babel's locale data (about 6 MB).

    python -m tools.slip_formats > tillplug/receipts/formats_data.py && ruff format tillplug/receipts/formats_data.py

Only what a slip uses is read: the standard decimal and currency patterns (as Babel parses them), the
group and decimal symbols, the currency symbols and digits, the short date-time and the medium date
(as tokens of their patterns), the abbreviated month names and the am/pm names.
"""

from __future__ import annotations

import pprint
import sys
from datetime import time
from typing import Any, cast

from babel import Locale
from babel.dates import DateTimeFormat, get_datetime_format, tokenize_pattern
from babel.numbers import get_currency_precision, get_currency_symbol, get_decimal_symbol, get_group_symbol

from tillplug.money import CURRENCY_EXPONENTS

# The slip languages' usual countries (receipts.templates.DEFAULT_LOCALES) and their neighbours.
LOCALES = (
    "en_GB", "en_IE", "en_US", "de_DE", "de_AT", "de_CH", "fr_FR", "fr_BE", "fr_CH", "es_ES", "nl_NL", "nl_BE",
)  # fmt: skip
# The date fields tillplug.receipts.formats writes; a locale whose patterns use another is left to Babel.
FIELDS = {"d", "M", "y", "H", "h", "m", "a"}


def _tokens(pattern: str) -> list[str | tuple[str, int]]:
    """A date pattern as literal text and (field letter, count) pairs."""
    tokens: list[str | tuple[str, int]] = []
    for kind, value in tokenize_pattern(pattern):
        if kind == "field":
            letter, count = cast(tuple[str, int], value)
            if letter not in FIELDS or (letter == "M" and count > 3) or (letter == "a" and count > 1):
                raise ValueError(f"date field {letter * count} in {pattern!r}")
            tokens.append((letter, count))
        else:
            tokens.append(str(value))
    return tokens


def _number(pattern: Any) -> dict[str, Any]:
    return {"prefix": tuple(pattern.prefix), "suffix": tuple(pattern.suffix), "grouping": tuple(pattern.grouping)}


def locale_formats(name: str) -> dict[str, Any]:
    locale = Locale.parse(name)
    return {
        "group": get_group_symbol(locale),
        "decimal": get_decimal_symbol(locale),
        "number": _number(locale.decimal_formats[None]),
        "money": _number(locale.currency_formats["standard"]),
        "symbols": {code: get_currency_symbol(code, locale) for code in sorted(CURRENCY_EXPONENTS)},
        "when": (
            str(get_datetime_format("short", locale=locale)).replace("'", ""),
            _tokens(locale.date_formats["short"].pattern),
            _tokens(locale.time_formats["short"].pattern),
        ),
        "day": _tokens(locale.date_formats["medium"].pattern),
        "months": tuple(locale.months["format"]["abbreviated"][m] for m in range(1, 13)),
        "periods": tuple(DateTimeFormat(time(hour), locale).format_period("a", 1) for hour in (0, 12)),
    }


def currency_digits() -> dict[str, int]:
    """The digits Babel writes an amount with (CLDR's, which may be fewer than the currency's exponent)."""
    return {code: get_currency_precision(code) for code in sorted(CURRENCY_EXPONENTS)}


def generate() -> str:
    formats = {name: locale_formats(name) for name in LOCALES}
    digits = currency_digits()
    return (
        '"""How the shops\' usual locales write numbers, money and dates on a slip.\n\n'
        "Generated from Babel's CLDR data (``python -m tools.slip_formats``); do not edit by hand.\n"
        '"""\n\n'
        "from typing import Any\n\n"
        f"DIGITS: dict[str, int] = {pprint.pformat(digits, width=120, sort_dicts=True)}\n\n"
        f"LOCALES: dict[str, dict[str, Any]] = {pprint.pformat(formats, width=120, sort_dicts=True)}\n"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(generate())
