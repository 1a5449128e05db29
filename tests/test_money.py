"""Money and points: integer minor units, conversions that never give away a fraction."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillplug.money import CURRENCY_EXPONENTS, Money, money_to_points, points_to_money

rates = st.tuples(st.integers(1, 1_000_000), st.integers(1, 1_000_000))


@given(st.integers(0, 10**9), rates)
def test_points_are_worth_at_most_their_exact_value_and_less_than_one_unit_under_it(points, rate):
    rate_points, rate_money = rate
    minor = points_to_money(points, rate_points, rate_money)
    exact_times_rate = points * rate_money  # exact value × rate_points, kept in integers
    assert minor * rate_points <= exact_times_rate < (minor + 1) * rate_points


@given(st.integers(0, 10**9), rates)
def test_money_to_points_is_the_fewest_points_that_cover_the_amount(minor, rate):
    rate_points, rate_money = rate
    points = money_to_points(minor, rate_points, rate_money)
    assert points_to_money(points, rate_points, rate_money) >= minor
    assert points == 0 or points_to_money(points - 1, rate_points, rate_money) < minor


def test_negative_amounts_are_refused():
    with pytest.raises(ValueError):
        points_to_money(-1, 100, 100)
    with pytest.raises(ValueError):
        money_to_points(-1, 100, 100)


@given(st.integers(-(10**12), 10**12), st.sampled_from(sorted(CURRENCY_EXPONENTS)))
def test_format_shows_every_minor_unit_exactly(minor, currency):
    text = Money(minor, currency).format()
    digits = "".join(ch for ch in text if ch.isdigit())
    assert int(digits) == abs(minor)
    assert text.startswith("-") == (minor < 0)


@pytest.mark.parametrize(
    "minor, currency, text",
    [
        (1250, "GBP", "£12.50"),
        (5, "EUR", "€0.05"),
        (123456, "USD", "$1,234.56"),
        (1200, "JPY", "1,200 JPY"),
        (1500, "KWD", "1.500 KWD"),
        (-200, "GBP", "-£2.00"),
    ],
)
def test_format_examples(minor, currency, text):
    assert Money(minor, currency).format() == text
