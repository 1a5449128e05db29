"""Numbers, money and dates as Babel writes them, for the shops' usual locales, without Babel.

Babel's formatting loads its global data and the locale's (about 6 MB a till holds from its first slip
on); a slip needs a few symbols and patterns of one locale.  Those are generated from Babel into
``formats_data`` (``python -m tools.slip_formats``), and written here the way Babel writes them
(``babel.numbers.NumberPattern.apply``, ``babel.dates.DateTimeFormat``) for what a slip formats: a whole
number, an amount in minor units, the short date and time, the medium date.  A locale not in the table
is formatted by Babel itself (``templates.SlipContext``).  ``tests/receipts/test_formats.py`` holds both
to Babel's output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from typing import Any

from tillplug.money import CURRENCY_EXPONENTS

_QUOTED = re.compile(r"'([^']*)'")  # as Babel unquotes a formatted number: '…' → …, '' → '


@dataclass(frozen=True)
class SlipFormats:
    data: dict[str, Any]
    digits: dict[str, int]

    def number(self, n: int) -> str:
        """A whole number: Babel's ``format_decimal(n)``."""
        return self._apply(self.data["number"], Decimal(n), 0)

    def money(self, minor: int, currency: str) -> str:
        """An amount in minor units: Babel's ``format_currency(minor / 10**exponent, currency)``."""
        value = Decimal(minor).scaleb(-CURRENCY_EXPONENTS[currency])
        return self._apply(self.data["money"], value, self.digits[currency], self.data["symbols"][currency])

    def _apply(self, pattern: dict[str, Any], value: Decimal, digits: int, symbol: str = "¤") -> str:
        negative = int(value.is_signed())
        whole, _, fraction = f"{abs(value).quantize(Decimal(1).scaleb(-digits)):f}".partition(".")
        number = self._group(whole, pattern["grouping"])
        if digits:
            number += self.data["decimal"] + fraction
        text = (pattern["prefix"][negative] + number + pattern["suffix"][negative]).replace("¤", symbol)
        return _QUOTED.sub(lambda m: m.group(1) or "'", text)  # Babel's too: de_CH's 1'234'567 is 1234567

    def _group(self, digits: str, grouping: tuple[int, int]) -> str:
        size, grouped = grouping[0], ""
        while len(digits) > size:
            grouped = self.data["group"] + digits[-size:] + grouped
            digits = digits[:-size]
            size = grouping[1]
        return digits + grouped

    def when(self, at: datetime) -> str:
        """Babel's ``format_datetime(at, "short")``."""
        combined, day, time = self.data["when"]
        return str(combined).replace("{0}", self._date(at, time)).replace("{1}", self._date(at, day))

    def day(self, on: date) -> str:
        """Babel's ``format_date(on, "medium")``."""
        return self._date(on, self.data["day"])

    def _date(self, at: date, tokens: list[Any]) -> str:
        return "".join(token if isinstance(token, str) else self._field(at, *token) for token in tokens)

    def _field(self, at: Any, letter: str, count: int) -> str:
        if letter == "y":
            return f"{at.year:0{count}d}"[-2:] if count == 2 else f"{at.year:0{count}d}"
        if letter == "M":
            return self.data["months"][at.month - 1] if count == 3 else f"{at.month:0{count}d}"
        if letter == "a":
            return str(self.data["periods"][at.hour >= 12])
        if letter == "d":
            return f"{at.day:0{count}d}"
        value = {"H": at.hour, "h": at.hour % 12 or 12, "m": at.minute}[letter]  # a time's fields
        return f"{value:0{count}d}"


@cache
def formats_for(locale: str) -> SlipFormats | None:
    """The locale's formats, or None when Babel must write them (a locale not in the table)."""
    from tillplug.receipts import formats_data

    data = formats_data.LOCALES.get(locale)
    return None if data is None else SlipFormats(data, formats_data.DIGITS)
