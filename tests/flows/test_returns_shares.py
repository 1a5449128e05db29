"""The shares and caps of returns (hypothesis): never past the original, a whole return moves exactly it,
and the returns a sale accepts never exceed it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tillplug.flows.returns import ReturnedLine, ReturnRequest, past_the_sale, share

policies = st.sampled_from(["proportion", "none", "all"])


@st.composite
def returns_of_a_sale(draw: st.DrawFn) -> tuple[int, list[int]]:
    """A sale's whole and the amounts of its returns, which together never exceed it."""
    whole = draw(st.integers(1, 10**9))
    amounts, left = [], whole
    for _ in range(draw(st.integers(1, 12))):
        if left == 0:
            break
        amount = draw(st.integers(1, left))
        amounts.append(amount)
        left -= amount
    return whole, amounts


def moved(policy: str, original: int, whole: int, amounts: list[int]) -> list[int]:
    each, returned, already = [], 0, 0
    for amount in amounts:
        returned += amount
        points = share(policy, original, returned, whole, already)  # type: ignore[arg-type]
        each.append(points)
        already += points
    return each


@given(policies, st.integers(0, 10**7), returns_of_a_sale())
def test_the_returns_of_a_sale_never_move_more_than_the_original(policy, original, sale):
    whole, amounts = sale
    each = moved(policy, original, whole, amounts)
    assert all(points >= 0 for points in each)
    assert sum(each) <= original
    if sum(amounts) == whole and policy != "none":
        assert sum(each) == original  # a whole return moves exactly the original
    if policy == "none":
        assert sum(each) == 0


@given(st.integers(0, 10**7), returns_of_a_sale())
def test_in_proportion_each_return_is_its_share_floored_to_the_point(original, sale):
    """Cumulative flooring: after any return, the points moved are within one point of the exact share."""
    whole, amounts = sale
    returned, total = 0, 0
    for amount, points in zip(amounts, moved("proportion", original, whole, amounts), strict=True):
        returned += amount
        total += points
        exact = original * returned / whole
        assert exact - 1 < total <= exact + 1e-9


@given(st.integers(1, 10**6), st.integers(1, 10**6), st.integers(1, 10**6))
def test_a_take_back_over_the_amount_paid_stops_at_the_original(original, paid, extra):
    """Earned points are in proportion to the amount paid, and the goods returned may be worth more
    than was paid (points paid for the rest): past the amount paid, it is the whole of them."""
    assert share("proportion", original, paid + extra, paid, 0) == original
    assert share("proportion", original, paid, paid, original) == 0


SKUS = ("A", "B", "C")


@st.composite
def sale_and_asks(draw: st.DrawFn) -> tuple[int, dict[str, tuple[float, int]], list[ReturnRequest]]:
    """A basket, its total, and returns asked of it: any amounts, lines of sold and unsold SKUs."""
    basket = {
        sku: (float(draw(st.integers(1, 5))), draw(st.integers(0, 5000)))
        for sku in draw(st.lists(st.sampled_from(SKUS[:2]), min_size=1, unique=True))
    }
    gross = sum(amount for _, amount in basket.values()) + draw(st.integers(0, 2000))  # + the points discount
    asks = []
    for i in range(draw(st.integers(1, 8))):
        lines = draw(
            st.lists(
                st.builds(ReturnedLine, st.sampled_from(SKUS), st.sampled_from([0.5, 1.0, 2.0]), st.integers(0, 3000)),
                max_size=3,
            )
        )
        asks.append(ReturnRequest(f"r{i}", "T", 1, draw(st.integers(1, max(1, gross))), tuple(lines)))
    return gross, basket, asks


@given(sale_and_asks())
def test_the_returns_a_sale_accepts_never_exceed_it_in_amount_or_per_line(case):
    gross, basket, asks = case
    accepted: list[tuple[int, tuple[ReturnedLine, ...]]] = []
    for ask in asks:
        refusal = past_the_sale(ask, gross, basket, accepted, str)
        total = sum(amount for amount, _ in accepted) + ask.amount
        lines = [line for _, got in accepted for line in got] + list(ask.lines)
        fits = total <= gross and all(
            line.sku in basket
            and sum(x.quantity for x in lines if x.sku == line.sku) <= basket[line.sku][0]
            and sum(x.amount for x in lines if x.sku == line.sku) <= basket[line.sku][1]
            for line in ask.lines
        )
        assert (refusal is None) == fits, (ask, refusal)
        if refusal is None:
            accepted.append((ask.amount, ask.lines))
    assert sum(amount for amount, _ in accepted) <= gross
