"""The loyalty block tillplug adds to the till's own receipt (``receipts.append_to_till_receipt``).

The tracker follows the event stream (member attached, points spent, sale completed or voided) per
lane, so it needs nothing from the flows but what they already tell the till.  The block goes into
the first receipt the till prints for that sale (a sale open with a member, or one completed in the
last few minutes), before its cut.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tillplug.receipts.layout import Block, Columns, Rule, Text
from tillplug.receipts.templates import SlipContext, printed_mask
from tillplug.spool.escpos_stream import cut_positions

RECENT = 300.0  # a till prints its receipt within this many seconds of completing the sale
# The events that move a lane's sale here (``SaleTracker.see`` ignores every other).
TRACKED_EVENTS = frozenset(
    {"checkout_opened", "member_attached", "redemption", "checkout_completed", "checkout_voided"}
)


@dataclass
class LaneSale:
    tx: str
    member: str | None = None
    balance: float | None = None
    spent: int = 0
    earned: int | None = None
    completed_at: float | None = None
    appended: bool = False


class SaleTracker:
    def __init__(self, recent: float = RECENT) -> None:
        self.recent = recent
        self.lanes: dict[int, LaneSale] = {}

    def see(self, type_: str, data: dict[str, Any], lane: int | None) -> None:
        """One event from the stream; only the sale events matter."""
        if lane is None:
            return
        tx = data.get("transactionId")
        sale = self.lanes.get(lane)
        if type_ == "checkout_opened" and tx:
            self.lanes[lane] = LaneSale(tx)
        elif sale is None or sale.tx != tx:
            return
        elif type_ == "member_attached":
            sale.member, sale.balance = data.get("member"), data.get("pointsBalance")
        elif type_ == "redemption":
            sale.spent += int(data.get("points") or 0)
            sale.balance = data.get("balanceAfter", sale.balance)
        elif type_ == "checkout_completed":
            sale.earned, sale.completed_at = int(data.get("expectedPoints") or 0), time.monotonic()
        elif type_ == "checkout_voided":
            del self.lanes[lane]

    def block(self, lane: int, ctx: SlipContext) -> list[Block] | None:
        """The loyalty block for the till's receipt on this lane, once per sale; None when there is none."""
        sale = self.lanes.get(lane)
        if sale is None or sale.member is None or sale.appended:
            return None
        if sale.completed_at is not None and time.monotonic() - sale.completed_at > self.recent:
            return None
        sale.appended = True
        _ = ctx._
        blocks: list[Block] = [Rule(), Text(_("Loyalty"), bold=True), Columns(_("Member"), printed_mask(sale.member))]
        if sale.spent:
            blocks.append(Columns(_("Points spent"), ctx.points(sale.spent)))
        if sale.earned is not None:
            blocks.append(Columns(_("Points for this sale"), ctx.points(sale.earned)))
        if sale.balance is not None:
            blocks.append(Columns(_("Balance"), ctx.points(sale.balance)))
        return [*blocks, Rule()]


def has_cut(receipt: bytes) -> bool:
    """Whether the receipt has a real cut command (not a cut's bytes inside an image or a barcode)."""
    return next(cut_positions(receipt), None) is not None


def insert_before_cut(receipt: bytes, block: bytes) -> bytes | None:
    """``block`` just before the receipt's last real cut command; None when it has none."""
    cuts = list(cut_positions(receipt))
    return receipt[: cuts[-1]] + block + receipt[cuts[-1] :] if cuts else None
