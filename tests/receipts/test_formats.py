"""#27: a slip in the shops' usual locales is formatted without Babel's data (about 6 MB of a till's
memory), and says exactly what Babel would have written."""

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone

from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal
from hypothesis import given, settings
from hypothesis import strategies as st

from tillplug.money import CURRENCY_EXPONENTS
from tillplug.receipts import formats_data
from tillplug.receipts.formats import formats_for
from tillplug.receipts.templates import DEFAULT_LOCALES, SlipContext
from tools.slip_formats import LOCALES, currency_digits, locale_formats

LOCALE = st.sampled_from(sorted(formats_data.LOCALES))
ZONES = st.none() | st.just(UTC) | st.builds(lambda h: timezone(timedelta(hours=h)), st.integers(-12, 14))
MOMENTS = st.builds(
    lambda at, zone: at.replace(tzinfo=zone), st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31)), ZONES
)


def test_the_table_is_what_babel_says_now():
    """A Babel upgrade that changes CLDR's data fails here: run ``python -m tools.slip_formats`` again."""
    assert {name: locale_formats(name) for name in LOCALES} == formats_data.LOCALES
    assert currency_digits() == formats_data.DIGITS


def test_every_default_slip_locale_is_in_the_table():
    assert set(DEFAULT_LOCALES.values()) <= set(formats_data.LOCALES)


@settings(max_examples=300)
@given(locale=LOCALE, n=st.integers(-(10**15), 10**15))
def test_a_number_is_what_babel_writes(locale, n):
    assert formats_for(locale).number(n) == format_decimal(n, locale=locale)


@settings(max_examples=500)
@given(locale=LOCALE, currency=st.sampled_from(sorted(CURRENCY_EXPONENTS)), minor=st.integers(-(10**13), 10**13))
def test_an_amount_is_what_babel_writes(locale, currency, minor):
    babel = format_currency(minor / 10 ** CURRENCY_EXPONENTS[currency], currency, locale=locale)
    assert formats_for(locale).money(minor, currency) == babel


@settings(max_examples=300)
@given(locale=LOCALE, at=MOMENTS)
def test_a_date_and_time_is_what_babel_writes(locale, at):
    assert formats_for(locale).when(at) == format_datetime(at, "short", locale=locale)
    assert formats_for(locale).day(at.date()) == format_date(at.date(), "medium", locale=locale)


def test_a_locale_outside_the_table_is_still_formatted_by_babel():
    assert formats_for("fr_CA") is None
    ctx = SlipContext("t", "b", "EUR", language="fr_CA")
    assert ctx.money(1234) == format_currency(12.34, "EUR", locale="fr_CA")
    assert ctx.day("2026-12-07") == format_date(date(2026, 12, 7), "medium", locale="fr_CA")


def test_a_slip_in_a_usual_locale_loads_no_babel():
    code = (
        "import sys\n"
        "from datetime import datetime\n"
        "from tillplug.receipts.templates import SlipContext\n"
        "for language in ('en', 'fr', 'de_CH'):\n"
        "    ctx = SlipContext('t', 'b', 'EUR', language=language)\n"
        "    ctx.points(1234), ctx.money(123456), ctx.when(datetime.now()), ctx.day('2026-12-07')\n"
        "held = sorted(m for m in sys.modules if m.split('.')[0] == 'babel')\n"
        "assert held == [], held\n"
    )
    run = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
