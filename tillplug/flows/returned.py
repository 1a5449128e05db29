"""What a return may move, as pure values: the caps on a sale's returns, the points shares, and
the sale as the chain's relay reports it (``ChainSale``).

Both sides use this module: the till's returns (``tillplug.flows.returns``) and the relay, which
checks the same caps across every till of the chain (``tillplug.relay.sales``, docs/relay.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Policy = Literal["proportion", "none", "all"]
QUANTITY_SLACK = 1e-9  # quantities are decimals (1.5 kg): sums of them may be off in the last bit


def share(policy: Policy, original: int, returned: int, whole: int, already: int) -> int:
    """The points one return moves: of ``original`` points, the cumulative share of ``returned`` (the
    amounts returned so far, this return included) over ``whole``, floored, less ``already`` (what the
    sale's earlier returns moved).  Never negative, never past the original: a whole return moves
    what is left, and the returns of one sale add up to at most ``original``."""
    if policy == "none" or original <= 0 or returned <= 0:
        cumulative = 0
    elif policy == "all" or whole <= 0 or returned >= whole:
        cumulative = original
    else:
        cumulative = original * returned // whole
    return max(0, min(original, cumulative) - already)


# -- the typed request and answer --------------------------------------------------


@dataclass(frozen=True)
class ReturnedLine:
    sku: str
    quantity: float
    amount: int  # minor units, the line's total


@dataclass(frozen=True)
class ReturnRequest:
    return_id: str
    transaction_id: str
    lane: int
    amount: int  # minor units: the returned goods' value at the sale's prices, before the points discount
    lines: tuple[ReturnedLine, ...] = ()

    def fingerprint(self) -> str:
        return json.dumps(
            {
                "transactionId": self.transaction_id,
                "lane": self.lane,
                "amount": self.amount,
                "lines": [[line.sku, line.quantity, line.amount] for line in self.lines],
            },
            sort_keys=True,
            separators=(",", ":"),
        )


def _sums(lines: Iterable[ReturnedLine]) -> dict[str, tuple[float, int]]:
    """Per SKU: the quantity and the amount."""
    sums: dict[str, tuple[float, int]] = {}
    for line in lines:
        quantity, amount = sums.get(line.sku, (0.0, 0))
        sums[line.sku] = (quantity + line.quantity, amount + line.amount)
    return sums


def past_the_sale(
    request: ReturnRequest,
    gross: int,
    basket: Mapping[str, tuple[float, int]],
    earlier: Sequence[tuple[int, Sequence[ReturnedLine]]],
    money: Callable[[int], str],
) -> str | None:
    """Why ``request`` would take the sale's returns past the sale (None: it would not).

    ``gross``: the sale's total before the points discount; ``basket``: per SKU, the quantity and
    amount sold; ``earlier``: the amount and lines of each earlier return.  The amounts together
    never exceed ``gross``; when the request gives lines, each SKU's quantity and amount never
    exceed what was sold.
    """
    returned = sum(amount for amount, _ in earlier)
    if returned + request.amount > gross:
        return (
            f"Sale {request.transaction_id} was {money(gross)} before the points discount and {money(returned)} "
            f"of it has been returned: at most {money(max(0, gross - returned))} can be returned, "
            f"not {money(request.amount)}."
        )
    before = _sums(line for _, lines in earlier for line in lines)
    for sku, (quantity, amount) in _sums(request.lines).items():
        if sku not in basket:
            return f"SKU {sku} was not sold in sale {request.transaction_id}."
        sold_quantity, sold_amount = basket[sku]
        had_quantity, had_amount = before.get(sku, (0.0, 0))
        if had_quantity + quantity > sold_quantity + QUANTITY_SLACK or had_amount + amount > sold_amount:
            return (
                f"SKU {sku}: {sold_quantity:g} sold for {money(sold_amount)}, {had_quantity:g} returned for "
                f"{money(had_amount)}; {quantity:g} for {money(amount)} more is past what was sold."
            )
    return None


def moved_before(policy: Policy, original: int, returned_before: int, whole: int) -> int:
    """What the returns before one moved of ``original``, whichever till took them: shares are
    cumulative and floored, so the earlier returns' moves add up to the share of their amounts."""
    return share(policy, original, returned_before, whole, 0)


# -- the sale as the chain's relay reports it ------------------------------------------------


class Reported(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)


class ChainLine(Reported):
    sku: str
    quantity: float
    amount: int


class ChainReturn(Reported):
    returnId: str
    amount: int = Field(ge=0)
    lines: list[ChainLine] = []
    mine: bool = False  # registered by the asking till


class ChainEarn(Reported):
    """The sale's earning write: its eventKey and the points WLL's reactions show it earned."""

    eventKey: str | None = None
    state: Literal["known", "waiting", "unverifiable"]
    points: int = 0
    reason: str | None = None


class ChainSale(Reported):
    """``GET /relay/v1/sales/{transactionId}``: amounts and the member's id only, no personal data."""

    transactionId: str
    member: str | None  # the member's WLL id: the subject of the return's points moves
    currency: str | None = None
    paid: int  # the total the sale was completed with
    spent: int  # points spent on it and not given back by a void
    gross: int  # paid plus the money of the points spent: what may be returned in all
    basket: list[ChainLine] = []
    earn: ChainEarn
    returns: list[ChainReturn] = []  # every till's, in the order the relay registered them
    registered: int | None = None  # the asking till's return's place in ``returns``
    givenBack: int = 0  # points the chain's returns gave back so far (what the relay has received)
    takenBack: int = 0

    def basket_sums(self) -> dict[str, tuple[float, int]]:
        return _sums(ReturnedLine(line.sku, line.quantity, line.amount) for line in self.basket)

    def before(self) -> list[tuple[int, tuple[ReturnedLine, ...]]]:
        """The amount and lines of each return registered before this till's (all, if none is)."""
        upto = self.returns if self.registered is None else self.returns[: self.registered]
        return [(r.amount, tuple(ReturnedLine(x.sku, x.quantity, x.amount) for x in r.lines)) for r in upto]

    def returned_upto(self) -> int:
        """The sale's returns up to and including this till's (all, if none is)."""
        upto = self.returns if self.registered is None else self.returns[: self.registered + 1]
        return sum(r.amount for r in upto)

    def returned(self) -> int:
        return sum(r.amount for r in self.returns)

    def mine(self) -> set[str]:
        """The returnIds the asking till registered."""
        return {r.returnId for r in self.returns if r.mine}


def return_fingerprint(transaction_id: str, amount: int, lines: Sequence[ReturnedLine]) -> str:
    """What makes two registrations of one returnId the same return (the lane is the till's business)."""
    return json.dumps(
        {"transactionId": transaction_id, "amount": amount, "lines": [[x.sku, x.quantity, x.amount] for x in lines]},
        sort_keys=True,
        separators=(",", ":"),
    )
