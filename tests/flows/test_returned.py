"""Returns across the chain's tills (hypothesis): each till works out what the earlier returns moved
from their amounts alone, and gets exactly what one till taking every return would have moved."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.flows.test_returns_shares import moved, policies, returns_of_a_sale
from tillplug.errors import RelayRefusal
from tillplug.flows.returned import ReturnRequest, moved_before, share
from tillplug.relay.sales import request_of


@given(policies, st.integers(0, 10**7), returns_of_a_sale(), st.data())
def test_a_return_at_any_till_moves_what_one_till_taking_them_all_would(policy, original, sale, data):
    whole, amounts = sale
    one_till = moved(policy, original, whole, amounts)
    tills = [data.draw(st.sampled_from(["A", "B", "C"])) for _ in amounts]
    moved_by: dict[str, int] = {}
    for n, amount in enumerate(amounts):  # each till knows only the chain's list of earlier amounts
        before = sum(amounts[:n])
        points = share(policy, original, before + amount, whole, moved_before(policy, original, before, whole))
        assert points == one_till[n]
        moved_by[tills[n]] = moved_by.get(tills[n], 0) + points
    assert sum(moved_by.values()) == sum(one_till) <= original
    if sum(amounts) == whole and policy != "none":
        assert sum(moved_by.values()) == original  # all of the sale back, wherever: all of the points


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**13), 10**13) | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "returnId": json_values | st.text(min_size=1, max_size=70),
        "amount": json_values | st.integers(-5, 10**13),
        "lines": json_values
        | st.lists(
            st.fixed_dictionaries(
                {}, optional={"sku": json_values | st.text(max_size=70), "quantity": json_values, "amount": json_values}
            ),
            max_size=5,
        ),
    },
)


@given(bodies)
def test_a_registration_body_is_a_return_or_a_clear_refusal(body):
    try:
        request = request_of("S1", body)
    except RelayRefusal as exc:
        assert exc.http_status == 400 and exc.message
        return
    assert isinstance(request, ReturnRequest)
    assert 1 <= len(request.return_id) <= 64 and 0 < request.amount <= 10**12
    assert all(1 <= len(x.sku) <= 64 and 0 < x.quantity < 1e9 and x.amount >= 0 for x in request.lines)
